"""Error detection in language-model responses (background: docs/methods/error_detection.md).

Shaped like lm-polygraph without depending on it: per-generation statistics are computed
once and stored (:mod:`.statistics`, ``GenerationStats``), *estimators* are small functions
from those statistics to an uncertainty score u (higher = more likely an error;
:mod:`.estimators`, the ``DETECTORS`` registry; SPC-UQ in :mod:`.spc` and Meta Ranking in
:mod:`.meta_ranking`, both adaptations), and *metrics* score estimators against the
error labels (:mod:`.metrics`: AUROC, AUPRC + base rate, normalised PRR, ReaLMistake-style
P/R/F1 with the always-error and random baselines, bootstrap CIs). :mod:`.config` holds
``ErrorDetectionConfig`` (the ``error_detection:`` section of ``params.yaml``).

Model side: :mod:`.collect` draws prompts and a fit/test split from the generated tasks and
computes the statistics with any model ``trustlab.lm.generation.generate`` accepts (greedy
pass with hidden states + K samples, answers, checker labels, pooling; stored under
``data/detection_stats/`` and reused while model files, prompts, sampling and code match);
:mod:`.inject` makes AEGIS-style injected errors and scores them by teacher forcing.
Step level: :mod:`.steps` collects scratchpad trajectories with per-step statistics and injected
step errors, and :mod:`.correct` localises the first wrong step (the ``LOCALISERS`` registry:
two no-cache baselines and the CORRECT-style schema cache, an adaptation).
The stage itself: :mod:`.run` (models, prompts, detectors -> ``Results``; no plotting, no
W&B), :mod:`.claims` (the claims as data, evaluated by ``trustlab.core.claims``), :mod:`.tables`,
:mod:`.figures` and :mod:`.report` (headline, findings, outputs, W&B runs).

Submodules are imported lazily so that loading the config does not import scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GenerationStats": "statistics",
    "LabelAccessError": "statistics",
    "check_disjoint": "statistics",
    "assign_splits": "statistics",
    "build_estimator": "estimators",
    "estimator_names": "estimators",
    "DETECTORS": "estimators",
    "evaluate": "metrics",
    "ErrorDetectionConfig": "config",
    "select_prompts": "collect",
    "split_prompts": "collect",
    "collect_stats": "collect",
    "load_or_collect": "collect",
    "make_injections": "inject",
    "score_injected": "inject",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
