"""Architecture variants of the entropy-attention family, by name (no torch import: the params
config validates against this table).

Names follow the paper's Table 1: ``SM`` softmax attention, ``LN`` per-block LayerNorm, ``G`` /
``R`` GELU / ReLU in the FFN (neither: a linear FFN), ``ScFuFFN`` the scaled, fused linear FFN,
``SM(t)`` learnable per-head per-position temperatures, ``EReg(...)`` the entropy regularizer.
The final LayerNorm is kept by default (as in the public code); append ``-noFLN`` to any name
to remove it, e.g. ``EReg(SM(t)+ScFuFFN)-noFLN``.

=========================  =====  ====  ========  ==========  =====
name                       norm   act   ffn       attention   EReg
=========================  =====  ====  ========  ==========  =====
SM+LN+G  (baseline GPT)    LN     gelu  mlp       softmax
SM+LN+R                    LN     relu  mlp       softmax
SM+LN                      LN     none  mlp       softmax
SM+G                       -      gelu  mlp       softmax
SM+R                       -      relu  mlp       softmax
SM                         -      none  mlp       softmax
SM+ScFuFFN                 -      none  scfu      softmax
SM(t)+ScFuFFN              -      none  scfu      softmax_t
EReg(SM(t)+ScFuFFN)        -      none  scfu      softmax_t   yes
EReg(SM+ScFuFFN)           -      none  scfu      softmax     yes
EReg(SM+G)                 -      gelu  mlp       softmax     yes
SM+G+WN / SM+G+SN          -      gelu  mlp_wn /  softmax
                                        mlp_sn
SM(t)+LN+G                 LN     gelu  mlp       softmax_t
SM(pa)+LN+G                LN     gelu  mlp       softmax_pa  (Selective Attention temperature)
Softplus / Softplus+RW     LN     gelu  mlp       softplus    (LSSA / with re-weighting)
=========================  =====  ====  ========  ==========  =====
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

NO_FINAL_NORM = "-noFLN"


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    norm: str = "none"  # per-block norm registry name
    activation: str = "none"
    ffn: str = "mlp"
    attention: str = "softmax"
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    final_norm: bool = True
    entropy_reg: bool = False

    @property
    def has_layernorm(self) -> bool:
        return self.norm != "none"

    @property
    def has_temperature(self) -> bool:
        return self.attention == "softmax_t"

    def gpt_fields(self) -> dict[str, Any]:
        """The ``GPTConfig`` fields this variant sets."""
        return {
            "norm": self.norm,
            "activation": self.activation,
            "ffn": self.ffn,
            "attention": self.attention,
            "attention_kwargs": dict(self.attention_kwargs),
            "final_norm": self.final_norm,
        }


def _v(name: str, label: str, **kw: Any) -> Variant:
    return Variant(name, label, **kw)


_BASE: tuple[Variant, ...] = (
    _v("SM+LN+G", "baseline GPT: LayerNorm + GELU", norm="layernorm", activation="gelu"),
    _v("SM+LN+R", "LayerNorm + ReLU", norm="layernorm", activation="relu"),
    _v("SM+LN", "LayerNorm, linear FFN", norm="layernorm"),
    _v("SM+G", "no LayerNorm, GELU", activation="gelu"),
    _v("SM+R", "no LayerNorm, ReLU", activation="relu"),
    _v("SM", "no LayerNorm, linear FFN"),
    _v("SM+ScFuFFN", "no LayerNorm, scaled fused linear FFN", ffn="scfu"),
    _v("SM(t)+ScFuFFN", "+ learnable temperatures", ffn="scfu", attention="softmax_t"),
    _v("EReg(SM(t)+ScFuFFN)", "+ temperatures + entropy regularizer", ffn="scfu", attention="softmax_t", entropy_reg=True),
    _v("EReg(SM+ScFuFFN)", "ScFuFFN + entropy regularizer", ffn="scfu", entropy_reg=True),
    _v("EReg(SM+G)", "no LayerNorm, GELU + entropy regularizer", activation="gelu", entropy_reg=True),
    _v("SM+G+WN", "no LayerNorm, GELU FFN with weight-normalised linears", activation="gelu", ffn="mlp_wn"),
    _v("SM+G+SN", "no LayerNorm, GELU FFN with spectral-normalised linears", activation="gelu", ffn="mlp_sn"),
    _v("SM(t)+LN+G", "baseline + learnable temperatures", norm="layernorm", activation="gelu", attention="softmax_t"),
    _v("SM(pa)+LN+G", "baseline + Selective Attention's position-aware temperature", norm="layernorm",
       activation="gelu", attention="softmax_pa"),
    _v("Softplus", "LSSA softplus attention (LayerNorm + GELU)", norm="layernorm", activation="gelu", attention="softplus"),
    _v("Softplus+RW", "LSSA with re-weighting (LayerNorm + GELU)", norm="layernorm", activation="gelu",
       attention="softplus", attention_kwargs={"softplus_reweight": True}),
)

VARIANTS: dict[str, Variant] = {v.name: v for v in _BASE}

# The default run trains the pairs the main claims compare (LayerNorm vs none, ReLU vs GELU
# without LayerNorm, with vs without the regularizer), so that every run can train long enough
# within the stage's time budget; every other row of the table stays runnable through
# ``params.yaml``.
DEFAULT_VARIANTS: list[str] = [
    "SM+LN+G",
    "SM+G",
    "SM+R",
    "SM(t)+ScFuFFN",
    "EReg(SM(t)+ScFuFFN)",
]


def variant_names() -> list[str]:
    """Every valid name: the table's, and each with the ``-noFLN`` suffix."""
    return [*VARIANTS, *(n + NO_FINAL_NORM for n in VARIANTS)]


def is_variant(name: str) -> bool:
    base = name[: -len(NO_FINAL_NORM)] if name.endswith(NO_FINAL_NORM) else name
    return base in VARIANTS


def unknown_variant_message(name: str) -> str:
    return (
        f"unknown entropy-attention variant {name!r}; allowed variants are {', '.join(VARIANTS)}, "
        f"each optionally with the suffix {NO_FINAL_NORM!r} (no final LayerNorm)"
    )


def get_variant(name: str) -> Variant:
    """The variant called ``name`` (``<base>-noFLN``: the base without the final LayerNorm)."""
    if not isinstance(name, str) or not is_variant(name):
        raise ValueError(unknown_variant_message(name))
    if name.endswith(NO_FINAL_NORM):
        base = VARIANTS[name[: -len(NO_FINAL_NORM)]]
        return dataclasses.replace(base, name=name, label=base.label + ", no final LayerNorm", final_norm=False)
    return VARIANTS[name]
