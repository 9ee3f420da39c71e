"""Data generators (synthetic world, arithmetic, instruction following, context copy, column
addition with its steps (scratchpad), a Python code corpus) and deterministic answer checkers.

Entry points: ``generate_all(DataConfig, out_dir)`` (or ``pipelines/generate_data.py``),
``load_task(data_dir, task, split)``, ``is_correct(record, response)``,
``classify_qa(record, response)``. The on-disk layout is described in ``trustlab.data.tasks``.
"""

from trustlab.data.checkers import (
    CHECKERS,
    QA_LABELS,
    classify_qa,
    corrupt_answer,
    extract_answer,
    first_wrong_step,
    is_abstention,
    is_correct,
    normalize,
    parse_steps,
)
from trustlab.data.config import (
    ArithmeticConfig,
    CodeCorpusConfig,
    ContextCopyConfig,
    DataConfig,
    InstructionsConfig,
    ScratchpadConfig,
    WorldConfig,
)
from trustlab.data.generate import generate_all
from trustlab.data.tasks import (
    TASKS,
    load_bios,
    load_code,
    load_manifest,
    load_people,
    load_task,
    pairs,
    pretraining_texts,
    task_splits,
    verify,
)

__all__ = [
    "CHECKERS",
    "QA_LABELS",
    "TASKS",
    "ArithmeticConfig",
    "CodeCorpusConfig",
    "ContextCopyConfig",
    "DataConfig",
    "InstructionsConfig",
    "ScratchpadConfig",
    "WorldConfig",
    "classify_qa",
    "corrupt_answer",
    "extract_answer",
    "first_wrong_step",
    "generate_all",
    "is_abstention",
    "is_correct",
    "load_bios",
    "load_code",
    "load_manifest",
    "load_people",
    "load_task",
    "normalize",
    "pairs",
    "parse_steps",
    "pretraining_texts",
    "task_splits",
    "verify",
]
