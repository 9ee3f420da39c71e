"""The fine-tuning variants of the NoiseFiT family, by name (no torch import: the config uses it).

Each variant says which training objective it uses:

* ``kind``: ``"sft"`` (plain masked CE), ``"neftune"`` (CE with uniform noise on the input
  embeddings), ``"rdrop"`` (two dropout passes + symmetric KL) or ``"noisefit"`` (noise
  hooks on SNR-selected decoder blocks).
* ``selection``: for ``noisefit``, ``"largest"`` (high-SNR layers, the paper's default) or
  ``"lowest"``.
* ``terms``: for ``noisefit``, which parts of the hybrid loss are on:

  ======================  ==================================================  passes
  ``hybrid``              alpha*CE + (1-alpha)*soft + lambda*consistency       clean + 2 noisy
  ``no_consistency``      alpha*CE + (1-alpha)*soft                            clean + 2 noisy
  ``no_soft``             alpha*CE + lambda*consistency                        clean + 2 noisy
  ``kl_only``             soft (the KL to the clean teacher) only              clean + 2 noisy
  ``consistency_only``    KL(noisy2 || noisy1) only                            clean* + 2 noisy
  ``ce_only``             CE of one noisy pass ("noise with CE only")          1 noisy
  ======================  ==================================================  passes

  (*) the clean pass of ``consistency_only`` runs without gradient, only to log the CE.
  The ablations use the Largest selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["sft", "neftune", "rdrop", "noisefit"]
Terms = Literal["hybrid", "no_consistency", "no_soft", "kl_only", "consistency_only", "ce_only"]


@dataclass(frozen=True)
class Variant:
    name: str
    kind: Kind
    label: str
    selection: Literal["largest", "lowest"] | None = None
    terms: Terms | None = None

    @property
    def is_noisefit(self) -> bool:
        return self.kind == "noisefit"

    @property
    def forward_passes(self) -> int:
        """Forward passes per training step (the table above; R-Drop: 2). A clean pass that
        runs without gradient (``kl_only`` with a detached teacher, ``consistency_only``) is
        counted: it costs a forward, though no backward."""
        if self.kind == "rdrop":
            return 2
        if self.kind == "noisefit":
            return 1 if self.terms == "ce_only" else 3
        return 1


def _nf(name: str, label: str, selection: str = "largest", terms: str = "hybrid") -> Variant:
    return Variant(name, "noisefit", label, selection, terms)  # type: ignore[arg-type]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("sft", "sft", "SFT"),
        Variant("neftune", "neftune", "NEFTune"),
        Variant("rdrop", "rdrop", "R-Drop"),
        _nf("noisefit_largest", "NoiseFiT-Largest"),
        _nf("noisefit_lowest", "NoiseFiT-Lowest", selection="lowest"),
        _nf("noisefit_ce_only", "noise + CE only", terms="ce_only"),
        _nf("noisefit_no_consistency", "NoiseFiT w/o consistency", terms="no_consistency"),
        _nf("noisefit_no_soft", "NoiseFiT w/o soft term", terms="no_soft"),
        _nf("noisefit_kl_only", "KL-only", terms="kl_only"),
        _nf("noisefit_consistency_only", "consistency-only", terms="consistency_only"),
    )
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown NoiseFiT variant {name!r}; allowed variants are {', '.join(VARIANTS)}")
    return VARIANTS[name]


def loss_weights(terms: str, alpha: float, lambda_consistency: float) -> tuple[float, float, float]:
    """(w_ce, w_soft, w_consistency) of a noisefit ``terms`` setting (``ce_only`` -> CE on
    the noisy pass with weight 1)."""
    table = {
        "hybrid": (alpha, 1.0 - alpha, lambda_consistency),
        "no_consistency": (alpha, 1.0 - alpha, 0.0),
        "no_soft": (alpha, 0.0, lambda_consistency),
        "kl_only": (0.0, 1.0, 0.0),
        "consistency_only": (0.0, 0.0, 1.0),
        "ce_only": (1.0, 0.0, 0.0),
    }
    if terms not in table:
        raise ValueError(f"terms = {terms!r} is not allowed: choose one of {', '.join(table)}")
    return table[terms]
