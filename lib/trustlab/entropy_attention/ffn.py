"""Feed-forward variants of the entropy-attention family (registered in ``trustlab.lm.gpt``).

* ``scfu`` — ScFuFFN: the FFN without nonlinearity fused into a single d x d matrix, joined to
  the residual stream with per-layer learnable scalars, ``X_out = beta * X_sa + FFN(X_sa) / alpha``
  (alpha = beta = 1 at init, never weight-decayed). Requires ``activation = "none"``.
* ``mlp_wn`` — the MLP with weight-normalised linears (``w = g v / ||v||`` per output row;
  initialised so that ``w = v ~ N(0, std)`` as in the plain MLP; the gains g are not decayed).
* ``mlp_sn`` — the MLP with spectral-normalised linears (``w = W / sigma_max(W)``, one power
  iteration per training forward).

Weight and spectral normalisation are the LayerNorm alternatives of the paper's Table 1
setting (a normalisation inside the FFN instead of on the residual stream).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrizations

from trustlab.lm.gpt import FFN, MLP, no_weight_decay, register_ffn


@register_ffn("scfu")
class ScFuFFN(FFN):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        if config.activation != "none":
            raise ValueError(
                f"ffn = 'scfu' fuses a linear FFN into one matrix: activation must be 'none', not {config.activation!r}"
            )
        self.fused = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.alpha = no_weight_decay(nn.Parameter(torch.ones(())))
        self.beta = no_weight_decay(nn.Parameter(torch.ones(())))
        self.dropout = nn.Dropout(config.dropout)

    def init_weights(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(1.0)
            self.beta.fill_(1.0)

    def forward(self, h):
        return self.dropout(self.fused(h))

    def residual(self, x, h):
        return self.beta * x + self(h) / self.alpha


class _NormedMLP(MLP):
    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self._stds = {"c_fc": 0.02, "c_proj": 0.02 / math.sqrt(2 * config.n_layer)}
        for name in ("c_fc", "c_proj"):
            self._parametrize(getattr(self, name))

    def _parametrize(self, linear: nn.Linear) -> None:
        raise NotImplementedError

    def init_weights(self) -> None:
        with torch.no_grad():
            for name, std in self._stds.items():
                linear = getattr(self, name)
                self._init_linear(linear, std)
                if linear.bias is not None:
                    linear.bias.zero_()


@register_ffn("mlp_wn")
class WeightNormMLP(_NormedMLP):
    def _parametrize(self, linear: nn.Linear) -> None:
        parametrizations.weight_norm(linear, name="weight", dim=0)
        no_weight_decay(linear.parametrizations.weight.original0)  # the gains g

    @staticmethod
    def _init_linear(linear: nn.Linear, std: float) -> None:
        v = torch.randn_like(linear.parametrizations.weight.original1) * std
        linear.parametrizations.weight.original1.copy_(v)
        linear.parametrizations.weight.original0.copy_(v.norm(dim=1, keepdim=True))


@register_ffn("mlp_sn")
class SpectralNormMLP(_NormedMLP):
    def _parametrize(self, linear: nn.Linear) -> None:
        parametrizations.spectral_norm(linear, name="weight")

    @staticmethod
    def _init_linear(linear: nn.Linear, std: float) -> None:
        linear.parametrizations.weight.original.normal_(0.0, std)
