"""Small classifiers for the calibration experiments.

:class:`MLP` is deliberately small (one or two hidden layers) so that, trained for a short budget
on a few hundred digits, it makes enough test errors (accuracy roughly 85-93%) to measure
calibration, and one training run takes about a second on a CPU core.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLP", "build_model"]


class MLP(nn.Module):
    """``in_dim -> hidden (x depth, ReLU) -> out_dim``.

    ``forward_features`` also returns the last hidden activations (the "last feature map" the
    Bias loss needs); ``forward`` returns the logits only. ``out_dim = 1`` gives one logit for
    binary tasks.
    """

    def __init__(self, in_dim: int = 64, hidden: int = 32, out_dim: int = 10, depth: int = 1, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, out_dim)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x.flatten(1))
        return self.head(h), h

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def build_model(in_dim: int, out_dim: int, hidden: int = 32, depth: int = 1, dropout: float = 0.0) -> MLP:
    return MLP(in_dim=in_dim, hidden=hidden, out_dim=out_dim, depth=depth, dropout=dropout)
