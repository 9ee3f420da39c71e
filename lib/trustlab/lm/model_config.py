"""The ``model:`` section of ``params.yaml``: which language model the LM families use and how
it is trained. No torch import, so params validation stays cheap.

::

    model:
      backend: tiny             # tiny: our GPT (pretrained by the base_model stage) | hf: a transformers causal LM
      path: models/base         # tiny: a trustlab GPT directory, relative to data_dir (or absolute)
      name_or_path: null        # hf: a local directory (absolute, or relative to data_dir) or a hub name
      dtype: float32            # float32 | bfloat16 | float16 (float16 needs a GPU)
      device: cpu               # cpu | cuda | auto (cuda when available)
      attn_implementation: null # hf: null (transformers' default) | eager (needed for attention probabilities) | sdpa
      trust_remote_code: false  # hf: run code shipped with a hub model (off: only transformers' own classes)
      local_files_only: true    # hf: never download; a hub name must already be in the HF cache
      chat_template: auto       # hf: auto = wrap prompts in the model's own chat template when it has one | none
      prompt_suffix: ""         # hf without a chat template: appended to every prompt (e.g. "\\nAnswer:")
      lora:                     # hf: LoRA adapters through peft (base weights frozen)
        enabled: false
        r: 8                    # the NoiseFiT paper's settings: r = 8, alpha = 16, dropout 0.05, q/v projections
        alpha: 16
        dropout: 0.05
        target_modules: null    # null = the architecture's q/v projections (peft's table:
                                #   q_proj, v_proj for Llama/Qwen/Mistral; c_attn for GPT-2, which fuses q, k, v)
      trainer:                  # Lightning Trainer settings (trustlab.lm.training.fit)
        accelerator: cpu        # cpu | gpu | auto
        devices: 1              # an integer or "auto"
        strategy: auto          # auto | ddp | ddp_spawn | ddp_notebook | fsdp
        precision: 32-true      # 32-true | bf16-mixed | 16-mixed | bf16-true
        accumulate_grad_batches: 1
        num_nodes: 1

``TrainerConfig.fit_kwargs()`` is what ``trustlab.lm.training.fit`` takes;
``trustlab.lm.loading.load_model_and_tokenizer(cfg, data_dir)`` builds the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trustlab.core.config import ConfigError, Section

BACKENDS = ("tiny", "hf")


@dataclass(frozen=True)
class LoraConfig(Section):
    """LoRA adapters (``peft``): W x + (alpha / r) * B A x with A (r x d_in), B (d_out x r), B = 0
    at the start, dropout on the adapter's input; only A and B train."""

    SECTION = "model.lora"

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: the architecture's q/v projections

    def validate(self) -> None:
        self.check_range("r", 1)
        self.check_range("alpha", 0, lo_open=True)
        self.check_range("dropout", 0.0, 1.0, hi_open=True)
        if self.target_modules is not None:
            if not self.target_modules:
                self.fail(
                    "target_modules", "give at least one module name (e.g. [q_proj, v_proj]) or null for the architecture's default"
                )
            if any(not m.strip() for m in self.target_modules):
                self.fail("target_modules", "module names must not be empty")


@dataclass(frozen=True)
class TrainerConfig(Section):
    """Lightning Trainer settings. ``batch_size`` in the family sections is per device and
    micro-batch: an optimizer step sees ``batch_size * devices * num_nodes *
    accumulate_grad_batches`` examples."""

    SECTION = "model.trainer"

    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: int | Literal["auto"] = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    accumulate_grad_batches: int = 1
    num_nodes: int = 1

    def validate(self) -> None:
        if self.devices != "auto":
            self.check_range("devices", 1)
        self.check_range("accumulate_grad_batches", 1)
        self.check_range("num_nodes", 1)
        if self.accelerator == "cpu":
            if self.precision == "16-mixed":
                self.fail("precision", "16-mixed needs accelerator gpu; on the CPU use 32-true or bf16-mixed")
            if self.strategy == "fsdp":
                self.fail("strategy", "fsdp needs accelerator gpu; on the CPU use ddp (gloo)")
        if self.num_nodes > 1 and self.strategy not in ("ddp", "fsdp"):
            self.fail("strategy", f"num_nodes = {self.num_nodes} needs strategy ddp or fsdp")

    @property
    def needs_cuda(self) -> bool:
        return self.accelerator == "gpu" or self.precision == "16-mixed" or self.strategy == "fsdp"

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``trustlab.lm.training.fit``."""
        return {
            "accelerator": self.accelerator,
            "devices": self.devices,
            "strategy": self.strategy,
            "precision": self.precision,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "num_nodes": self.num_nodes,
        }


@dataclass(frozen=True)
class ModelConfig(Section):
    SECTION = "model"

    backend: Literal["tiny", "hf"] = "tiny"
    path: str = "models/base"
    name_or_path: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    attn_implementation: Literal["eager", "sdpa"] | None = None
    trust_remote_code: bool = False
    local_files_only: bool = True
    chat_template: Literal["auto", "none"] = "auto"
    prompt_suffix: str = ""
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if not self.path.strip():
            self.fail("path", "a trustlab GPT directory, relative to data_dir or absolute (default models/base)")
        if self.backend == "hf":
            if not (self.name_or_path or "").strip():
                self.fail(
                    "name_or_path", "backend hf needs a local directory or a hub name, e.g. Qwen/Qwen2.5-0.5B-Instruct"
                )
        else:
            if self.lora.enabled:
                raise ConfigError(
                    f"{self._path()}.lora.enabled = true is not allowed with backend 'tiny': "
                    "LoRA adapters (peft) are for backend hf; the tiny GPT fine-tunes all its weights"
                )
            if self.name_or_path is not None:
                self.fail(
                    "name_or_path", "is read only with backend hf (the tiny backend reads model.path); set it to null"
                )
        if self.dtype == "float16" and self.device == "cpu":
            self.fail("dtype", "float16 needs device cuda (CPU kernels lack half precision): use float32 or bfloat16")
        if self.device == "cuda" and self.trainer.accelerator == "cpu":
            raise ConfigError(
                f"{self._path()}.device = 'cuda' but {self._path()}.trainer.accelerator = 'cpu': training would move "
                "the model to the CPU; set trainer.accelerator to gpu (or device to cpu)"
            )

    @property
    def needs_cuda(self) -> bool:
        return self.device == "cuda" or self.dtype == "float16" or self.trainer.needs_cuda


def hf_offline() -> bool:
    """The Hugging Face offline switches (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) are on."""
    on = ("1", "true", "yes", "on")
    return any(os.environ.get(v, "").strip().lower() in on for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_hf_source(name_or_path: str, data_dir: str | os.PathLike | None = None) -> tuple[str, bool]:
    """-> (what to pass to ``from_pretrained``, is it a local directory). A local directory wins:
    absolute, relative to ``data_dir``, then relative to the working directory; anything else
    is a hub name (an absolute path that does not exist is a ConfigError)."""
    p = Path(name_or_path).expanduser()
    candidates = [p] if p.is_absolute() else [*([Path(data_dir) / p] if data_dir is not None else []), p]
    for c in candidates:
        if c.is_dir():
            return str(c), True
    if p.is_absolute():
        raise ConfigError(f"model.name_or_path = {name_or_path!r} is an absolute path that does not exist")
    return name_or_path, False


def in_hf_cache(name: str) -> bool:
    """True when the hub model ``name`` has its ``config.json`` in the local Hugging Face cache
    (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # an invalid repo id, an unreadable cache
        return False
    return isinstance(found, str)
