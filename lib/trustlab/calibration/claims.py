"""The calibration family's claims, as data, and the one function that tests them.

Every claim compares a method with a baseline on one metric, paired by training seed
(``unit = "seeds"``; :func:`trustlab.core.claims.seed_row`). Each :class:`Comparison` names
the claim and the rows of the per-seed tables that hold its method and baseline. The
label-noise claims are one per noise kind and rate (``calibration.noise``). A claim whose
variant was not run (a loss, calibrator, noise setting or the LM section left out of the
config) stays in the table as *not evaluated*, with the reason.

**Tuning budget.** Every row's note says how the compared sides were tuned: the losses
(focal vs CE, ALDR-KL vs CE) with equal budgets on validation data and the values chosen
(:mod:`.tuning`; the label-noise rows reuse the clean digits choices), every other pair at its
``params.yaml`` values (an equal budget of no trials).

**Paper effects.** Only the focal-loss claims carry one: Mukhoti et al. 2020 report pre-TS ECE
per dataset and network, and their CIFAR-10 / ResNet-50 row gives a single method - baseline
number on our metric (a share). The other papers report no effect on a comparable metric
(docs/methods/calibration.md). Where the design's minimum detectable effect exceeds the paper's
effect, the row's note says the claim is underpowered and about how many seeds would detect
the paper's effect with the observed spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from trustlab.calibration.data import NOISE_KINDS
from trustlab.calibration.lm import OBJECTIVES
from trustlab.core.claims import (
    ALPHA,
    POWER,
    TEST_SIGN_FLIP,
    ClaimSpec,
    check_specs,
    mde_paired_t,
    seed_row,
    seeds_needed_for_sign_flip,
    unevaluated_row,
)

__all__ = ["CLAIMS", "FAMILY", "PAPERS", "Comparison", "budget_note", "claim_row", "claim_rows", "comparisons",
           "seeds_to_detect"]  # fmt: skip

FAMILY = "calibration"
SHARE = (0.0, 1.0)  # ECE, accuracy and F1 are shares
UNTUNED = "neither side is tuned: both run at their params.yaml values (an equal budget of no trials)"
# Mukhoti et al. 2020, Table 1, CIFAR-10 / ResNet-50, ECE before temperature scaling: 4.35% (CE), 1.48% (focal, gamma 3)
FOCAL_PAPER_EFFECT = 0.0148 - 0.0435
FOCAL_PAPER_SOURCE = ("Mukhoti et al. 2020, Table 1: CIFAR-10 / ResNet-50, pre-TS ECE 4.35% (CE) -> 1.48% "
                      "(focal, gamma = 3); a deep network on CIFAR-10, not our MLP")  # fmt: skip

PAPERS = {
    "ca": "Liu et al. 2024, Optimizing Calibration by Gaining Aware of Prediction Correctness",
    "ldr": "Zhu et al. 2023, Label Distributionally Robust Losses for Multi-class Classification",
    "focal": "Mukhoti et al. 2020, Calibrating Deep Neural Networks using Focal Loss",
    "soft": "Singh et al. 2023, Aggregating Soft Labels from Crowd Annotations Improves Uncertainty "
    "Estimation Under Distribution Shift",
    "anyloss": "Han et al. 2024, AnyLoss: Transforming Classification Metrics into Loss Functions",
    "spc": "Post-Hoc Split-Point Self-Consistency Verification for Efficient, Unified Quantification of "
    "Aleatoric and Epistemic Uncertainty in Deep Learning (SPC-UQ)",
    "ts": "Guo et al. 2017, On Calibration of Modern Neural Networks (TS), applied to sequence-probability "
    "confidence",
}


@dataclass(frozen=True)
class Comparison:
    """A claim and where its numbers are: the per-seed ``table`` of ``run.Results``, the
    ``column`` holding the metric, the rows of the ``method`` and of the ``baseline``, and
    what the config must include for both to be run (the reason when they were not)."""

    spec: ClaimSpec
    table: str
    column: str
    method: Mapping[str, Any]
    baseline: Mapping[str, Any]
    needs: str
    losses: tuple[str, ...] = ()  # the compared training losses, tuned on ``dataset`` (empty: nothing tuned)
    dataset: str = "digits"
    untuned: str = UNTUNED  # the note of a comparison without tuned losses


def _lm_comparison(objective: str) -> Comparison:
    spec = ClaimSpec(
        id=f"lm_ts_{objective}_ece",
        claim=f"Temperature scaling of the token logits ({objective}) improves the LM's answer-level ECE",
        paper=PAPERS["ts"], metric="lm_ece", method=f"ts_{objective}", baseline="raw", expected="decrease",
        range=SHARE,
        note="base LM, greedy answers on the pooled test items; the seeds re-draw the val/test split of the "
        "same model and items, so the interval reflects split variability only",
    )  # fmt: skip
    return Comparison(spec, "lm", "ece", {"pool": "all", "method": f"ts_{objective}"}, {"pool": "all", "method": "raw"},
                      f"calibration.lm.enabled: true with {objective!r} in calibration.lm.objectives")  # fmt: skip


def _label_noise_comparison(kind: str, rate: float) -> Comparison:
    spec = ClaimSpec(
        id=f"aldr_kl_vs_ce_acc_{kind}_noise_{round(100 * rate)}",
        claim=f"ALDR-KL is more robust than CE under {kind} label noise ({rate:g})", paper=PAPERS["ldr"],
        metric="id_acc", method="aldr_kl (raw)", baseline="ce (raw)", expected="increase", range=SHARE,
        note="clean test accuracy after training on noisy labels",
    )  # fmt: skip
    at = {"noise": kind, "rate": rate, "variant": "raw"}
    return Comparison(spec, "robustness", "id_acc", {**at, "loss": "aldr_kl"}, {**at, "loss": "ce"},
                      f"'aldr_kl' and 'ce' in calibration.noise.losses, {kind!r} in calibration.noise.kinds "
                      f"and {rate:g} in calibration.noise.rates", losses=("aldr_kl", "ce"))  # fmt: skip


def _spc_comparison(metric: str, what: str, note: str, dataset: str = "digits") -> Comparison:
    on = "" if dataset == "digits" else f" on {dataset}"
    spec = ClaimSpec(
        id=f"spc_vs_msp_{metric}" + ("" if dataset == "digits" else f"_{dataset}"),
        claim=f"SPC (split-point residual heads) {what} better than MSP at the same single-pass cost{on}",
        paper=PAPERS["spc"], metric=metric, method="spc", baseline="msp", expected="increase", range=SHARE, note=note,
    )  # fmt: skip
    table = "detection" if dataset == "digits" else f"{dataset}_detection"
    needs = "'ce' in calibration.losses and 'spc' and 'msp' in calibration.detectors"
    needs += " and at least one shift" if metric == "shift_auroc" else ""
    needs += f" and calibration.{dataset}.enabled: true" if dataset != "digits" else ""
    return Comparison(spec, table, metric, {"loss": "ce", "detector": "spc"}, {"loss": "ce", "detector": "msp"}, needs,
                      untuned="neither detector is tuned (an equal budget of no trials); both score the same CE model")


def comparisons(noise_rates: Sequence[float] = (0.4,)) -> tuple[Comparison, ...]:
    """Every claim of a run whose label-noise table uses ``noise_rates``, in table order."""
    out = (
        Comparison(
            ClaimSpec(id="ca_vs_ts_shift_ece", claim="CA calibrator beats temperature scaling on shifted ECE",
                      paper=PAPERS["ca"], metric="shift_ece", method="ce + CA", baseline="ce + TS",
                      expected="decrease", range=SHARE,
                      note="ce-trained MLP, ECE averaged over all shifts and severities"),
            "main", "shift_ece", {"loss": "ce", "variant": "ca"}, {"loss": "ce", "variant": "ts"},
            "'ce' in calibration.losses, 'ts' and 'ca' in calibration.calibrators and at least one shift",
            untuned="neither calibrator is tuned (an equal budget of no trials); both calibrate the same CE model",
        ),
        Comparison(
            ClaimSpec(id="focal_vs_ce_id_ece", claim="Focal loss improves ECE over cross-entropy",
                      paper=PAPERS["focal"], metric="id_ece", method="focal (raw)", baseline="ce (raw)",
                      expected="decrease", range=SHARE, paper_effect=FOCAL_PAPER_EFFECT,
                      paper_effect_source=FOCAL_PAPER_SOURCE,
                      note="in-distribution test set, before temperature scaling"),
            "main", "id_ece", {"loss": "focal", "variant": "raw"}, {"loss": "ce", "variant": "raw"},
            "'focal' and 'ce' in calibration.losses", losses=("focal", "ce"),
        ),
        Comparison(
            ClaimSpec(id="focal_vs_ce_id_ece_waveforms",
                      claim="Focal loss improves ECE over cross-entropy on the waveform digits",
                      paper=PAPERS["focal"], metric="id_ece", method="focal (raw)", baseline="ce (raw)",
                      expected="decrease", range=SHARE, paper_effect=FOCAL_PAPER_EFFECT,
                      paper_effect_source=FOCAL_PAPER_SOURCE,
                      note="second dataset: generated 1-D waveform digits, test set, before temperature scaling"),
            "waveforms", "id_ece", {"loss": "focal", "variant": "raw"}, {"loss": "ce", "variant": "raw"},
            "'focal' and 'ce' in calibration.losses and calibration.waveforms.enabled: true", losses=("focal", "ce"),
            dataset="waveforms",
        ),
        *(_label_noise_comparison(kind, rate) for kind in NOISE_KINDS for rate in noise_rates),
        Comparison(
            ClaimSpec(id="aggregate_vs_majority_shift_ece",
                      claim="Aggregated soft labels improve calibration under shift",
                      paper=PAPERS["soft"], metric="shift_ece", method="soft_kl on aggregate soft labels",
                      baseline="ce on majority vote", expected="decrease", range=SHARE,
                      note="soft_kl on the averaged soft labels vs CE on the majority vote"),
            "soft_labels", "shift_ece", {"labels": "aggregate"}, {"labels": "majority"},
            "'aggregate' and 'majority' in calibration.annotators.variants and at least one shift",
        ),
        Comparison(
            ClaimSpec(id="anyloss_f1_vs_bce_f1", claim="AnyLoss (F1) improves F1 over BCE", paper=PAPERS["anyloss"],
                      metric="f1", method="anyloss_f1", baseline="bce", expected="increase", range=SHARE,
                      note="breast cancer test set"),
            "anyloss", "f1", {"loss": "anyloss_f1"}, {"loss": "bce"},
            "'anyloss_f1' and 'bce' in calibration.anyloss.losses",
        ),
        _spc_comparison("error_auroc", "detects errors",
                        "ce-trained MLP, frozen; AUROC of the uncertainty for wrong predictions on the clean test set; "
                        "the residual head is fit on the validation split"),
        _spc_comparison("shift_auroc", "separates shifted from clean inputs",
                        "ce-trained MLP, frozen; AUROC of clean test vs every shifted test set pooled"),
        _spc_comparison("error_auroc", "detects errors",
                        "ce-trained MLP on the waveform digits, frozen; AUROC for wrong test predictions",
                        dataset="waveforms"),
        *(_lm_comparison(objective) for objective in OBJECTIVES),
    )  # fmt: skip
    check_specs(c.spec for c in out)
    return out


# the claims of the default configuration (label noise at rate 0.4)
CLAIMS: tuple[ClaimSpec, ...] = tuple(c.spec for c in comparisons())


def _per_seed(df: pd.DataFrame | None, column: str, select: Mapping[str, Any]) -> dict[int, float]:
    """``{seed: value}`` of the rows matching ``select``; empty when the table, a column or the rows are missing."""
    if df is None or df.empty or column not in df.columns or any(k not in df.columns for k in select):
        return {}
    rows = df
    for key, value in select.items():
        rows = rows[rows[key] == value]
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[column])}


def _fmt_values(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def budget_note(comparison: Comparison, tuning: Any | None) -> str:
    """How the two sides were tuned: equal budgets with the chosen values (``tuning``: a
    :class:`trustlab.calibration.tuning.TuningResult`), untuned (no tuning in the run), or the
    comparison's ``untuned`` text when it compares no training losses."""
    c = comparison
    if not c.losses:
        return c.untuned
    choices = [tuning.choice(c.dataset, loss) for loss in c.losses] if tuning is not None else []
    if not choices or any(ch is None for ch in choices):
        return ("not tuned: both losses run at their params.yaml values (calibration.tuning.enabled: false or the "
                "loss was not swept)")  # fmt: skip
    seeds = _fmt_values(tuning.seeds)
    picked = "; ".join(f"{loss} {knob} = {value:g} of [{_fmt_values(grid)}]"
                       for loss, (knob, value, grid) in zip(c.losses, choices))  # fmt: skip
    reused = " (the clean digits choices, reused under label noise)" if c.table == "robustness" else ""
    return (f"tuned with equal budgets: {tuning.trials} values each, trained on tuning seed(s) {seeds} and chosen by "
            f"the lowest validation NLL{reused}: {picked}")  # fmt: skip


