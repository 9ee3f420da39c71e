"""One switch for the model: build it from the ``model:`` params section.

``load_model_and_tokenizer(model_cfg, data_dir) -> (model, tokenizer)``:

* ``backend: tiny`` — our GPT and ``WordTokenizer`` from ``<data_dir>/<path>``
  (``checkpoint.load_pretrained``), cast to ``dtype``, on ``device``.
* ``backend: hf`` — ``hf_backend.HFCausalLM`` + ``HFTokenizer`` from ``name_or_path`` (a local
  directory, absolute or relative to ``data_dir``, else a hub name; with ``local_files_only`` a
  hub name must already be in the Hugging Face cache), prompts wrapped in the model's chat
  template when ``chat_template: auto`` and it has one, LoRA adapters when ``lora.enabled``
  (``apply_lora``: base weights frozen, only the adapters train).

Both come back in eval mode and expose the same interfaces (``generate``, ``score_continuations``,
``decoder_blocks``/``add_block_hook``, ``CausalLMModule``/``fit``), so the families run unchanged.
``model_summary(model)`` gives the numbers a report records (layers, width, parameters,
trainable parameters, LoRA targets); ``save_model_and_tokenizer`` writes either kind.

This module never imports ``transformers`` itself (``hf_backend`` does, when the hf backend is
asked for).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from trustlab.core.config import ConfigError
from trustlab.lm.model_config import LoraConfig, ModelConfig, hf_offline, in_hf_cache, resolve_hf_source

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` (cuda when available) -> a ``torch.device``; ``cuda`` without
    CUDA is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device = 'cuda' but CUDA is not available on this machine: use cpu or auto")
    return torch.device(device)


def _as_config(model_cfg: ModelConfig | Mapping[str, Any] | None) -> ModelConfig:
    if isinstance(model_cfg, ModelConfig):
        return model_cfg
    return ModelConfig.from_dict(model_cfg or {}, where="model")


def _under(data_dir, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or data_dir is None else Path(data_dir) / p


def load_model_and_tokenizer(model_cfg: ModelConfig | Mapping[str, Any] | None, data_dir=None):
    """-> (model, tokenizer), eval mode, on the configured device (see the module docstring)."""
    cfg = _as_config(model_cfg)
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    if cfg.backend == "tiny":
        from trustlab.lm.checkpoint import CONFIG_FILE, load_pretrained

        directory = _under(data_dir, cfg.path)
        if not (directory / CONFIG_FILE).is_file():
            raise ConfigError(
                f"model.path = {cfg.path!r}: no trustlab model at {directory} (run the base_model stage, "
                "or point model.path at a directory written by trustlab.lm.checkpoint.save_model)"
            )
        model, tok = load_pretrained(directory, device=device)
        if dtype != torch.float32:
            model = model.to(dtype=dtype)
        return model.eval(), tok

    if importlib.util.find_spec("transformers") is None:
        raise ConfigError("model.backend = 'hf' needs transformers: pip install '.[hf]'")
    from trustlab.lm.hf_backend import load_hf_model

    source, local = resolve_hf_source(cfg.name_or_path, data_dir)
    offline = cfg.local_files_only or hf_offline()
    if not local and offline and not in_hf_cache(source):  # fail here, before transformers looks for it
        raise ConfigError(
            f"model.name_or_path = {cfg.name_or_path!r} is not a local directory (absolute, or under {data_dir}) "
            f"and is not in the Hugging Face cache. " + _download_hint(cfg.name_or_path, cfg.local_files_only)
        )
    try:
        model, tok = load_hf_model(
            source,
            dtype=dtype,
            device=device,
            attn_implementation=cfg.attn_implementation,
            prompt_suffix=cfg.prompt_suffix,
            chat_template=cfg.chat_template,
            local_files_only=offline,
            trust_remote_code=cfg.trust_remote_code,
        )
    except OSError as exc:
        if local:
            raise
        raise ConfigError(
            f"model.name_or_path = {cfg.name_or_path!r} is not a local directory and could not be loaded from the "
            f"Hugging Face hub or its cache ({_first_line(exc)}). "
            + _download_hint(cfg.name_or_path, cfg.local_files_only)
        ) from None
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model.eval(), tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _download_hint(name: str, local_files_only: bool) -> str:
    why = "model.local_files_only = true" if local_files_only else "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set"
    return (
        f"Downloads are off ({why}): download it once where there is network "
        f"(`hf download {name}`, or set model.local_files_only: false), "
        "or set model.name_or_path to a local directory."
    )


# ---------------------------------------------------------------------------------------------
# LoRA


def _adaptable_leaf_names(hf_model: nn.Module) -> list[str]:
    """Last name component of every module LoRA can wrap (Linear, GPT-2's Conv1D, Embedding)."""
    names = set()
    for name, module in hf_model.named_modules():
        if name and (isinstance(module, (nn.Linear, nn.Embedding)) or type(module).__name__ == "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_target_modules(hf_model: nn.Module, lora: LoraConfig) -> list[str]:
    """The module names LoRA wraps: ``lora.target_modules``, or (null) the architecture's
    default from peft's table — the attention's query/value projections (``q_proj``, ``v_proj``
    for Llama/Qwen/Mistral; GPT-2's fused ``c_attn``). Unknown names are a ConfigError that lists
    the candidates."""
    available = _adaptable_leaf_names(hf_model)
    if lora.target_modules is None:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
        targets = DEFAULTS.get(model_type)
        if not targets:
            raise ConfigError(
                f"model.lora.target_modules = null: peft has no default for model_type {model_type!r}; "
                f"name them, e.g. from: {', '.join(available)}"
            )
        return list(targets)
    missing = [m for m in lora.target_modules if m not in available]
    if missing:
        raise ConfigError(
            f"model.lora.target_modules = {list(lora.target_modules)!r}: {', '.join(map(repr, missing))} not found in "
            f"this model; its adaptable modules are {', '.join(available)} (null = the architecture's q/v projections)"
        )
    return list(lora.target_modules)


def apply_lora(model, lora: LoraConfig | Mapping[str, Any]):
    """Wrap an ``HFCausalLM``'s model with LoRA adapters (``peft.get_peft_model``): every base
    weight is frozen (``requires_grad=False``), the adapters ``lora_A``/``lora_B`` train.
    Returns a new ``HFCausalLM`` around the PEFT model (hooks and hidden states work the same)."""
    from trustlab.lm.hf_backend import HFCausalLM

    if not isinstance(lora, LoraConfig):
        lora = LoraConfig.from_dict(lora, where="model.lora")
    try:
        import peft
    except ImportError as exc:
        raise ConfigError(f"model.lora.enabled = true needs peft: pip install '.[hf]' ({exc})") from None
    hf = model.hf if isinstance(model, HFCausalLM) else model
    targets = lora_target_modules(hf, lora)
    conv1d = any(type(m).__name__ == "Conv1D" and n.rsplit(".", 1)[-1] in targets for n, m in hf.named_modules())
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight transposed
    )
    return HFCausalLM(peft.get_peft_model(hf, config))


# ---------------------------------------------------------------------------------------------
# reporting and saving


def model_summary(model) -> dict[str, Any]:
    """Numbers a report records about the model: layers, width, context, parameter counts."""
    from trustlab.lm.generation import context_length
    from trustlab.lm.hooks import decoder_blocks

    params = list(model.parameters())
    config = getattr(model, "config", None)
    width = getattr(config, "n_embd", None) or getattr(config, "hidden_size", None)
    out = {
        "backend": "hf" if hasattr(model, "hf") else "tiny",
        "n_layer": len(decoder_blocks(model)),
        "width": int(width) if width else None,
        "context_length": context_length(model),
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "dtype": str(params[0].dtype).replace("torch.", "") if params else None,
    }
    peft_config = getattr(getattr(model, "hf", None), "peft_config", None)
    if peft_config:
        c = next(iter(peft_config.values()))
        out["lora"] = {
            "r": c.r, "alpha": c.lora_alpha, "dropout": c.lora_dropout, "target_modules": sorted(c.target_modules)
        }
    return out


def save_model_and_tokenizer(model, tokenizer, directory, metadata: dict[str, Any] | None = None) -> Path:
    """Write either kind: our GPT with ``checkpoint.save_model`` (+ tokenizer); an HF model with
    ``save_pretrained`` (a LoRA model saves its adapters, which name their base model), plus
    ``trustlab.json`` with ``metadata``. ``load_model_and_tokenizer`` reads both back (tiny:
    ``model.path``; hf: ``model.name_or_path`` = the directory)."""
    directory = Path(directory)
    if not hasattr(model, "hf"):
        from trustlab.lm.checkpoint import save_model

        return save_model(model, directory, tokenizer, metadata=metadata)
    from trustlab.core.io import write_json
    from trustlab.lm.hf_backend import save_hf_model

    directory.mkdir(parents=True, exist_ok=True)
    save_hf_model(model, directory, tokenizer)
    info = {"format": "trustlab-hf", "chat_template": getattr(tokenizer, "chat_template", False),
            "prompt_suffix": getattr(tokenizer, "prompt_suffix", ""), "metadata": metadata or {}}  # fmt: skip
    write_json(directory / "trustlab.json", info)
    return directory
