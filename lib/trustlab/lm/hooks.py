"""Hook helpers that work the same on our GPT and on a wrapped ``transformers`` model.

* ``decoder_blocks(model)``: the list of transformer blocks (``model.blocks`` for our GPT,
  ``transformer.h`` for GPT-2, ``model.layers`` for Llama/Qwen/Mistral, also under a PEFT
  wrapper). Discovered by attribute names only: this module never imports transformers.
* ``input_embeddings(model)``: the token-embedding module (NEFTune hooks its output).
* ``add_block_hook(block, fn)``: ``fn(hidden) -> new hidden | None`` on a block's output,
  whether the block returns a tensor (ours, transformers >= 5) or a tuple (older models).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

_BLOCK_PATHS = ("blocks", "transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers", "layers")


def _get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip wrappers: a PEFT model (``base_model.model``) and our ``HFCausalLM`` (``.hf``)."""
    for _ in range(4):
        if hasattr(model, "hf") and isinstance(model.hf, nn.Module):
            model = model.hf
        elif type(model).__name__.startswith("Peft") and hasattr(model, "base_model"):
            model = model.base_model
            if hasattr(model, "model") and isinstance(model.model, nn.Module):
                model = model.model
        else:
            break
    return model


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    inner = _unwrap(model)
    for path in _BLOCK_PATHS:
        blocks = _get_path(inner, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return list(blocks)
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}; tried {', '.join(_BLOCK_PATHS)}")


def input_embeddings(model: nn.Module) -> nn.Module:
    inner = _unwrap(model)
    if hasattr(inner, "wte") and not hasattr(inner, "get_input_embeddings"):
        return inner.wte
    return inner.get_input_embeddings()


def add_block_hook(block: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register a forward hook that passes the block's output hidden state (B, T, C) to
    ``fn``; if ``fn`` returns a tensor it replaces the output. Returns the hook handle
    (``handle.remove()`` to detach)."""

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            return fn(output)
        new = fn(output[0])
        if new is None:
            return None
        return (new, *output[1:])

    return block.register_forward_hook(hook)