def seeds_to_detect(sd: float, effect: float, limit: int = 10_000) -> int | None:
    """The fewest seeds whose paired t-test detects ``|effect|`` with 80% power at the 5% level
    given the spread ``sd`` of the per-seed differences (:func:`trustlab.core.claims.mde_paired_t`);
    with no spread, the fewest seeds the exact sign-flip test needs. None when ``sd`` is not
    finite, ``effect`` is 0 or more than ``limit`` seeds would be needed."""
    if not math.isfinite(sd) or effect == 0:
        return None
    if sd == 0:
        return seeds_needed_for_sign_flip()
    n = 2
    while n <= limit:
        if mde_paired_t(sd, n) <= abs(effect):
            return n
        n = n + 1 if n < 100 else math.ceil(n * 1.05)  # the MDE shrinks like 1/sqrt(n): coarser steps far out
    return None


def _power_note(row: Mapping[str, Any], spec: ClaimSpec, diffs: Sequence[float]) -> str:
    """For an underpowered row with a paper effect: the MDE against the paper's effect and what it would take."""
    if row.get("power") != "underpowered" or spec.paper_effect is None:
        return ""
    sd = float(pd.Series(list(diffs)).std(ddof=1)) if len(diffs) > 1 else float("nan")
    mde = row.get("mde")
    have = f"MDE {mde:.4f}" if mde is not None else f"no detectable effect with {row['n']} seeds"
    need = seeds_to_detect(sd, spec.paper_effect)
    if need is not None and row.get("test") == TEST_SIGN_FLIP:  # tied differences: the exact test has a floor too
        need = max(need, seeds_needed_for_sign_flip())
    what = (f"about {need} seeds (now {row['n']}) would detect it with {POWER:.0%} power at the {ALPHA:.0%} level, "
            f"given the observed spread of the per-seed differences (sd {sd:.4f})" if need is not None
            else "no feasible number of seeds would detect it with the observed spread")  # fmt: skip
    return f"underpowered: {have} > |paper effect| {abs(spec.paper_effect):.4f}; {what}"


