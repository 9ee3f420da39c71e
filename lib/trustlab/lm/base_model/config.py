"""``BaseModelConfig``: the ``base_model:`` params section (architecture, pretraining mix,
optimisation, evaluation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trustlab.core.config import ConfigError, Section

# the pretraining mix's components, in the order they are built (see trustlab.lm.base_model.mix)
MIX_COMPONENTS = (
    "bios", "qa_train", "arithmetic", "instructions", "context_copy", "scratchpad", "nonexistent_train", "code"
)

DEFAULT_MIX = {
    "bios": 6.0,
    "qa_train": 4.0,
    "arithmetic": 3.0,
    "instructions": 0.75,
    "context_copy": 1.0,
    "scratchpad": 1.0,
    "nonexistent_train": 0.0,
    "code": 0.0,
}


@dataclass(frozen=True)
class BaseModelConfig(Section):
    """``base_model:`` — architecture, pretraining mix, optimisation and evaluation."""

    SECTION = "base_model"

    seed: int = 0
    threads: int | None = 2  # torch intra-op threads (None: all cores, capped at 8); 2 is fastest here (bench_base_model)
    # architecture (trustlab.lm.gpt.GPTConfig)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64  # context; also the packing window of the text components
    dropout: float = 0.0
    # tokenizer
    min_freq: int = 1
    answer_space: bool = True  # answers encoded as " " + answer (same token as in the bios); false = ablation
    packing: bool = True  # pack segments into full rows (see build_mix)
    # pretraining mix: copies of each component per pass (see trustlab.lm.base_model.mix)
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    code_max_chars: int = 200000  # characters of code-corpus text used when mix.code > 0
    # optimisation
    steps: int = 1500
    batch_size: int = 32
    lr: float = 0.003
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # evaluation
    max_eval_items: int = 300  # per task/split (seeded subset)
    max_new_tokens: int = 40  # the longest scratchpad answer (3-digit operands) is 34 tokens
    eval_batch_size: int = 128

    def __post_init__(self):
        # a partial mix (``mix: {bios: 2}``) means the defaults for the other components; spell
        # them out so that the saved config says exactly what was trained on
        object.__setattr__(
            self,
            "mix",
            {
                **DEFAULT_MIX,
                **{
                    k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                    for k, v in self.mix.items()
                },
            },
        )

    def validate(self) -> None:
        if self.seed < 0:
            self.fail("seed", "a non-negative integer")
        if self.threads is not None:
            self.check_range("threads", 1, 64)
        for key in ("n_layer", "n_head", "n_embd"):
            self.check_range(key, 1, 4096)
        if self.n_embd % self.n_head:
            self.fail("n_embd", f"a multiple of n_head = {self.n_head}")
        self.check_range("block_size", 16, 4096)
        self.check_range("dropout", 0.0, 1.0, hi_open=True)
        self.check_range("min_freq", 1)
        unknown = sorted(set(self.mix) - set(MIX_COMPONENTS))
        if unknown:
            raise ConfigError(
                f"{self._path()}.mix: unknown component{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; allowed components are {', '.join(MIX_COMPONENTS)} "
                "(qa_heldout, new_facts and nonexistent_test are never trained on)"
            )
        for name, copies in self.mix.items():
            if isinstance(copies, bool) or not (
                isinstance(copies, (int, float)) and math.isfinite(copies) and 0 <= copies <= 1000
            ):
                raise ConfigError(
                    f"{self._path()}.mix.{name} = {copies!r} is out of range: allowed 0 <= copies <= 1000"
                )
        if not any(
            self.mix_copies(n) > 0
            for n in ("bios", "qa_train", "arithmetic", "instructions", "context_copy", "scratchpad", "code")
        ):
            raise ConfigError(
                f"{self._path()}.mix = {dict(self.mix)!r} trains on nothing: give some component copies > 0"
            )
        self.check_range("code_max_chars", 0)
        self.check_range("steps", 1, 10_000_000)
        self.check_range("batch_size", 1, 65536)
        self.check_range("lr", 0.0, 1.0, lo_open=True)
        self.check_range("warmup_steps", 0)
        self.check_range("min_lr_ratio", 0.0, 1.0)
        self.check_range("weight_decay", 0.0)
        self.check_range("grad_clip", 0.0, lo_open=True)
        self.check_range("max_eval_items", 1)
        self.check_range("max_new_tokens", 1, self.block_size - 4)
        self.check_range("eval_batch_size", 1, 65536)

    def mix_copies(self, name: str) -> float:
        """Copies of a component (absent from ``mix`` = the default)."""
        return float(self.mix.get(name, DEFAULT_MIX[name]))

    def gpt_config(self, vocab_size: int):
        from trustlab.lm.gpt import GPTConfig

        return GPTConfig(
            vocab_size=vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
        )

