"""SPC-UQ as a token-level detector on the stored statistics (an adaptation; see
docs/methods/error_detection.md).

Split-point self-consistency: next to a classifier's probabilities p, a residual head predicts
the mean absolute residual ``mar_c = E|1{y = c} - p_c|`` of each class. For a calibrated
classifier ``E|1{y = c} - p_c| = p_c (1 - p_c) + (1 - p_c) p_c = 2 p_c (1 - p_c)``, so the
disagreement ``sum_c |mar_c - 2 p_c (1 - p_c)|`` is large exactly where the probabilities do
not describe how often the prediction is right.

Our classes at an answer token are the vocabulary's top-1 (the greedy token, probability
``p_t = exp(log p(y_t))``) and the rest of the vocabulary lumped together (``1 - p_t``): the
statistics store the greedy token's probability, not the whole distribution. With two classes
both residuals are ``|1{right} - p_t|`` and the score is ``2 |mar_t - 2 p_t (1 - p_t)|``. A
token is "right" when the response is right (the checker labels responses, not tokens), so on a
wrong response every answer token carries the wrong label. The head is a ridge regression fitted
on the fit split's span tokens; its input is the token's own statistics (p_t, p_t^2, p_t H_t,
H_t, Var_t, position in the span) and the span-pooled hidden state of one layer (per-token hidden
states are not stored). u = the mean token score over the span.
"""

from __future__ import annotations

import numpy as np

from trustlab.error_detection.estimators import Estimator, _features, detector

__all__ = ["ResidualHead", "SPCUQ", "calibrated_residual", "spc_token_scores", "token_features"]


def calibrated_residual(p: np.ndarray) -> np.ndarray:
    """E|1{y = c} - p_c| when y ~ p (a calibrated prediction): 2 p (1 - p)."""
    p = np.asarray(p, dtype=np.float64)
    return 2.0 * p * (1.0 - p)


def spc_token_scores(mar: np.ndarray, p: np.ndarray) -> np.ndarray:
    """sum over {top-1, rest} of |mar_c - 2 p_c (1 - p_c)|; both classes share mar and 2p(1-p)."""
    return 2.0 * np.abs(np.asarray(mar, dtype=np.float64) - calibrated_residual(p))


class ResidualHead:
    """A small ridge-regression head from token features to the mean absolute residual, clipped
    to [0, 1]. The features include p and p^2, so the calibrated answer 2p(1-p) is representable."""

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
        return np.clip(self.model_.predict(np.asarray(x, np.float64)), 0.0, 1.0)


def token_features(p: np.ndarray, entropy: np.ndarray, var: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """One response's token features: p, p^2, p H, H, Var, relative position, and the pooled
    hidden state repeated at every token."""
    pos = np.arange(len(p)) / max(len(p) - 1, 1)
    tok = np.column_stack([p, p**2, p * entropy, entropy, var, pos])
    return np.hstack([tok, np.repeat(np.asarray(pooled, np.float64)[None, :], len(p), axis=0)])


@detector("spc_uq")
class SPCUQ(Estimator):
    """SPC-UQ (adaptation): u = mean_t 2 |mar_t - 2 p_t (1 - p_t)| over the span, mar_t from a
    residual head fitted on the fit split."""

    label = "SPC-UQ (residual head, adapt.)"
    needs_fit = True
    supervised = True

    def __init__(self, span: str = "answer", layer: int = -1, alpha: float = 1.0):
        super().__init__(span)
        if alpha < 0:
            raise ValueError(f"alpha = {alpha}: alpha >= 0 is required")
        self.layer, self.alpha = int(layer), float(alpha)

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
        right = (~stats.labels()).astype(np.float64)[row]
        self.head_ = ResidualHead(self.alpha).fit(x, np.abs(right - p))

    def _score(self, stats, in_sample):
        x, p, row = self._tokens(stats)
        per_token = spc_token_scores(self.head_.predict(x), p)
        return np.bincount(row, weights=per_token, minlength=stats.n) / np.maximum(np.bincount(row, minlength=stats.n), 1)
