"""SPC-UQ as a token-level detector on the stored statistics (an adaptation; see
docs/methods/error_detection.md).

Split-point self-consistency: next to a classifier's probabilities p, residual heads predict
per class the mean absolute residual ``mar_c = E|Y_c - p_c|`` and its two split-point parts,
the residual above the prediction ``mar_up_c = E[(Y_c - p_c)^+] = E[Y_c (1 - p_c)]`` and the
one below it ``mar_down_c = E[(p_c - Y_c)^+] = E[(1 - Y_c) p_c]`` (``Y_c = 1{y = c}``), so that
``mar_c = mar_up_c + mar_down_c``. If ``P(Y_c = 1 | x) = q_c`` then
``mar_c = q_c (1 - p_c) + (1 - q_c) p_c``, and two quantities follow:

* the self-consistency discrepancy ``sum_c |mar_c - 2 p_c (1 - p_c)| = sum_c |q_c - p_c| |1 - 2 p_c|``,
  zero for a calibrated classifier (``q = p``). This is the paper's score for misclassification
  and out-of-distribution detection (unsigned, on the unmodified softmax, no aleatoric term);
* the split-point adjusted probability ``q_c = p_c + mar_up_c - mar_down_c`` (the paper's
  calibration adjustment: ``mar_up - mar_down = E[Y_c - p_c]``, the mean signed residual).

Our classes at an answer token are the vocabulary's top-1 (the greedy token, probability
``p_t = exp(log p(y_t))``) and the rest of the vocabulary lumped together (``1 - p_t``): the
statistics store the greedy token's probability, not the whole distribution. With two classes
both classes have the same residuals and the discrepancy is ``2 |mar_t - 2 p_t (1 - p_t)|``. A
token is "right" when the response is right (the checker labels responses, not tokens), so on a
wrong response every answer token carries the wrong label.

Why the default score is the adjusted confidence, not the discrepancy: the discrepancy is
``2 |q_t - p_t| |1 - 2 p_t|``, miscalibration in either direction. Where the language model is
underconfident on right answers (greedy-token probabilities far below the rate at which their
responses are right) the right responses get the largest discrepancy, and the score ranks errors
below chance. The paper's own adjusted probability keeps the sign: ``u = 1 - q_t`` is the
estimated probability that the prediction is wrong, ``(1 - p_t) + (mar_down_t - mar_up_t)``, the
model's own uncertainty plus its estimated overconfidence (``uncertainty="adjusted_confidence"``).
``uncertainty="discrepancy"`` gives the paper's detection score unchanged.

The heads are one ridge regression with three outputs (``mar``, ``mar_up``, ``mar_down``) fitted
on the fit split's span tokens; its input is the token's own statistics (p_t, p_t^2, p_t H_t, H_t,
Var_t, position in the span) and the span-pooled hidden state of one layer (per-token hidden
states are not stored). A linear head is linear in its targets and the targets satisfy
``|Y - p| = Y (1 - p) + (1 - Y) p``, so its predictions satisfy ``mar = mar_up + mar_down``
exactly: the paper's self-consistency gate (adjust only where ``|mar_up + mar_down - mar|`` is
small) always passes, and its three estimates of the shift (``mar_up - mar_down``,
``mar - 2 mar_down``, ``2 mar_up - mar``) coincide. u = the mean token score over the span.
"""

from __future__ import annotations

import numpy as np

from trustlab.error_detection.estimators import Estimator, _features, detector

__all__ = [
    "ResidualHead",
    "SPCUQ",
    "SPC_UNCERTAINTIES",
    "adjusted_confidence",
    "calibrated_residual",
    "residual_targets",
    "spc_token_scores",
    "token_features",
]

SPC_UNCERTAINTIES = ("adjusted_confidence", "discrepancy")


def calibrated_residual(p: np.ndarray) -> np.ndarray:
    """E|1{y = c} - p_c| when y ~ p (a calibrated prediction): 2 p (1 - p)."""
    p = np.asarray(p, dtype=np.float64)
    return 2.0 * p * (1.0 - p)