def claim_row(comparison: Comparison, table: pd.DataFrame | None, tuning: Any | None = None) -> dict[str, Any]:
    """One row of the claims table: method minus baseline paired by seed, or *not evaluated*;
    the note says how both sides were tuned (:func:`budget_note`) and, when the design cannot
    detect the paper's effect, that the claim is underpowered and what it would take."""
    c = comparison
    budget = budget_note(c, tuning)
    method, baseline = _per_seed(table, c.column, c.method), _per_seed(table, c.column, c.baseline)
    if not method or not baseline:
        which = "method" if not method else "baseline"
        return unevaluated_row(FAMILY, c.spec, f"the {which} was not run in this configuration; it needs {c.needs}",
                               note=budget)  # fmt: skip
    row = seed_row(FAMILY, c.spec, method, baseline, note=budget)
    power = _power_note(row, c.spec, [method[s] - baseline[s] for s in method if s in baseline])
    if power:
        row["note"] = f"{row['note']}; {power}"
    return row


def claim_rows(results: Any, noise_rates: Sequence[float] = (0.4,)) -> list[dict[str, Any]]:
    """The claims table of one run: ``results`` is a :class:`trustlab.calibration.run.Results`
    (or any object with ``main``, ``robustness``, ``soft_labels``, ``anyloss`` and ``lm``, and
    optionally ``tuning``)."""
    tables = {
        "main": results.main.main if results.main is not None else None,
        "detection": results.main.detection if results.main is not None else None,
        "waveforms": results.waveforms.main if results.waveforms is not None else None,
        "waveforms_detection": results.waveforms.detection if results.waveforms is not None else None,
        "robustness": results.robustness,
        "soft_labels": results.soft_labels,
        "anyloss": results.anyloss,
        "lm": results.lm.table if results.lm is not None else None,
    }
    tuning = getattr(results, "tuning", None)
    return [claim_row(c, tables[c.table], tuning) for c in comparisons(noise_rates)]
