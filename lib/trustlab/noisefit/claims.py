"""The NoiseFiT family's claims, as data, and the one function that turns results into rows.

Every claim compares a method with a baseline on one metric, paired by training seed
(``trustlab.core.claims.seed_row``). ``method`` and ``baseline`` name a variant, run in the
default fine-tuning set, or ``<variant>@new_facts`` for the stress test that adds new facts to
the fine-tuning set; ``base`` is the base model, evaluated once and paired with every seed
(its greedy numbers do not depend on the seed). Every metric is measured on the *test* people
(the validation people chose the noise scales, ``trustlab.noisefit.tuning``) and is a share,
so its range is (0, 1). A claim whose runs are missing, or whose metric is NaN, is kept as ``not evaluated``.

Background on the methods and the paper's numbers: docs/methods/noisefit.md.
"""

from __future__ import annotations

from typing import Any

from trustlab.core.claims import ClaimSpec, check_specs, seed_row, unevaluated_row
from trustlab.noisefit.tuning import source

FAMILY = "noisefit"
PAPER = "Noise Augmented Fine Tuning for Mitigating Hallucinations in LLMs (2025)"
RATE = (0.0, 1.0)

CLAIMS: tuple[ClaimSpec, ...] = check_specs((
    # NoiseFiT against plain fine-tuning (the paper's "BaseFiT")
    ClaimSpec("vs_sft_heldout", "NoiseFiT lowers hallucination vs SFT (held-out people)", PAPER,
              "halluc_qa_heldout", "noisefit_largest", "sft", "decrease", range=RATE),
    ClaimSpec("vs_sft_nonexistent", "NoiseFiT lowers hallucination vs SFT (non-existent people)", PAPER,
              "halluc_nonexistent_test", "noisefit_largest", "sft", "decrease", range=RATE),
    # ... and against NEFTune
    ClaimSpec("vs_neftune_heldout", "NoiseFiT lowers hallucination vs NEFTune (held-out people)", PAPER,
              "halluc_qa_heldout", "noisefit_largest", "neftune", "decrease", range=RATE),
    ClaimSpec("vs_neftune_nonexistent", "NoiseFiT lowers hallucination vs NEFTune (non-existent people)", PAPER,
              "halluc_nonexistent_test", "noisefit_largest", "neftune", "decrease", range=RATE),
    # noise in the high-SNR layers against the low-SNR layers
    ClaimSpec("largest_vs_lowest_heldout", "Largest-SNR layers hallucinate less than Lowest (held-out people)",
              PAPER, "halluc_qa_heldout", "noisefit_largest", "noisefit_lowest", "decrease", range=RATE),
    ClaimSpec("largest_vs_lowest_nonexistent",
              "Largest-SNR layers hallucinate less than Lowest (non-existent people)", PAPER,
              "halluc_nonexistent_test", "noisefit_largest", "noisefit_lowest", "decrease", range=RATE),
    # KL-only or consistency-only training degrades the model
    ClaimSpec("kl_only_collapse_accuracy", "KL-only training degrades the model (train-QA accuracy vs NoiseFiT)",
              PAPER, "em_qa_train", "noisefit_kl_only", "noisefit_largest", "decrease", range=RATE),
    ClaimSpec("consistency_only_collapse_accuracy",
              "Consistency-only training degrades the model (train-QA accuracy vs NoiseFiT)", PAPER,
              "em_qa_train", "noisefit_consistency_only", "noisefit_largest", "decrease", range=RATE),
    # collapse shows as answers that are neither a value nor the abstention; train-QA accuracy
    # alone cannot show it when fine-tuning leaves that accuracy near its floor
    ClaimSpec("kl_only_collapse_wellformed",
              "KL-only training degrades the model (well-formed answers vs NoiseFiT, held-out people)", PAPER,
              "valid_qa_heldout", "noisefit_kl_only", "noisefit_largest", "decrease", range=RATE),
    ClaimSpec("consistency_only_collapse_wellformed",
              "Consistency-only training degrades the model (well-formed answers vs NoiseFiT, held-out people)",
              PAPER, "valid_qa_heldout", "noisefit_consistency_only", "noisefit_largest", "decrease", range=RATE),
    # accuracy under the paper's sampling protocol
    ClaimSpec("vs_sft_sampled_accuracy", "NoiseFiT raises sampled held-out accuracy vs SFT", PAPER,
              "s_em_qa_heldout", "noisefit_largest", "sft", "increase", range=RATE),
    ClaimSpec("vs_base_sampled_accuracy", "NoiseFiT raises sampled held-out accuracy over the base model", PAPER,
              "s_em_qa_heldout", "noisefit_largest", "base", "increase", range=RATE, paper_effect=0.077,
              paper_effect_source="the paper's headline: +7.7 pp average accuracy over the base model "
                                  "(5 samples, LLM judge)",
              note="the base model is evaluated once (first seed's samples) and paired with every seed"),
    # the stress test
    ClaimSpec("new_facts_raise_hallucination", "New facts in fine-tuning raise hallucination (SFT, held-out people)",
              "Gekhman et al. 2024, arXiv 2405.05904", "halluc_qa_heldout", "sft@new_facts", "sft", "increase",
              range=RATE),
    ClaimSpec("vs_sft_new_facts", "NoiseFiT lowers hallucination vs SFT with new facts (held-out people)", PAPER,
              "halluc_qa_heldout", "noisefit_largest@new_facts", "sft@new_facts", "decrease", range=RATE),
))  # fmt: skip