def residual_targets(right: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(n, 3) regression targets of the top-1 class: |Y - p|, the residual above p, Y (1 - p),
    and the one below it, (1 - Y) p, where Y = 1{right}."""
    y, p = np.asarray(right, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return np.column_stack([np.abs(y - p), y * (1.0 - p), (1.0 - y) * p])


def spc_token_scores(mar: np.ndarray, p: np.ndarray) -> np.ndarray:
    """sum over {top-1, rest} of |mar_c - 2 p_c (1 - p_c)|; both classes share mar and 2p(1-p)."""
    return 2.0 * np.abs(np.asarray(mar, dtype=np.float64) - calibrated_residual(p))


def adjusted_confidence(p: np.ndarray, mar_up: np.ndarray, mar_down: np.ndarray) -> np.ndarray:
    """The split-point adjusted probability that the top-1 token is right, q = p + mar_up - mar_down.

    Not clipped to [0, 1], as in the paper: it is used to rank, and clipping would tie every
    token the head pushes past 0 or 1."""
    return np.asarray(p, np.float64) + np.asarray(mar_up, np.float64) - np.asarray(mar_down, np.float64)


class ResidualHead:
    """Ridge regression from token features to the residual targets (one output per column),
    on standardised features. ``predict`` returns the raw linear predictions: clipping would
    break ``mar = mar_up + mar_down``. The features include p and p^2, so the calibrated answer
    2p(1-p) is representable."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)

    def fit(self, x: np.ndarray, target: np.ndarray) -> ResidualHead:
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model_ = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha))
        self.model_.fit(np.asarray(x, np.float64), np.asarray(target, np.float64))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model_.predict(np.asarray(x, np.float64)), dtype=np.float64)


def token_features(p: np.ndarray, entropy: np.ndarray, var: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """One response's token features: p, p^2, p H, H, Var, relative position, and the pooled
    hidden state repeated at every token."""
    pos = np.arange(len(p)) / max(len(p) - 1, 1)
    tok = np.column_stack([p, p**2, p * entropy, entropy, var, pos])
    return np.hstack([tok, np.repeat(np.asarray(pooled, np.float64)[None, :], len(p), axis=0)])


@detector("spc_uq")
class SPCUQ(Estimator):
    """SPC-UQ (adaptation): u = mean_t (1 - q_t), q_t = p_t + mar_up_t - mar_down_t; or, with
    uncertainty="discrepancy", the paper's detection score u = mean_t 2 |mar_t - 2 p_t (1 - p_t)|.

    The residual heads are fitted on the fit split; see the module docstring for why the
    adjusted confidence is the default.
    """

    label = "SPC-UQ (split-point adjusted confidence, adapt.)"
    needs_fit = True
    supervised = True

    def __init__(self, span: str = "answer", layer: int = -1, alpha: float = 1.0,
                 uncertainty: str = "adjusted_confidence"):  # fmt: skip
        super().__init__(span)
        if alpha < 0:
            raise ValueError(f"alpha = {alpha}: alpha >= 0 is required")
        if uncertainty not in SPC_UNCERTAINTIES:
            allowed = ", ".join(map(repr, SPC_UNCERTAINTIES))
            raise ValueError(f"uncertainty = {uncertainty!r} is not allowed: one of {allowed}")
        self.layer, self.alpha, self.uncertainty = int(layer), float(alpha), uncertainty

    def _tokens(self, stats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token features (one row per span token), p_t and the row each token belongs to."""
        lp = stats.span_tokens("logprobs", self.span)
        ent = stats.span_tokens("entropies", self.span)
        var = stats.span_tokens("entropy_vars", self.span)
        pooled = _features(stats, self.span, self.layer)
        rows, feats = [], []
        for i, (a, h, v) in enumerate(zip(lp, ent, var)):
            feats.append(token_features(np.exp(a), h, v, pooled[i]))
            rows.append(np.full(len(a), i))
        x, row = np.vstack(feats), np.concatenate(rows)
        return x, x[:, 0], row

    def _fit(self, stats):
        x, p, row = self._tokens(stats)
        right = ~stats.labels()[row]
        self.head_ = ResidualHead(self.alpha).fit(x, residual_targets(right, p))

    def token_scores(self, stats) -> tuple[np.ndarray, np.ndarray]:
        """Per-token uncertainties of the configured kind and the row each token belongs to."""
        x, p, row = self._tokens(stats)
        mar, mar_up, mar_down = self.head_.predict(x).T
        if self.uncertainty == "discrepancy":
            # a mean absolute residual lies in [0, 1]: the paper's head predicts it directly
            return spc_token_scores(np.clip(mar, 0.0, 1.0), p), row
        return 1.0 - adjusted_confidence(p, mar_up, mar_down), row

    def _score(self, stats, in_sample):
        per_token, row = self.token_scores(stats)
        return np.bincount(row, weights=per_token, minlength=stats.n) / np.maximum(np.bincount(row, minlength=stats.n), 1)
