"""Post-hoc calibrators fitted on held-out (validation) logits. Both divide the logits by a
positive temperature, so neither changes the argmax (the predictions, hence accuracy).

Every calibrator is a class registered in :data:`CALIBRATORS` under its params.yaml name
(``calibration.calibrators``), with one interface:

* ``from_config(cfg, seed)``: build it from the ``calibration`` section;
* ``fit(logits, labels, views=None)``: fit on validation logits (``views``: the model's
  logits on transformed copies of the same inputs, for calibrators with ``needs_views``);
* ``calibrator(logits, views=None)``: the calibrated logits;
* ``mean_temperature(logits, views=None)``: the (mean) temperature it applies, for the tables.

* :class:`TemperatureScaling` (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
  temperature T for all inputs, fitted by LBFGS on validation NLL from T = 1. We optimise
  ``log T`` so T stays positive.
* :class:`CACalibrator` (Liu et al. 2024, "Optimizing Calibration by Gaining Aware of Prediction
  Correctness"): a per-sample temperature ``T(f) = clamp(MLP(f), 0.1, 10)`` from features of
  transformed views of the input, trained with a class-balanced top-label Brier loss that is
  aware of whether each prediction is correct.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.core.registry import Registry

__all__ = ["CALIBRATORS", "TemperatureScaling", "CACalibrator", "ca_features", "ca_loss"]

CALIBRATORS: Registry[type[nn.Module]] = Registry("calibrator")


def _as_tensor(x, dtype=torch.float32) -> Tensor:
    return x.detach().to(dtype) if isinstance(x, Tensor) else torch.as_tensor(x, dtype=dtype)


@CALIBRATORS.register("ts")
class TemperatureScaling(nn.Module):
    """Temperature scaling ``z / T``, one T > 0 minimising validation NLL (Guo et al. 2017).

    ``fit`` runs LBFGS (strong-Wolfe line search) on ``log T`` starting at ``log T = 0``.
    """

    needs_views: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: Any, seed: int = 0) -> TemperatureScaling:
        return cls(max_iter=cfg.ts_max_iter)

    def __init__(self, max_iter: int = 100, lr: float = 0.5):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.max_iter = int(max_iter)
        self.lr = float(lr)

    @property
    def temperature(self) -> float:
        return float(self.log_t.detach().exp())

    def fit(self, logits, labels, views: Sequence | None = None) -> TemperatureScaling:
        z = _as_tensor(logits, torch.float64)
        y = _as_tensor(labels, torch.long)
        with torch.no_grad():
            self.log_t.zero_()
        opt = torch.optim.LBFGS([self.log_t], lr=self.lr, max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z / self.log_t.exp(), y)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return self

    def mean_temperature(self, logits=None, views: Sequence | None = None) -> float:
        return self.temperature

    def forward(self, logits: Tensor, views: Sequence | None = None) -> Tensor:
        z = _as_tensor(logits)
        return z / self.log_t.detach().exp().to(z.dtype)


def ca_features(logits: Tensor, view_logits: Sequence[Tensor], top_k: int = 4) -> Tensor:
    """CA input features: the indices of the top-``top_k`` classes of the original view's logits,
    and for each transformed view the softmax probabilities at those indices, concatenated
    view by view -> (N, len(view_logits) * top_k) (12 for 3 views and top-4)."""
    z = _as_tensor(logits)
    top = z.topk(top_k, dim=-1).indices
    return torch.cat([_as_tensor(v).softmax(dim=-1).gather(1, top) for v in view_logits], dim=-1)


def ca_loss(conf: Tensor, correct: Tensor) -> Tensor:
    """Correctness-aware, class-balanced top-label Brier (the released CA loss)::

        sum_i w_i (conf_i - c_i)^2 / sum_i w_i,  w_i = 1 - acc (correct i), acc (wrong i)

    with ``acc`` the batch accuracy (so correct and wrong samples weigh the same in total). A
    batch that is all correct or all wrong has sum w = 0; then it is the plain mean.
    """
    c = correct.to(conf.dtype)
    acc = c.mean()
    w = torch.where(c > 0.5, 1.0 - acc, acc)
    sq = (conf - c) ** 2
    total = w.sum()
    if total <= 0:
        return sq.mean()
    return (w * sq).sum() / total


@CALIBRATORS.register("ca")
class CACalibrator(nn.Module):
    """Correctness-aware per-sample temperature ``z / T(f)``, ``T(f) = clamp(MLP(f), t_min, t_max)`` (Liu et al. 2024).

    MLP ``n_views*top_k -> hidden -> 1`` with ReLU (12 -> 5 -> 1) on the features of
    :func:`ca_features`, trained with :func:`ca_loss`. The output layer starts with zero
    weights and bias ``init_temperature`` (default 1, the identity), because outside
    [t_min, t_max] the clamp has no gradient and a random initialisation (as in the released
    code) can start dead. With ``init_from_ts`` the bias starts instead at the temperature-
    scaling solution on the same validation logits (clamped into [t_min, t_max]).

    The paper trains with Adam, lr 1e-4, 10 epochs, batch 1000 on a large validation set, i.e.
    a short schedule. That schedule matters: when the features cannot separate correct from
    wrong predictions, the class-balanced loss is minimised by a confidence of 0.5, so a fully
    optimised CA calibrator is underconfident (on digits with lr 1e-2 x 300 epochs: ID ECE 0.12-0.22
    against 0.02-0.04 for TS). With a few hundred validation digits, lr 1e-4 x 10 full-batch steps
    does not move T at all, so the defaults here are lr 1e-3 x 100 full-batch epochs: about the
    paper's total parameter movement (~500 Adam steps at 1e-4), and it converges to a
    TS-like fit in distribution. Both are arguments (``calibration.ca.lr`` / ``epochs``).
    """

    needs_views: ClassVar[bool] = True

    @classmethod
    def from_config(cls, cfg: Any, seed: int = 0) -> CACalibrator:
        c = cfg.ca
        return cls(top_k=c.top_k, hidden=c.hidden, t_min=c.t_min, t_max=c.t_max, lr=c.lr, epochs=c.epochs,
                   batch_size=c.batch_size, seed=seed, init_from_ts=c.init == "ts", ts_max_iter=cfg.ts_max_iter)

    def __init__(
        self,
        n_views: int = 3,
        top_k: int = 4,
        hidden: int = 5,
        t_min: float = 0.1,
        t_max: float = 10.0,
        lr: float = 1e-3,
        epochs: int = 100,
        batch_size: int = 1000,
        weight_decay: float = 0.0,
        seed: int = 0,
        init_temperature: float = 1.0,
        init_from_ts: bool = False,
        ts_max_iter: int = 100,
    ):
        super().__init__()
        if not t_min <= init_temperature <= t_max:
            raise ValueError(f"init_temperature = {init_temperature} must lie in [t_min, t_max] = [{t_min}, {t_max}]")
        self.top_k = top_k
        self.n_views = n_views
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.lr, self.epochs, self.batch_size = float(lr), int(epochs), int(batch_size)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.init_from_ts = bool(init_from_ts)
        self.ts_max_iter = int(ts_max_iter)
        g = torch.Generator().manual_seed(self.seed)
        self.net = nn.Sequential(nn.Linear(n_views * top_k, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():
            first, last = self.net[0], self.net[2]
            bound = 1.0 / (n_views * top_k) ** 0.5
            first.weight.uniform_(-bound, bound, generator=g)
            first.bias.uniform_(-bound, bound, generator=g)
            last.weight.zero_()
            last.bias.fill_(float(init_temperature))
        self.history: list[float] = []

    def features(self, logits, view_logits: Sequence) -> Tensor:
        if len(view_logits) != self.n_views:
            raise ValueError(f"CA expects {self.n_views} transformed views, got {len(view_logits)}")
        return ca_features(logits, view_logits, self.top_k)

    def temperatures_from_features(self, f: Tensor) -> Tensor:
        return self.net(f).squeeze(-1).clamp(self.t_min, self.t_max)

    def temperatures(self, logits, view_logits: Sequence) -> Tensor:
        with torch.no_grad():
            return self.temperatures_from_features(self.features(logits, view_logits))

    def mean_temperature(self, logits, views: Sequence) -> float:
        return float(self.temperatures(logits, views).mean())

    def fit(self, logits, labels, views: Sequence | None = None) -> CACalibrator:
        if views is None:
            raise ValueError(f"CA is fitted on the logits of {self.n_views} transformed views: pass views=")
        if self.init_from_ts:
            t0 = TemperatureScaling(max_iter=self.ts_max_iter).fit(logits, labels).temperature
            with torch.no_grad():
                self.net[2].bias.fill_(min(max(t0, self.t_min), self.t_max))
        z = _as_tensor(logits)
        y = _as_tensor(labels, torch.long)
        f = self.features(z, views)
        correct = (z.argmax(-1) == y).float()
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        g = torch.Generator().manual_seed(self.seed)
        n = len(z)
        self.history = []
        with torch.enable_grad():
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=g)
                tot = 0.0
                for i in range(0, n, self.batch_size):
                    idx = order[i:i + self.batch_size]
                    t = self.temperatures_from_features(f[idx])
                    conf = (z[idx] / t.unsqueeze(-1)).softmax(-1).max(-1).values
                    loss = ca_loss(conf, correct[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * len(idx)
                self.history.append(tot / n)
        return self

    def forward(self, logits, views: Sequence) -> Tensor:
        z = _as_tensor(logits)
        return z / self.temperatures(z, views).unsqueeze(-1)
