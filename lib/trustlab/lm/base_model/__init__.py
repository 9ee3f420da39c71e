"""The pretrained base model: the ``base_model`` stage (params section ``base_model:``).

One tiny GPT is pretrained from scratch and shared by the families that need a language
model. One concept per module:

* :mod:`~trustlab.lm.base_model.config`    ``BaseModelConfig``, the params section;
* :mod:`~trustlab.lm.base_model.corpus`    the tokenizer recipe (``fit_tokenizer``) and the texts it covers;
* :mod:`~trustlab.lm.base_model.mix`       the pretraining mix (``build_mix``, ``pack_segments``);
* :mod:`~trustlab.lm.base_model.pretrain`  training (``pretrain``);
* :mod:`~trustlab.lm.base_model.evaluate`  greedy answers scored by the checkers (``evaluate``);
* :mod:`~trustlab.lm.base_model.model_dir` the saved model directory (``save_base_model``, ``load_*``);
* :mod:`~trustlab.lm.base_model.stage`     ``run_stage``, what ``pipelines/pretrain_base.py`` runs.

The 01_base_model report reads a saved model directory with
:mod:`~trustlab.lm.base_model.tables`, :mod:`~trustlab.lm.base_model.figures` (matplotlib) and
:mod:`~trustlab.lm.base_model.report`; they are not imported here, so that training needs
neither pandas nor matplotlib.
"""

from trustlab.lm.base_model.config import DEFAULT_MIX, MIX_COMPONENTS, BaseModelConfig
from trustlab.lm.base_model.corpus import code_texts, corpus_texts, fit_tokenizer, generated_dir
from trustlab.lm.base_model.evaluate import EVAL_SPLITS, Evaluation, eval_records, evaluate, wilson_ci
from trustlab.lm.base_model.mix import PAIR_COMPONENTS, Mix, Segment, build_mix, component_segments, pack_segments
from trustlab.lm.base_model.model_dir import (
    MODEL_FILES,
    data_fingerprint,
    load_curve,
    load_eval_items,
    load_metrics,
    save_base_model,
    stage_metrics,
)
from trustlab.lm.base_model.pretrain import PretrainResult, pretrain
from trustlab.lm.base_model.stage import StageResult, config_from, run_stage, stage_timing

__all__ = [
    "BaseModelConfig",
    "DEFAULT_MIX",
    "EVAL_SPLITS",
    "MIX_COMPONENTS",
    "MODEL_FILES",
    "PAIR_COMPONENTS",
    "Evaluation",
    "Mix",
    "PretrainResult",
    "Segment",
    "StageResult",
    "build_mix",
    "code_texts",
    "component_segments",
    "config_from",
    "corpus_texts",
    "data_fingerprint",
    "eval_records",
    "evaluate",
    "fit_tokenizer",
    "generated_dir",
    "load_curve",
    "load_eval_items",
    "load_metrics",
    "pack_segments",
    "pretrain",
    "run_stage",
    "save_base_model",
    "stage_metrics",
    "stage_timing",
    "wilson_ci",
]
