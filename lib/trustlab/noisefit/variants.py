"""The fine-tuning variants of the NoiseFiT family, by name (no torch import: the config uses it).

A variant is a training objective (a name in ``trustlab.noisefit.objectives.OBJECTIVES``)
with its keyword arguments and a label for tables and figures. The objectives:

* ``sft``       plain masked cross-entropy;
* ``neftune``   cross-entropy with uniform noise on the input embeddings;
* ``rdrop``     two dropout passes + symmetric KL;
* ``noisefit``  noise hooks on SNR-selected decoder blocks, clean + two noisy passes and the
  hybrid loss; ``selection`` picks the ``largest`` (the paper's default) or ``lowest`` SNR
  layers, ``terms`` which parts of the hybrid loss are on (the ablations):

  ======================  ==================================================
  ``hybrid``              alpha*CE + (1-alpha)*soft + lambda*consistency
  ``no_consistency``      alpha*CE + (1-alpha)*soft
  ``no_soft``             alpha*CE + lambda*consistency
  ``kl_only``             soft (the KL to the clean teacher) only
  ``consistency_only``    KL(noisy2 || noisy1) only
  ======================  ==================================================

* ``noisy_ce``  the "noise with CE only" ablation: the CE of one noisy pass.

The ablations use the Largest selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Variant:
    name: str
    objective: str  # a name in trustlab.noisefit.objectives.OBJECTIVES
    label: str
    options: dict[str, Any] = field(default_factory=dict)  # the objective's keyword arguments

    @property
    def selection(self) -> str | None:
        """The SNR layer selection of a noise-injecting variant (None for the baselines)."""
        return self.options.get("selection")

    @property
    def terms(self) -> str | None:
        return self.options.get("terms")


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("sft", "sft", "SFT"),
        Variant("neftune", "neftune", "NEFTune"),
        Variant("rdrop", "rdrop", "R-Drop"),
        Variant("noisefit_largest", "noisefit", "NoiseFiT-Largest", {"selection": "largest"}),
        Variant("noisefit_lowest", "noisefit", "NoiseFiT-Lowest", {"selection": "lowest"}),
        Variant("noisefit_ce_only", "noisy_ce", "noise + CE only", {"selection": "largest"}),
        Variant("noisefit_no_consistency", "noisefit", "NoiseFiT w/o consistency",
                {"selection": "largest", "terms": "no_consistency"}),
        Variant("noisefit_no_soft", "noisefit", "NoiseFiT w/o soft term", {"selection": "largest", "terms": "no_soft"}),
        Variant("noisefit_kl_only", "noisefit", "KL-only", {"selection": "largest", "terms": "kl_only"}),
        Variant("noisefit_consistency_only", "noisefit", "consistency-only",
                {"selection": "largest", "terms": "consistency_only"}),
    )
}  # fmt: skip


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown NoiseFiT variant {name!r}; allowed variants are {', '.join(VARIANTS)}")
    return VARIANTS[name]


def label(name: str) -> str:
    """The variant's label (``"base"`` -> ``"base model"``)."""
    return "base model" if name == "base" else get_variant(name).label
