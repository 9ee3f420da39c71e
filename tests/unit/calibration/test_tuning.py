"""Equal-budget tuning on validation data (trustlab.calibration.tuning, trustlab.core.tuning,
run.run_tuning): the selection rule on hand-made sweeps, the equal budget, the named errors of
bad grids, that the test split is never read, and how the claims and the report carry it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from trustlab.calibration import claims as C
from trustlab.calibration import figures as fg
from trustlab.calibration import report as rp
from trustlab.calibration import run as E
from trustlab.calibration import tables as tb
from trustlab.calibration import tuning as TU
from trustlab.calibration.config import MAIN_LOSSES, CalibrationConfig
from trustlab.calibration.losses import LOSSES
from trustlab.core import claims as engine
from trustlab.core.config import ConfigError, load_section
from trustlab.core.tuning import check_equal_budget, select_lowest

TINY = {
    "seeds": [0, 1],
    "losses": ["ce", "focal"],
    "noise": {"losses": ["ce"], "kinds": ["uniform"], "rates": [0.4]},
    "n_train": 50,
    "epochs": 3,
    "hidden": 8,
    "workers": 1,
    "enable_progress_bar": False,
    "waveforms": {"enabled": False},
    "tuning": {"seeds": [100], "trials": 2, "grids": {"ce": [0.0, 0.01], "focal": [1.0, 3.0]}},
}


def _sweep(rows: list[tuple[str, str, float, int, float]]) -> pd.DataFrame:
    """(dataset, loss, value, seed, val_nll) rows -> a sweep table (val_ece = val_acc = 0.5)."""
    return pd.DataFrame([{"dataset": d, "loss": loss, "knob": TU.knob_for(loss).name, "value": v, "seed": s,
                          "val_nll": nll, "val_ece": 0.5, "val_acc": 0.5, "train_seconds": 0.0}
                         for d, loss, v, s, nll in rows])  # fmt: skip


# -- the rule ------------------------------------------------------------------------------------


def test_selection_is_the_argmin_of_validation_nll():
    sweep = _sweep([("digits", "focal", 1.0, 100, 0.40), ("digits", "focal", 2.0, 100, 0.31),
                    ("digits", "focal", 3.0, 100, 0.35), ("digits", "focal", 5.0, 100, 0.50),
                    ("digits", "ce", 0.0, 100, 0.60), ("digits", "ce", 1e-4, 100, 0.70),
                    ("digits", "ce", 1e-3, 100, 0.20), ("digits", "ce", 1e-2, 100, 0.25),
                    ("waveforms", "focal", 1.0, 100, 0.10), ("waveforms", "focal", 2.0, 100, 0.30),
                    ("waveforms", "focal", 3.0, 100, 0.30), ("waveforms", "focal", 5.0, 100, 0.30)])  # fmt: skip
    assert TU.choose(sweep) == {"digits": {"focal": 2.0, "ce": 1e-3}, "waveforms": {"focal": 1.0}}


def test_selection_averages_the_tuning_seeds():
    # value 1: mean(0.2, 0.6) = 0.4; value 2: mean(0.5, 0.5) = 0.5; seed 100 alone would pick 1, seed 101 alone 2
    sweep = _sweep([("digits", "gce", 1.0, 100, 0.2), ("digits", "gce", 1.0, 101, 0.6),
                    ("digits", "gce", 2.0, 100, 0.5), ("digits", "gce", 2.0, 101, 0.5)])  # fmt: skip
    assert TU.choose(sweep) == {"digits": {"gce": 1.0}}
    sweep.loc[1, "val_nll"] = 0.9  # value 1 now averages 0.55
    assert TU.choose(sweep) == {"digits": {"gce": 2.0}}


def test_ties_go_to_the_first_grid_value():
    # grid order is the sweep's row order, not sorted order: 5 comes first and wins the tie
    sweep = _sweep([("digits", "focal", 5.0, 100, 0.3), ("digits", "focal", 1.0, 100, 0.3),
                    ("digits", "focal", 2.0, 100, 0.3 + 1e-12)])  # fmt: skip
    assert TU.choose(sweep) == {"digits": {"focal": 5.0}}
    assert select_lowest([0.3, 0.2, 0.2]) == 1
    assert select_lowest([0.2 + 1e-13, 0.2]) == 0  # equal to 9 decimals: a tie


def test_diverged_runs_never_win_and_an_all_diverged_sweep_keeps_the_first_value():
    assert select_lowest([math.nan, 0.9, math.inf]) == 1
    assert select_lowest([math.nan, math.nan]) == 0
    sweep = _sweep([("digits", "zloss", 0.5, 100, math.nan), ("digits", "zloss", 1.0, 100, 2.0)])
    assert TU.choose(sweep) == {"digits": {"zloss": 1.0}}


# -- the budget and the grids --------------------------------------------------------------------


def test_default_and_smoke_grids_give_every_loss_the_same_number_of_trials():
    for profile in (None, "smoke"):
        cfg = load_section(CalibrationConfig, profile=profile)
        counts = pd.Series([(d, loss) for d, loss, _, _ in TU.plan(cfg)]).value_counts()
        assert set(counts) == {cfg.tuning.trials * len(cfg.tuning.seeds)}, profile
        tuned = {loss for _, loss in counts.index}
        assert tuned == set(cfg.losses) | set(cfg.noise.losses)
    default = CalibrationConfig()
    assert set(default.tuning.grids) == set(MAIN_LOSSES)
    assert {len(g) for g in default.tuning.grids.values()} == {default.tuning.trials} == {4}


def test_a_grid_of_another_length_is_a_named_error():
    grids = {"ce": [0.0, 0.01], "focal": [1.0, 2.0, 3.0]}
    with pytest.raises(ConfigError, match=r"calibration\.tuning\.grids\.focal has 3 value\(s\).*trials = 2"):
        CalibrationConfig.from_dict({**TINY, "tuning": {**TINY["tuning"], "grids": grids}})
    with pytest.raises(ConfigError, match=r"x\.b has 1 value"):
        check_equal_budget({"a": [1, 2], "b": [1]}, 2, "x")


@pytest.mark.parametrize("grids, message", [
    ({"ce": [0.0, 0.01], "focal": [-1.0, 3.0]}, r"grids\.focal 'focal': gamma = -1\.0 is out of range"),
    ({"ce": [0.0, -0.01], "focal": [1.0, 3.0]}, r"grids\.ce 'ce': weight_decay = -0\.01 is out of range"),
    ({"ce": [0.0, 0.01], "focal": [2.0, 2.0]}, r"grids\.focal = \[2\.0, 2\.0\].*each value at most once"),
    ({"ce": [0.0, 0.01], "focal": []}, r"grids\.focal is empty"),
    ({"ce": [0.0, 0.01], "focal": [1.0, 3.0], "focall": [1.0, 2.0]}, r"unknown loss 'focall'"),
    ({"ce": [0.0, 0.01]}, r"no grid for 'focal'"),
    ({"ce": [0.0, 0.01], "focal": [1.0, 3.0], "gce": [0.5, 1.5]}, r"grids\.gce 'gce': q = 1\.5 is out of range"),
])  # fmt: skip
def test_bad_grids_are_named_errors(grids, message):
    with pytest.raises(ConfigError, match=message):
        CalibrationConfig.from_dict({**TINY, "tuning": {**TINY["tuning"], "grids": grids}})


def test_tuning_seeds_must_not_be_test_seeds_and_disabled_tuning_needs_no_grids():
    with pytest.raises(ConfigError, match=r"tuning\.seeds = \[1\].*also test seeds"):
        CalibrationConfig.from_dict({**TINY, "tuning": {**TINY["tuning"], "seeds": [1]}})
    off = CalibrationConfig.from_dict({**TINY, "tuning": {"enabled": False, "grids": {}}})
    assert TU.plan(off) == []
    with pytest.raises(ConfigError, match=r"weight_decay_per_loss\.ce = -1\.0 is out of range"):
        CalibrationConfig.from_dict({**TINY, "weight_decay_per_loss": {"ce": -1.0}})


def test_knobs_set_what_they_name():
    cfg = CalibrationConfig.from_dict(TINY)
    for loss, knob in ((n, TU.KNOBS.get(n)) for n in TU.KNOBS.names()):
        assert set(knob.params) <= set(LOSSES.get(loss).ranges), loss  # every knob is a hyperparameter of its loss
    focal = TU.knob_for("focal").apply(cfg, "focal", 2.0)
    assert focal.hparams_for("focal") == {"gamma": 2.0} and focal.weight_decay_for("focal") == 0.0
    bias = TU.knob_for("bias").apply(cfg, "bias", 0.5)
    assert bias.hparams_for("bias") == {"alpha": 0.5, "beta": 0.5} and TU.knob_for("bias").name == "alpha=beta"
    ce = TU.knob_for("ce").apply(cfg, "ce", 1e-3)
    assert ce.weight_decay_for("ce") == 1e-3 and ce.weight_decay_for("focal") == 0.0
    assert {TU.knob_for(n).name for n in ("ce", "brier", "mae")} == {"weight_decay"}


# -- the runs -------------------------------------------------------------------------------------


def _hide_test_split(prepare):
    """A ``prepare`` whose test split is unusable: NaN inputs and labels outside every class."""

    def hidden(cfg, seed):
        data = prepare(cfg, seed)
        sp = data.split
        blind = dataclasses.replace(sp, x_test=np.full_like(sp.x_test, np.nan), y_test=np.full_like(sp.y_test, -7))
        return dataclasses.replace(data, split=blind)

    return hidden


def test_the_test_split_is_never_read_and_the_validation_split_decides(monkeypatch):
    cfg = CalibrationConfig.from_dict(TINY)
    drop = ["train_seconds"]
    monkeypatch.setattr(E, "_SEED_DATA", {})
    normal = E.run_tuning(cfg)
    assert len(normal.sweep) == 4 and normal.sweep["val_nll"].notna().all()

    digits = E.DATASETS.get("digits")
    monkeypatch.setattr(E, "_SEED_DATA", {})
    monkeypatch.setitem(E.DATASETS._items, "digits", E.MainDataset(digits.settings, _hide_test_split(digits.prepare)))
    blind = E.run_tuning(cfg)
    pd.testing.assert_frame_equal(normal.sweep.drop(columns=drop), blind.sweep.drop(columns=drop))
    assert blind.chosen == normal.chosen

    def shuffled_validation(c, seed):  # the same test split, other validation labels: other scores
        data = digits.prepare(c, seed)
        y_val = np.random.default_rng(0).permutation(data.split.y_val)
        return dataclasses.replace(data, split=dataclasses.replace(data.split, y_val=y_val))

    monkeypatch.setattr(E, "_SEED_DATA", {})
    monkeypatch.setitem(E.DATASETS._items, "digits", E.MainDataset(digits.settings, shuffled_validation))
    other = E.run_tuning(cfg)
    assert not np.allclose(other.sweep["val_nll"], normal.sweep["val_nll"])


def test_tuning_runs_are_reproducible_and_apply_the_chosen_values():
    cfg = CalibrationConfig.from_dict(TINY)
    a, b = E.run_tuning(cfg), E.run_tuning(cfg)
    pd.testing.assert_frame_equal(a.sweep.drop(columns="train_seconds"), b.sweep.drop(columns="train_seconds"))
    assert list(a.sweep["loss"]) == ["ce", "ce", "focal", "focal"] and list(a.sweep["value"]) == [0.0, 0.01, 1.0, 3.0]
    assert a.untuned == {"digits": {"ce": 0.0, "focal": 3.0}}
    tuned = a.config_for(cfg, "digits")
    assert tuned.hparams_for("focal")["gamma"] == a.chosen["digits"]["focal"]
    assert tuned.weight_decay_for("ce") == a.chosen["digits"]["ce"]
    assert a.config_for(cfg, "waveforms") is cfg  # not tuned there: unchanged
    off = E.run_tuning(CalibrationConfig.from_dict({**TINY, "tuning": {"enabled": False}}))
    assert off.sweep.empty and off.chosen == {} and off.trials == 0


def test_workers_give_the_sweep_of_a_serial_run():
    cfg = CalibrationConfig.from_dict(TINY)
    serial = E.run_tuning(cfg).sweep.drop(columns="train_seconds")
    parallel = E.run_tuning(cfg.replace(workers=2)).sweep.drop(columns="train_seconds")
    pd.testing.assert_frame_equal(serial, parallel)


# -- claims and report ---------------------------------------------------------------------------


def _tuning_result() -> TU.TuningResult:
    sweep = _sweep([("digits", "ce", 0.0, 100, 0.5), ("digits", "ce", 0.01, 100, 0.4),
                    ("digits", "focal", 1.0, 100, 0.3), ("digits", "focal", 3.0, 100, 0.6)])  # fmt: skip
    return TU.TuningResult(sweep, TU.choose(sweep), trials=2, seeds=[100],
                           untuned={"digits": {"ce": 0.0, "focal": 3.0}})  # fmt: skip


def _main(diffs: list[float]) -> E.MainTables:
    rows = []
    for seed, d in enumerate(diffs):
        rows += [{"loss": "ce", "variant": "raw", "seed": seed, "id_ece": 0.10, "id_acc": 0.9},
                 {"loss": "focal", "variant": "raw", "seed": seed, "id_ece": 0.10 + d, "id_acc": 0.9}]  # fmt: skip
    return E.MainTables(pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())


def test_claim_notes_state_the_equal_budget_and_the_chosen_values():
    res = E.Results(_main([-0.05, 0.03, -0.02, 0.04, -0.01]), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                    tuning=_tuning_result())  # fmt: skip
    rows = {r["id"].split("/", 1)[1]: r for r in C.claim_rows(res)}
    assert engine.audit(list(rows.values())) == []
    note = rows["focal_vs_ce_id_ece"]["note"]
    assert "tuned with equal budgets: 2 values each" in note and "tuning seed(s) 100" in note
    assert "focal gamma = 1 of [1, 3]" in note and "ce weight_decay = 0.01 of [0, 0.01]" in note
    # waveforms were not tuned in this result; the soft-label claim compares no tuned losses
    assert rows["focal_vs_ce_id_ece_waveforms"]["note"].endswith(
        "not tuned: both losses run at their params.yaml values (calibration.tuning.enabled: false or the loss "
        "was not swept)")
    assert C.UNTUNED in rows["aggregate_vs_majority_shift_ece"]["note"]
    untuned = {r["id"].split("/", 1)[1]: r for r in C.claim_rows(dataclasses.replace(res, tuning=None))}
    assert "not tuned" in untuned["focal_vs_ce_id_ece"]["note"]


def test_an_underpowered_claim_says_so_and_what_it_would_take():
    diffs = [-0.05, 0.03, -0.02, 0.04, -0.01]
    res = E.Results(_main(diffs), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), tuning=_tuning_result())
    row = {r["id"].split("/", 1)[1]: r for r in C.claim_rows(res)}["focal_vs_ce_id_ece"]
    paper = C.FOCAL_PAPER_EFFECT
    assert row["paper_effect"] == pytest.approx(0.0148 - 0.0435)
    sd = float(np.std(diffs, ddof=1))
    assert row["mde"] == pytest.approx(engine.mde_paired_t(sd, 5)) and row["mde"] > abs(paper)
    assert row["power"] == "underpowered"
    need = C.seeds_to_detect(sd, paper)
    assert engine.mde_paired_t(sd, need) <= abs(paper) < engine.mde_paired_t(sd, need - 1)
    assert f"about {need} seeds (now 5)" in row["note"] and f"MDE {row['mde']:.4f}" in row["note"]
    assert "underpowered" in rp.findings(res, [row])
    # a small spread: the design detects the paper's effect, no underpowered note
    tight = E.Results(_main([-0.030, -0.031, -0.029, -0.0305, -0.0295]), pd.DataFrame(), pd.DataFrame(),
                      pd.DataFrame(), tuning=_tuning_result())  # fmt: skip
    row = {r["id"].split("/", 1)[1]: r for r in C.claim_rows(tight)}["focal_vs_ce_id_ece"]
    assert row["power"] == "powered" and "underpowered" not in row["note"]


def test_sweep_tables_headline_metrics_and_figure():
    tr = _tuning_result()
    sweep = tb.tuning_sweep_table(tr)
    assert list(sweep.columns) == ["dataset", "loss", "knob", "candidate", "val_nll", "val_ece", "val_acc", "n",
                                   "chosen"]  # fmt: skip
    assert list(sweep["chosen"]) == [False, True, True, False]
    chosen = tb.tuned_values_table(tr)
    assert chosen[["loss", "chosen", "untuned"]].to_dict(orient="records") == [
        {"loss": "ce", "chosen": 0.01, "untuned": 0.0}, {"loss": "focal", "chosen": 1.0, "untuned": 3.0}]
    res = E.Results(_main([-0.01, -0.02]), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), tuning=tr)
    claims = C.claim_rows(res)
    out = rp.stage_outputs(res, claims, {})
    assert out.headline["tuned_digits_focal_gamma"] == 1.0 and out.headline["tuned_digits_ce_weight_decay"] == 0.01
    assert out.extra["tuning"]["chosen"]["digits"]["focal"] == {"knob": "gamma", "value": 1.0}
    assert out.extra["tuning"]["trials"] == 2 and "validation NLL" in out.extra["tuning"]["rule"]
    assert len(out.extra["tables"]["tuning_sweep"]) == 4 and "train_seconds" not in out.plots["tuning_sweep"]
    assert out.timing["tuning_trials"] == 4
    assert "**Tuning** (equal budget): every loss got 2 values" in rp.findings(res, claims)
    import matplotlib.pyplot as plt

    fig = fg.plot_tuning_sweep(sweep)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["ce: weight_decay", "focal: gamma"]
    plt.close(fig)
