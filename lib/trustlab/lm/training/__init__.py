"""Causal-LM training with Lightning, laid out like a Lightning project:

* :mod:`~trustlab.lm.training.data`      the items, datasets and ``collate`` (the data side);
* :mod:`~trustlab.lm.training.sampling`  the step-indexed batch order that makes resume exact;
* :mod:`~trustlab.lm.training.module`    ``CausalLMModule``, the LightningModule families subclass;
* :mod:`~trustlab.lm.training.callbacks` periodic validation and checkpoints;
* :mod:`~trustlab.lm.training.fit`       ``fit``: the ``Trainer`` set-up and the run.

Everything other packages use is importable from here: ``from trustlab.lm.training import fit``.
"""

from trustlab.lm.training.data import (
    Collate,
    ExampleDataset,
    PackedTextDataset,
    PairDataset,
    TextDataset,
    collate,
)
from trustlab.lm.training.fit import (
    ACCELERATORS,
    PRECISIONS,
    STRATEGIES,
    FitResult,
    _interactive,
    _set_threads,
    fit,
)
from trustlab.lm.training.module import CausalLMModule, warmup_cosine
from trustlab.lm.training.sampling import ShardSampler, StepBatchSampler

__all__ = [
    "ACCELERATORS",
    "PRECISIONS",
    "STRATEGIES",
    "CausalLMModule",
    "Collate",
    "ExampleDataset",
    "FitResult",
    "PackedTextDataset",
    "PairDataset",
    "ShardSampler",
    "StepBatchSampler",
    "TextDataset",
    "collate",
    "fit",
    "warmup_cosine",
]
