"""Model directories and training checkpoints, with no pickled Python objects.

A model directory holds ``model.safetensors`` (weights; tied weights stored once),
``config.json`` (the ``GPTConfig`` plus free-form metadata) and, when given, the tokenizer's
``tokenizer.json``. ``load_model`` rebuilds the GPT (custom attention/norm/FFN variants must be
registered first: import the family module that registers them).

A training checkpoint is a model directory plus ``training_state.pt``: optimizer and LR
scheduler ``state_dict``s, the step, the token count, the RNG state and the curves — plain
tensors and containers, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trustlab.core.io import atomic_write_bytes, read_json, write_json
from trustlab.lm.gpt import GPT, GPTConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "training_state.pt"
FORMAT = "trustlab-gpt"


def _unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tensors that share storage (tied weights) kept once, under the
    first name."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def save_model(
    model: GPT, directory: str | os.PathLike, tokenizer=None, *, metadata: dict[str, Any] | None = None
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / MODEL_FILE, st_save(_unique_state(model), metadata={"format": FORMAT}))
    info = {"format": FORMAT, "config": model.config.to_dict(), "metadata": metadata or {}}
    write_json(directory / CONFIG_FILE, info)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def read_config(directory: str | os.PathLike) -> GPTConfig:
    info = read_json(Path(directory) / CONFIG_FILE)
    if info.get("format") != FORMAT:
        raise ValueError(f"{directory}/{CONFIG_FILE} is not a {FORMAT} model (format={info.get('format')!r})")
    return GPTConfig.from_dict(info["config"])


def load_weights(model: GPT, directory: str | os.PathLike) -> GPT:
    """Load ``model.safetensors`` into an existing model of the same architecture."""
    path = Path(directory) / MODEL_FILE
    try:
        state = st_load(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: no model weights in {directory}") from None
    except Exception as exc:  # safetensors raises its own error types for a truncated or corrupt file
        raise ValueError(f"{path} cannot be read as safetensors ({type(exc).__name__}: {exc}); "
                         f"the file is truncated or corrupt: regenerate it (dvc repro)") from exc
    aliases = set(model.state_dict()) - set(_unique_state(model))  # tied weights, stored once
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - aliases:
        raise ValueError(
            f"weights in {directory} do not fit the model: "
            f"missing={sorted(set(missing) - aliases)}, unexpected={unexpected}"
        )
    return model


def load_model(
    directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    model = GPT(read_config(directory))
    load_weights(model, directory)
    model.to(device=device, dtype=dtype)
    return model.eval()


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """-> (model, tokenizer) from a directory written by ``save_model(..., tokenizer)``."""
    from trustlab.lm.tokenizer import load_tokenizer

    return load_model(directory, device), load_tokenizer(directory)


# ---------------------------------------------------------------------------------------------
# training checkpoints


def save_training_state(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(Path(directory) / TRAINING_STATE_FILE, buf.getvalue())


def load_training_state(directory: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(directory) / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)


def has_training_state(directory: str | os.PathLike) -> bool:
    return (Path(directory) / TRAINING_STATE_FILE).exists()
