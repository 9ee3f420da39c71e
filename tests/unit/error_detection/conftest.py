"""Shared fixtures of the error-detection tests: a small config (``make_cfg``), synthetic
statistics and every detector run on them once per module. (The tests import no helper module:
pytest runs with ``--import-mode=importlib``, so helpers are handed out as fixtures.)"""

from __future__ import annotations

import pytest

from trustlab.error_detection import run as detect
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.statistics import GenerationStats
from trustlab.error_detection.synthetic import synthetic_stats

DETECTORS = ["msp", "perplexity", "mean_token_entropy", "zero_shot_z", "self_consistency", "rpc", "mahalanobis",
             "mahalanobis_lee", "linear_probe", "knn", "spc_uq", "meta_ranking"]  # fmt: skip


def make_cfg(**over) -> ErrorDetectionConfig:
    base = dict(detectors=DETECTORS, bootstrap_resamples=200, models=[], workers=1,
                detector_params={"mahalanobis_lee": {"n_folds": 2}, "linear_probe": {"n_folds": 2}, "knn": {"k": 5}},
                per_layer=["linear_probe"])  # fmt: skip
    return ErrorDetectionConfig.from_dict({**base, **over})


def with_labels(stats: GenerationStats, labels) -> GenerationStats:
    return GenerationStats(**{**stats.__dict__, "is_error": labels})


@pytest.fixture(name="make_cfg", scope="session")
def make_cfg_fixture():
    """``make_cfg(**overrides)``: the tests' small config."""
    return make_cfg


@pytest.fixture(name="with_labels", scope="session")
def with_labels_fixture():
    """``with_labels(stats, labels)``: the same statistics with other error labels."""
    return with_labels


@pytest.fixture(scope="module")
def stats():
    return synthetic_stats(n=160, K=4, n_layers=3, d=6, seed=3, signal=1.0)


@pytest.fixture(scope="module")
def cfg():
    return make_cfg()


@pytest.fixture(scope="module")
def dets(cfg, stats):
    return detect.run_detectors(cfg, stats)
