"""GenerationStats storage and validation, split helpers, and the error_detection config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from trustlab.core.config import ConfigError, deep_merge
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.estimators import DETECTORS
from trustlab.error_detection.statistics import GenerationStats, assign_splits, check_disjoint
from trustlab.error_detection.synthetic import synthetic_stats


@pytest.fixture(scope="module")
def stats():
    return synthetic_stats(n=40, K=4, n_layers=2, d=5, seed=3)


def test_round_trip_is_lossless(tmp_path, stats):
    npz, side = stats.save(tmp_path / "gen")
    assert npz.name == "gen.npz" and side.name == "gen.json"
    back = GenerationStats.load(tmp_path / "gen.npz")
    assert back.equals(stats)
    assert back.hidden_answer.dtype == np.float32 and back.token_logprobs[0].dtype == np.float64
    with np.load(npz, allow_pickle=False) as z:  # no object arrays anywhere
        assert all(z[k].dtype != object for k in z.files)
    # reduced-sample variant and unlabelled variant also round-trip
    lean = synthetic_stats(n=12, K=3, seed=4, sample_tokens=False)
    drop = {"is_error": None, "hidden_answer": None, "hidden_response": None, "prompt": None}
    lean = GenerationStats(**{**lean.__dict__, **drop})
    lean.save(tmp_path / "lean")
    back = GenerationStats.load(tmp_path / "lean")
    assert back.equals(lean) and back.is_error is None and back.sample_token_logprobs is None


def test_load_detects_mismatched_files(tmp_path, stats):
    stats.save(tmp_path / "a")
    stats.subset(np.arange(5)).save(tmp_path / "b")
    (tmp_path / "b.npz").replace(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="does not match its sidecar"):
        GenerationStats.load(tmp_path / "a")
    stats.save(tmp_path / "c")
    side = json.loads((tmp_path / "c.json").read_text())
    side["format"] = "something else"
    (tmp_path / "c.json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match="not a GenerationStats sidecar"):
        GenerationStats.load(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        GenerationStats.load(tmp_path / "missing")


def test_views_and_concat(stats):
    fit, test = stats.fit_test()
    assert fit.n + test.n == stats.n and set(fit.split) == {"fit"}
    both = GenerationStats.concat([fit, test])
    order = np.argsort(both.ids)
    assert both.subset(order).equals(stats.subset(np.argsort(stats.ids)))
    arith = stats.select(task="arithmetic", split="test")
    assert set(arith.task) == {"arithmetic"} and set(arith.split) == {"test"}
    assert stats.summary()["n"] == stats.n
    with pytest.raises(ValueError, match="task = 'poetry'"):
        stats.select(task="poetry")


def test_k_below_two_is_rejected(stats):
    kw = {**stats.__dict__}
    kw["sample_texts"] = stats.sample_texts[:, :1]
    kw["sample_answers"] = stats.sample_answers[:, :1]
    kw["sample_token_logprobs"] = [row[:1] for row in stats.sample_token_logprobs]
    kw["sample_answer_masks"] = [row[:1] for row in stats.sample_answer_masks]
    kw["sample_mean_logprobs"] = kw["sample_sum_logprobs"] = None
    with pytest.raises(ValueError, match=r"K = 1 .*K >= 2"):
        GenerationStats(**kw)


def test_validation_errors(stats):
    kw = {**stats.__dict__}
    with pytest.raises(ValueError, match="split has unknown values 'train'"):
        GenerationStats(**{**kw, "split": ["train"] * stats.n})
    with pytest.raises(ValueError, match="ids must be unique"):
        GenerationStats(**{**kw, "ids": ["x"] * stats.n})
    bad_mask = list(stats.answer_mask)
    bad_mask[0] = np.r_[bad_mask[0], True]
    with pytest.raises(ValueError, match=r"answer_mask\[0\] has"):
        GenerationStats(**{**kw, "answer_mask": bad_mask})
    pos = list(stats.token_logprobs)
    pos[1] = np.abs(pos[1]) + 0.1
    with pytest.raises(ValueError, match="not <= 0"):
        GenerationStats(**{**kw, "token_logprobs": pos})
    with pytest.raises(ValueError, match="hidden_answer must be"):
        GenerationStats(**{**kw, "hidden_answer": np.zeros((stats.n, 4))})
    with pytest.raises(ValueError, match="disagrees"):
        GenerationStats(**{**kw, "sample_mean_logprobs": stats.sample_mean_logprobs - 1})


def test_check_disjoint_names_overlapping_ids():
    check_disjoint(["a", "b"], ["c"])
    with pytest.raises(ValueError, match=r"overlap in 2 prompt ids: 'b', 'c'"):
        check_disjoint(["a", "b", "c"], ["c", "b", "d"])


def test_assign_splits_is_a_function_of_the_ids():
    ids = [f"q{i}" for i in range(50)]
    task = ["arithmetic"] * 30 + ["world_qa"] * 20
    s = assign_splits(ids, task, 0.4, seed=1)
    assert (s[:30] == "fit").sum() == 12 and (s[30:] == "fit").sum() == 8
    perm = np.random.default_rng(0).permutation(50)
    s2 = assign_splits([ids[i] for i in perm], [task[i] for i in perm], 0.4, seed=1)
    assert np.array_equal(s2, s[perm])
    assert not np.array_equal(assign_splits(ids, task, 0.4, seed=2), s)
    with pytest.raises(ValueError, match="fit_fraction"):
        assign_splits(ids, task, 1.0, seed=0)


def test_params_section_and_errors(root):
    frag = yaml.safe_load((root / "params.yaml").read_text())
    smoke_profile = yaml.safe_load((root / "profiles" / "smoke.yaml").read_text())
    cfg = ErrorDetectionConfig.from_dict(frag["error_detection"])
    defaults = ErrorDetectionConfig.from_dict({}).to_dict()
    assert cfg.k_samples == 16
    assert {k: v for k, v in cfg.to_dict().items() if k != "detector_params"} == {
        k: v for k, v in defaults.items() if k != "detector_params"
    }
    for name, params in cfg.detector_params.items():  # spelled-out values are the registry defaults
        sig = DETECTORS.parameters(name)
        for key, value in params.items():
            default = sig[key].default
            assert (list(default) if isinstance(default, tuple) else default) == value, (name, key)
    smoke = ErrorDetectionConfig.from_dict(deep_merge(frag["error_detection"], smoke_profile["error_detection"]))
    assert smoke.k_samples == 4 and smoke.active_tasks() == ["arithmetic", "world_qa", "instructions", "context_copy"]
    with pytest.raises(ConfigError, match=r"k_samples = 1 .*2 <= k_samples"):
        ErrorDetectionConfig.from_dict({"k_samples": 1})
    with pytest.raises(ConfigError, match=r"error_detection.detectors: unknown detector 'oracle'; registered: msp"):
        ErrorDetectionConfig.from_dict({"detectors": ["msp", "oracle"]})
    with pytest.raises(ConfigError, match=r"detector_params.rpc: detector 'rpc' has no parameter 'alpha'"):
        ErrorDetectionConfig.from_dict({"detector_params": {"rpc": {"alpha": 1}}})
    with pytest.raises(ConfigError, match=r"detector_params.knn: k = 0"):
        ErrorDetectionConfig.from_dict({"detector_params": {"knn": {"k": 0}}})
    with pytest.raises(ConfigError, match=r"sources.arithmetic = \['dev'\]: unknown split 'dev'"):
        ErrorDetectionConfig.from_dict({"sources": {**cfg.sources, "arithmetic": ["dev"]}})
    with pytest.raises(ConfigError, match="unknown key 'K'"):
        ErrorDetectionConfig.from_dict({"K": 4})
