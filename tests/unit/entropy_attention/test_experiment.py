"""The stage end to end at a tiny size: outputs, tables, claims, figures, and the notebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trustlab.entropy_attention import experiment as ex
from trustlab.entropy_attention.config import EntropyAttentionConfig

ROOT = Path(__file__).resolve().parents[3]
SMOKE = {"variants": ["SM+LN+G", "SM+G", "EReg(SM(t)+ScFuFFN)"], "seeds": [0, 1], "n_layer": 2, "n_head": 2,
         "n_embd": 16, "block_size": 16, "steps": 3, "batch_size": 4, "warmup_steps": 1, "log_every": 2,
         "probe_windows": 2, "val_windows": 6, "eval_batch_size": 6, "gamma_sweep": [0.0, 0.2],
         "overhead_steps": 2, "max_train_bytes": 8000, "max_val_bytes": 4000}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from trustlab.data.config import CodeCorpusConfig
    from trustlab.data.code_corpus import generate_code_corpus

    root = tmp_path_factory.mktemp("data")
    generate_code_corpus(CodeCorpusConfig(max_bytes=60000, max_file_bytes=20000, val_fraction=0.3), root / "generated" / "code", 0)
    return root


def test_stage_outputs_tables_and_claims(data_dir, tmp_path):
    import matplotlib.pyplot as plt

    cfg = EntropyAttentionConfig.from_dict(SMOKE)
    corpus = ex.load_corpus(cfg, data_dir)
    assert corpus.val_ids.shape[1] == 16 and len(corpus.probe_ids) == 2
    results = ex.run_stage(cfg, corpus, track=False)
    assert len(results.runs) == 6 and [r.gamma for r in results.sweep] == [0.0]  # gamma 0.2 reused
    assert all(r.ok and r.steps == 3 for r in results.runs)
    # same token budget and data order for every variant at a seed
    assert len({(r.seed, r.tokens) for r in results.runs}) == 2
    overhead = ex.measure_overhead(cfg, corpus)
    assert overhead["every_step_ratio"] > 0 and overhead["amortised_ratio"] >= 1.0
    claims = ex.make_claims(results)
    assert {c.metric for c in claims} >= {"early_norm_entropy", "early_overloaded"}
    assert all(c.n_seeds == 2 and c.verdict in ("supported", "not supported", "inconclusive") for c in claims)
    metrics = ex.write_outputs(results, tmp_path, claims, overhead=overhead, profile="smoke", stage_seconds=1.0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["run"]["profile"] == "smoke" and saved["claims"] and saved["headline"]["runs"] == 7
    assert math.isfinite(saved["headline"]["SM+LN+G/val_ppl"])
    assert metrics["headline"]["entropy_logging_steps_ratio"] == overhead["amortised_ratio"]
    for name in ("runs", "perplexity", "head_bins", "heatmaps", "entropy_history", "gamma_sweep", "theta", "temperature"):
        assert (tmp_path / "plots" / f"{name}.csv").exists(), name
    bins = ex.head_bin_table(results)
    assert bins[[f"bin_{b}" for b in ex.BIN_LABELS]].sum(axis=1).round(6).eq(1).all()
    sweep = ex.gamma_sweep_table(results)
    assert sorted(set(sweep.gamma)) == [0.0, 0.2]
    for fig in (ex.plot_perplexity(ex.perplexity_table(results)), ex.plot_heatmaps(results, normalised=True),
                ex.plot_heatmaps(results, normalised=False), ex.plot_entropy_curves(results), ex.plot_head_bins(bins),
                ex.plot_gamma_sweep(sweep), ex.plot_theta(results), ex.plot_temperature(results),
                ex.plot_run_heatmaps(results.runs[0]), ex.plot_run_learned(results.runs[-1])):
        assert fig is not None
        plt.close(fig)
    assert "Claim verdicts" in ex.findings(results, claims, overhead)


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        ex.load_corpus(EntropyAttentionConfig.from_dict(SMOKE), tmp_path)


def test_notebook_runs_end_to_end_under_smoke_params(data_dir, tmp_path, monkeypatch):
    import os

    import jupytext
    import papermill as pm

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TRUSTLAB_PROGRESS", "0")
    src = tmp_path / "src.ipynb"
    jupytext.write(jupytext.read(ROOT / "notebooks" / "entropy_attention.py"), src)
    params = {**SMOKE, "seeds": [0], "variants": ["SM+LN+G", "EReg(SM(t)+ScFuFFN)"], "wandb_images": False}
    pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", language="python",
                        parameters={"profile": None, "params": params, "reports_dir": str(tmp_path / "r"),
                                    "data_dir": str(data_dir)}, cwd=str(ROOT), progress_bar=False)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["headline"]["runs"] == 3 and "claims" in metrics
    figures = {p.stem for p in (tmp_path / "r" / "figures").glob("*.png")}
    assert {"perplexity", "entropy_heatmaps_raw", "entropy_heatmaps_normalised", "entropy_over_training", "head_bins",
            "gamma_sweep", "theta", "temperature"} <= figures
