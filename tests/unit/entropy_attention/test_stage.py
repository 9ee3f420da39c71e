"""The stage end to end at a tiny size: runs, tables, claims, outputs, figures, and the notebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trustlab.core.claims import audit
from trustlab.entropy_attention import report, run, tables
from trustlab.entropy_attention.claims import CLAIMS, claim_rows
from trustlab.entropy_attention.config import EntropyAttentionConfig
from trustlab.reporting.outputs import write_outputs

ROOT = Path(__file__).resolve().parents[3]
VARIANTS = ["SM+LN+G", "SM+G", "EReg(SM(t)+ScFuFFN)"]
SMOKE = {"variants": VARIANTS, "seeds": [0], "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "steps": 3,
         "batch_size": 4, "warmup_steps": 1, "log_every": 2, "probe_windows": 2, "val_windows": 6,
         "eval_batch_size": 6, "gamma_sweep": [0.0, 0.2], "overhead_steps": 2, "max_train_bytes": 8000,
         "max_val_bytes": 4000, "tune_windows": 6, "lam_sweep": [0.0, 0.16], "tune_seeds": [100],
         "workers": 1}  # fmt: skip
TIMES = ("train_seconds", "monitor_seconds", "eval_seconds")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from trustlab.data.code_corpus import generate_code_corpus
    from trustlab.data.config import CodeCorpusConfig

    root = tmp_path_factory.mktemp("data")
    generate_code_corpus(CodeCorpusConfig(max_bytes=60000, max_file_bytes=20000, val_fraction=0.3),
                         root / "generated" / "code", 0)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def stage(data_dir):
    cfg = EntropyAttentionConfig.from_dict(SMOKE)
    corpus = run.load_corpus(cfg, data_dir)
    return cfg, corpus, run.run_stage(cfg, corpus)


def test_every_variant_gets_the_same_budget_and_the_sweep_reuses_runs(stage):
    cfg, corpus, results = stage
    assert corpus.val_ids.shape[1] == 16 and len(corpus.probe_ids) == 2
    assert torch.equal(corpus.probe_ids, corpus.tune_ids[:2])  # the curves never see the test windows
    assert [r.variant for r in results.runs] == VARIANTS and [r.gamma for r in results.sweep] == [0.0]  # 0.2 reused
    assert [(r.lam, r.seed) for r in results.tuning] == [(0.0, 100), (0.16, 100)]
    assert results.chosen_lam in (0.0, 0.16)
    assert [r.lam for r in results.runs] == [0.0, 0.0, results.chosen_lam]
    assert {r.lam for r in results.sweep} == {results.chosen_lam}
    assert all(r.ok and r.steps == 3 for r in results.all_runs)
    assert {r.tokens for r in results.all_runs} == {3 * 4 * 16}
    assert sorted(set(tables.gamma_sweep_table(results).gamma)) == [0.0, 0.2]
    bins = tables.head_bin_table(results)
    assert bins[list(tables.BIN_COLUMNS)].sum(axis=1).round(6).eq(1).all()


def test_claims_with_one_seed_are_all_kept_as_not_evaluated(stage):
    _, _, results = stage
    rows = claim_rows(results)
    assert [r["id"] for r in rows] == [f"entropy_attention/{c.id}" for c in CLAIMS] and audit(rows) == []
    ran = set(VARIANTS)
    for spec, r in zip(CLAIMS, rows):
        assert r["verdict"] == "not evaluated" and r["test"] == "none"
        if {spec.method, spec.baseline} <= ran:
            assert r["n"] == 1 and r["reason"].startswith("1 paired seed(s)")
        else:
            assert r["reason"].startswith("variant(s) not run: ")


def _without_times(r) -> dict:
    d = r.as_dict()
    for k in TIMES:
        d.pop(k)
    return d


def test_workers_do_not_change_the_results(stage, data_dir):
    cfg, corpus, serial = stage
    parallel = run.run_stage(EntropyAttentionConfig.from_dict({**SMOKE, "workers": 2}), corpus)
    assert parallel.workers == 2 and serial.workers == 1
    assert parallel.chosen_lam == serial.chosen_lam
    for a, b in zip(serial.all_runs, parallel.all_runs, strict=True):
        assert _without_times(a) == _without_times(b)
    assert parallel.cpu_seconds > 0


def test_lambda_is_chosen_on_the_tuning_perplexity():
    from trustlab.entropy_attention.results import RunResult

    def res(lam, seed, ppl, status="ok"):
        return RunResult(variant="EReg(SM(t)+ScFuFFN)", seed=seed, gamma=0.2, lam=lam, status=status, reason=None,
                         diverged_step=None, steps=1, tokens=1, train_seconds=0, monitor_seconds=0, monitor_calls=0,
                         eval_seconds=0, val_loss=0, val_ppl=1.0, val_bpt=0, max_uniform=1, entropy=[], entropy_norm=[],
                         per_query=[], tune={"val_ppl": ppl}, history=[], curve=[], learned={})  # fmt: skip

    runs = [res(0.0, 1, 3.0), res(0.0, 2, 3.2), res(0.1, 1, 2.9), res(0.1, 2, 3.0), res(1.0, 1, 1.0, "diverged")]
    assert run.choose_lam(runs, fallback=0.5) == 0.1
    assert run.choose_lam([res(0.0, 1, 3.0), res(0.1, 1, 3.0)], fallback=0.5) == 0.0  # a tie: the smaller
    assert run.choose_lam([], fallback=0.5) == 0.5


def test_flatness_is_the_relative_change_over_the_last_fifth():
    import pandas as pd

    curve = pd.DataFrame({"step": [0, 25, 50, 75, 100], "val_ppl": [10.0, 6.0, 5.0, 4.0, 3.8]})
    assert tables.relative_change_last(curve, 0.2) == pytest.approx(3.8 / 4.0 - 1)
    assert math.isnan(tables.relative_change_last(curve.iloc[:1], 0.2))


def test_amortised_ratio_on_known_times():
    assert run.amortised_ratio(0.2, 0.05, 10) == pytest.approx(1.025)
    assert run.amortised_ratio(0.1, 0.1, 1) == pytest.approx(2.0)


def test_outputs_keep_wall_times_out_of_the_metrics(stage, tmp_path):
    cfg, corpus, results = stage
    overhead = run.measure_overhead(cfg, corpus)
    assert overhead["every_step_ratio"] == pytest.approx(overhead["every_step_ms"] / overhead["fast_ms"])
    assert overhead["amortised_ratio"] == pytest.approx(
        run.amortised_ratio(overhead["fast_ms"], overhead["probe_ms"], cfg.log_every))
    claims = claim_rows(results)
    metrics = write_outputs(tmp_path, report.stage_outputs(results, claims, overhead), profile="smoke",
                            stage_seconds=1.0)  # fmt: skip
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["run"]["profile"] == "smoke" and saved["claims"] == metrics["claims"] == claims
    assert saved["headline"]["runs"] == 6 and math.isfinite(saved["headline"]["SM+LN+G/val_ppl"])
    assert saved["headline"]["chosen_lam"] == results.chosen_lam
    assert set(saved) >= {"perplexity", "head_bins", "divergence", "divergence_runs", "gamma_sweep", "lam_sweep",
                          "flatness", "corpus", "config"}  # fmt: skip
    assert len(saved["lam_sweep"]) == 2 and len(saved["flatness"]) == 3
    assert "overhead" not in saved and "timing" not in saved
    headline = json.loads((tmp_path / "headline.json").read_text())
    assert not [k for k in headline if "seconds" in k or "ratio" in k]
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["stage_seconds"] == 1.0 and timing["entropy_logging_steps_ratio"] == overhead["amortised_ratio"]
    assert timing["overhead"]["measured"] == overhead and len(timing["runs"]) == 6
    assert timing["training_cpu_seconds"] > 0 and timing["workers"] == 1
    for name in ("runs", "perplexity", "head_bins", "heatmaps", "entropy_history", "gamma_sweep", "theta", "temperature",
                 "lam_sweep", "validation_curves"):  # fmt: skip
        header = (tmp_path / "plots" / f"{name}.csv").read_text().splitlines()[0]
        assert "seconds" not in header and "ms_per_step" not in header, name
    text = report.findings(results, claims, overhead)
    assert "Claim verdicts: not evaluated: 10." in text
    still_falling = tables.flatness_table(results).worst_rel_change.min() < -report.FLAT_TOLERANCE
    assert ("have not flattened" in text) == still_falling


def test_figures_draw_what_the_run_has(stage):
    import matplotlib.pyplot as plt

    from trustlab.entropy_attention import figures

    _, _, results = stage

    def panels(fig):
        return [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_images()]

    fig = figures.plot_heatmaps(results, normalised=True)
    assert panels(fig) == VARIANTS
    fig = figures.plot_theta(results)
    assert panels(fig) == ["theta: EReg(SM(t)+ScFuFFN)"]
    fig = figures.plot_temperature(results)
    assert panels(fig) == ["EReg(SM(t)+ScFuFFN) L0", "EReg(SM(t)+ScFuFFN) L1"]
    fig = figures.plot_perplexity(tables.perplexity_table(results))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == VARIANTS
    fig = figures.plot_validation_curves(results)
    assert [line.get_label() for line in fig.axes[0].get_legend().get_lines()] == VARIANTS
    fig = figures.plot_lam_sweep(tables.lam_sweep_table(results))
    assert [ax.get_xlabel() for ax in fig.axes] == ["lambda", "lambda"]
    assert figures.plot_lam_sweep(tables.lam_sweep_table(type(results)(config=results.config, runs=[], sweep=[]))) is None
    plain = type(results)(config=results.config, runs=results.runs[:2], sweep=[])
    assert figures.plot_theta(plain) is None and figures.plot_temperature(plain) is None
    plt.close("all")


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        run.load_corpus(EntropyAttentionConfig.from_dict(SMOKE), tmp_path)


def test_notebook_runs_end_to_end_under_smoke_params(data_dir, tmp_path, monkeypatch):
    import os

    import jupytext
    import papermill as pm

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TRUSTLAB_PROGRESS", "0")
    src = tmp_path / "src.ipynb"
    jupytext.write(jupytext.read(ROOT / "notebooks" / "entropy_attention.py"), src)
    params = {**SMOKE, "variants": ["SM+LN+G", "EReg(SM(t)+ScFuFFN)"], "wandb_images": False, "workers": 2}
    pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", language="python",
                        parameters={"profile": None, "params": params, "reports_dir": str(tmp_path / "r"),
                                    "data_dir": str(data_dir)}, cwd=str(ROOT), progress_bar=False)  # fmt: skip
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["headline"]["runs"] == 5 and len(metrics["claims"]) == len(CLAIMS)
    figures = {p.stem for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert {"perplexity", "entropy_heatmaps_raw", "entropy_heatmaps_normalised", "entropy_over_training", "head_bins",
            "gamma_sweep", "theta", "temperature", "lam_sweep", "validation_curves"} <= figures


def test_claims_of_the_regularizer_name_the_chosen_lambda():
    from trustlab.entropy_attention.claims import _lambda_note, claim_row

    spec = {c.id: c for c in CLAIMS}
    row = claim_row(spec["ereg_lowers_early_entropy"], {0: 0.5, 1: 0.4}, {0: 0.6, 1: 0.7},
                    extra_note=_lambda_note(spec["ereg_lowers_early_entropy"], 0.16))  # fmt: skip
    assert row["note"].endswith("lambda = 0.16 (chosen on the tuning windows)")
    assert _lambda_note(spec["ereg_lowers_early_entropy"], 0.0).endswith("the regularizer off, so no effect)")
    assert _lambda_note(spec["no_layernorm_gelu_raises_early_entropy"], 0.16) == ""
