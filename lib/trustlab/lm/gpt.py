"""A small GPT (nanoGPT style) with seams for the method families.

One file, one concept: a decoder-only transformer with learned position embeddings and a
tied language-model head. Three parts are looked up by name in registries so that a family
can add its own variant without editing this file:

* attention kernels  (``register_attention``): ``cls(config, layer_idx)``; given per-head
  ``q, k, v`` and a boolean "may attend" mask, return ``(out, probs | None)``.
* norms              (``register_norm``):      ``cls(config)`` -> an ``nn.Module`` on (B, T, C).
* feed-forward nets  (``register_ffn``):       ``cls(config, layer_idx)``; ``forward(h)`` is the
  transform and ``residual(x, h)`` combines it with the residual stream (default ``x + ffn(h)``).

Conventions
-----------
* ``attention_mask`` is a (B, S) 0/1 key-padding mask over the keys (past + current tokens).
  Left padding works: position ids are computed from it (``cumsum - 1``).
* The mask given to kernels is a boolean (B, 1, T, S) tensor, True where query i may attend
  to key j (causal AND key is not padding). A padding query may attend to itself only, so no
  row is empty and softmax never sees an all-masked row.
* ``hidden_states[0]`` is the embedding output (after dropout), ``hidden_states[i]`` the output
  of block i (before the final norm). ``attentions[i]`` is layer i's (B, H, T, S) probabilities.
* ``Block.forward`` returns only the new hidden state tensor, so a forward hook on
  ``model.blocks[i]`` can replace it; the KV cache and attention probabilities travel in the
  ``cache`` / ``attentions`` arguments instead.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.core.registry import Registry

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 128  # maximum sequence length (learned position embeddings)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # embedding, attention-probability and residual dropout
    bias: bool = True  # biases in Linear layers and LayerNorm
    attention: str = "softmax"  # name in the attention registry
    norm: str = "layernorm"  # per-block norms: "layernorm", "rmsnorm", "none", ...
    final_norm: bool = True  # norm after the last block (same registry entry as ``norm``,
    # or "layernorm" when norm == "none"; see ``final_norm_name``)
    final_norm_name: str | None = None  # override the final norm's registry name
    activation: str = "gelu"  # "gelu", "relu", "none"
    ffn: str = "mlp"  # name in the FFN registry
    mlp_ratio: float = 4.0
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    ffn_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd = {self.n_embd} must be divisible by n_head = {self.n_head}")
        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} = {getattr(self, key)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout = {self.dropout} must be in [0, 1)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation = {self.activation!r}: choose one of {sorted(ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# registries

class PartRegistry(Registry):
    """A :class:`~trustlab.core.registry.Registry` of model parts. Re-running a notebook cell or
    reloading a module registers the same definition again (a new object, same module and
    name): that replaces the entry instead of failing. A name that is not registered is a
    ``KeyError`` that says which module to import."""

    def register(self, name: str):
        def decorator(obj):
            prev = self._items.get(name)
            same = prev is not None and (prev.__module__, prev.__qualname__) == (obj.__module__, obj.__qualname__)
            if prev is not None and prev is not obj and not same:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {prev!r})")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str):
        if name not in self._items:
            raise KeyError(
                f"{self.kind} {name!r} is not registered; registered: {sorted(self._items)}. "
                "Import the module that registers it before building or loading the model."
            )
        return self._items[name]


ATTENTION = PartRegistry("attention kernel")
NORMS = PartRegistry("norm")
FFNS = PartRegistry("ffn")
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": lambda: nn.GELU(),
    "relu": lambda: nn.ReLU(),
    "none": lambda: nn.Identity(),
}


def register_attention(name: str):
    """Decorator: ``@register_attention("softplus") class SoftplusKernel(AttentionKernel): ...``"""
    return ATTENTION.register(name)


def register_norm(name: str):
    """Decorator for a norm factory ``cls(config) -> nn.Module``."""
    return NORMS.register(name)


def register_ffn(name: str):
    """Decorator for a feed-forward module ``cls(config, layer_idx)`` (subclass :class:`FFN`)."""
    return FFNS.register(name)


def build_attention_kernel(config: GPTConfig, layer_idx: int) -> nn.Module:
    return ATTENTION.get(config.attention)(config, layer_idx)


def build_norm(config: GPTConfig, name: str | None = None) -> nn.Module:
    return NORMS.get(name or config.norm)(config)


def build_ffn(config: GPTConfig, layer_idx: int) -> nn.Module:
    return FFNS.get(config.ffn)(config, layer_idx)


def no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Flag a parameter so that ``configure_optimizers`` never decays it (thresholds,
    temperatures, scalars). Returns the parameter: ``self.t = no_weight_decay(nn.Parameter(..))``."""
    param._no_weight_decay = True
    return param