def arm(name: str) -> tuple[str, str]:
    """``"sft@new_facts"`` -> ``("sft", "new_facts")``; ``"sft"`` -> ``("sft", "default")``;
    ``"base"`` -> ``("base", "base")``."""
    variant, _, setting = name.partition("@")
    return variant, setting or ("base" if variant == "base" else "default")


def per_seed(rows: list[dict[str, Any]], name: str, metric: str) -> dict[int, float]:
    """The metric of one arm by seed (NaN where the run has no such metric)."""
    variant, setting = arm(name)
    return {int(r["seed"]): float(r.get(metric, float("nan")))
            for r in rows if r["variant"] == variant and r["setting"] == setting}  # fmt: skip


def tuned_note(spec: ClaimSpec, tuning: dict[str, dict[str, Any]] | None) -> str:
    """``"; tuned on validation people: NoiseFiT-Largest sigma0 = 0.03, ..."`` for the arms whose
    noise scale was chosen by the sweep (the ablations use their source variant's value)."""
    parts = []
    for name in (spec.method, spec.baseline):
        src = source(arm(name)[0]) if arm(name)[0] != "base" else None
        if tuning and src in tuning:
            parts.append(f"{arm(name)[0]} {tuning[src]['param']} = {tuning[src]['value']:g}")
    return f"; tuned on validation people: {', '.join(parts)}" if parts else ""


def claim_rows(rows: list[dict[str, Any]], tuning: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One engine row per claim in :data:`CLAIMS` from the results' run rows (test people);
    ``tuning`` (``Results.tuning``) names the chosen noise scales in each row's note."""
    out = []
    for spec in CLAIMS:
        method = per_seed(rows, spec.method, spec.metric)
        baseline = per_seed(rows, spec.baseline, spec.metric)
        missing = [name for name, values in ((spec.method, method), (spec.baseline, baseline)) if not values]
        if missing:
            out.append(unevaluated_row(FAMILY, spec, f"not run: {' and '.join(missing)}"))
            continue
        if arm(spec.baseline)[0] == "base":  # one evaluation, paired with every seed
            baseline = dict.fromkeys(method, next(iter(baseline.values())))
        seeds = sorted(set(method) & set(baseline))
        protocol = "sampled decoding" if spec.metric.startswith("s_") else "greedy decoding"
        out.append(seed_row(FAMILY, spec, {s: method[s] for s in seeds}, {s: baseline[s] for s in seeds},
                            note=f"{protocol}, seeds {seeds}{tuned_note(spec, tuning)}"))  # fmt: skip
    return out