# ---------------------------------------------------------------------------------------------
# norms


@register_norm("layernorm")
def _layernorm(config: GPTConfig) -> nn.Module:
    return nn.LayerNorm(config.n_embd, bias=config.bias)


@register_norm("rmsnorm")
def _rmsnorm(config: GPTConfig) -> nn.Module:
    return nn.RMSNorm(config.n_embd)


@register_norm("none")
def _no_norm(config: GPTConfig) -> nn.Module:
    return nn.Identity()


# ---------------------------------------------------------------------------------------------
# attention


class AttentionKernel(nn.Module):
    """Base class of attention kernels: turns per-head q, k, v into per-head outputs.

    forward(q, k, v, mask, need_weights=False, *, positions=None, is_causal=False)
        q: (B, H, T, D), k and v: (B, H, S, D) with S = past + T.
        mask: bool (B, 1, T, S), True where the query may attend to the key.
        need_weights: return the (B, H, T, S) probabilities (masked entries exactly 0),
            differentiable; else return ``None`` for them.
        positions: (B, T) absolute position of each query (for position-dependent kernels).
        is_causal: a hint that ``mask`` is the plain lower-triangular mask (no padding, no
            cache), so a fused causal kernel may be used. ``mask`` is always valid anyway.
    returns (out (B, H, T, D), probs or None). Attention dropout is the kernel's job (only
    when ``self.training``); returned probabilities are before dropout.
    """

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout

    def forward(self, q, k, v, mask, need_weights=False, *, positions=None, is_causal=False):
        raise NotImplementedError


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where ``mask`` is False gets the dtype's minimum, so its
    probability is exactly 0 (every row has at least one allowed key)."""
    scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1)


@register_attention("softmax")
class SoftmaxAttention(AttentionKernel):
    """Scaled dot-product softmax attention. Fast path: ``F.scaled_dot_product_attention``
    when probabilities are not needed; explicit path otherwise (same maths)."""

    def forward(self, q, k, v, mask, need_weights=False, *, positions=None, is_causal=False):
        p_drop = self.dropout if self.training else 0.0
        if not need_weights:
            if is_causal:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
            return out, None
        scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # scale the smaller tensor
        probs = masked_softmax(scores, mask)
        attn = F.dropout(probs, p_drop, training=True) if p_drop > 0 else probs
        return attn @ v, probs


class KVCache:
    """Keys and values of every layer, appended to as tokens are fed: ``keys[i]`` is
    (B, H, S, D). Passed to and returned by ``GPT.forward`` as ``past_key_values``."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:  # number of cached positions
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    def get_seq_length(self) -> int:
        return len(self)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        if self.keys[layer_idx] is not None:
            k = torch.cat([self.keys[layer_idx], k], dim=2)
            v = torch.cat([self.values[layer_idx], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v

    def select(self, index: torch.Tensor) -> "KVCache":
        """Keep only the batch rows in ``index`` (in place); returns self."""
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        return self


class CausalSelfAttention(nn.Module):
    """q/k/v projection, a pluggable kernel, output projection."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.kernel = build_attention_kernel(config, layer_idx)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask, positions, cache=None, attentions=None, is_causal=False):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        need_weights = attentions is not None
        y, probs = self.kernel(q, k, v, mask, need_weights, positions=positions, is_causal=is_causal)
        if need_weights:
            attentions.append(probs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


# ---------------------------------------------------------------------------------------------
# feed-forward


class FFN(nn.Module):
    """Base class of feed-forward modules. ``forward(h)`` transforms the normed stream;
    ``residual(x, h)`` decides how the result joins the residual stream ``x``."""

    def residual(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return x + self(h)


@register_ffn("mlp")
class MLP(FFN):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h):
        return self.dropout(self.c_proj(self.act(self.c_fc(h))))


# ---------------------------------------------------------------------------------------------
# block and model


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.ln_1 = build_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = build_norm(config)
        self.ffn = build_ffn(config, layer_idx)

    def forward(self, x, mask, positions, cache=None, attentions=None, is_causal=False):
        """Returns the new hidden state (B, T, C). Appends this layer's keys/values to
        ``cache`` and its attention probabilities to the list ``attentions`` when given."""
        x = x + self.attn(self.ln_1(x), mask, positions, cache, attentions, is_causal)
        return self.ffn.residual(x, self.ln_2(x))


@dataclass
class GPTOutput:
    logits: torch.Tensor  # (B, T, V)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # n_layer + 1 tensors (B, T, C)
    attentions: tuple[torch.Tensor, ...] | None = None  # n_layer tensors (B, H, T, S)
    past_key_values: KVCache | None = None


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) 0/1 mask -> (B, S) positions counting only real tokens (left padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def build_attention_mask(attention_mask: torch.Tensor | None, B: int, T: int, past: int, device) -> torch.Tensor:
    """Boolean (B, 1, T, S) "may attend" mask: causal AND key not padding; a padding query
    may attend to itself so that no row is empty."""
    S = past + T
    q_idx = torch.arange(past, S, device=device)[:, None]
    k_idx = torch.arange(S, device=device)[None, :]
    causal = k_idx <= q_idx  # (T, S)
    if attention_mask is None:
        return causal.expand(B, 1, T, S)
    keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    return causal & (keys | (k_idx == q_idx))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        if config.final_norm:
            name = config.final_norm_name or (config.norm if config.norm != "none" else "layernorm")
            self.ln_f = build_norm(config, name)
        else:
            self.ln_f = nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.reset_parameters()

    # -- initialisation ------------------------------------------------------------------
    def reset_parameters(self):
        """nanoGPT init: N(0, 0.02) for Linear/Embedding weights, zero biases, residual
        projections (``c_proj``) scaled by 1/sqrt(2 n_layer). Parametrized modules (weight or
        spectral norm) are skipped; any submodule with an ``init_weights()`` method gets it
        called afterwards, for its own parameters."""
        from torch.nn.utils import parametrize

        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and not parametrize.is_parametrized(module):
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 0.02
                torch.nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    torch.nn.init.zeros_(module.bias)
        for module in self.modules():
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()

    # -- bookkeeping ---------------------------------------------------------------------
    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once); position embeddings excluded by default."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wpe.weight.numel()
        return n

    # -- forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> GPTOutput:
        B, T = input_ids.shape
        device = input_ids.device
        past = len(past_key_values) if past_key_values is not None else 0
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != (B, past + T) = {(B, past + T)}")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = position_ids_from_mask(attention_mask)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=device).expand(B, T)
        if position_ids.numel() and int(position_ids.max()) >= self.config.block_size:
            raise ValueError(f"position {int(position_ids.max())} >= block_size {self.config.block_size}")

        cache = past_key_values
        if use_cache and cache is None:
            cache = KVCache(self.config.n_layer)
        is_causal = attention_mask is None and past == 0
        mask = build_attention_mask(attention_mask, B, T, past, device)

        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        hidden = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for block in self.blocks:
            x = block(x, mask, position_ids, cache if use_cache else None, attentions, is_causal)
            if hidden is not None:
                hidden.append(x)
        logits = self.lm_head(self.ln_f(x))
        return GPTOutput(
            logits=logits,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
            past_key_values=cache if use_cache else None,
        )

    # -- optimisation --------------------------------------------------------------------
    def configure_optimizers(
        self,
        weight_decay: float = 0.1,
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        no_decay_names: tuple[str, ...] | list[str] = (),
    ) -> torch.optim.AdamW:
        """AdamW with two groups (nanoGPT): decay every >= 2-D weight (matmuls, embeddings),
        not biases / norm gains / scalars; never decay a parameter flagged with
        :func:`no_weight_decay` or whose name matches a pattern in ``no_decay_names``
        (fnmatch, e.g. ``"*.theta"``)."""
        return configure_adamw(self, weight_decay, lr, betas, no_decay_names)

    def param_groups_summary(self, no_decay_names=()) -> dict[str, list[str]]:
        """Which parameter names ``configure_optimizers`` decays (for logging and tests)."""
        out = {"decay": [], "no_decay": []}
        for name, p in self.named_parameters():
            out["decay" if _is_decayed(name, p, no_decay_names) else "no_decay"].append(name)
        return out


def _is_decayed(name: str, p: nn.Parameter, no_decay_names) -> bool:
    flagged = getattr(p, "_no_weight_decay", False) or any(fnmatch.fnmatchcase(name, pat) for pat in no_decay_names)
    return p.dim() >= 2 and not flagged


def configure_adamw(
    module: nn.Module,
    weight_decay: float = 0.1,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.9, 0.95),
    no_decay_names: tuple[str, ...] | list[str] = (),
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of any module (so a PEFT model trains only its
    adapters), grouped as ``GPT.configure_optimizers`` describes."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if _is_decayed(name, p, no_decay_names) else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
