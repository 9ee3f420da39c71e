"""The single-pass detectors (trustlab.calibration.detectors): the AUROC helper on known cases,
MSP and entropy by hand, and SPC on a synthetic calibrated classifier, where the residual head
must recover the calibrated residual 2 p (1 - p), and on an overconfident one, where the
split-point adjustment must move the confidence back towards the true probability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustlab.calibration.detectors import (
    DETECTORS,
    SPC,
    auroc,
    expected_abs_residual,
    split_point_adjustment,
    split_point_targets,
)


def test_auroc_known_cases():
    assert auroc(np.array([1, 2, 3, 4.0]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([4, 3, 2, 1.0]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5  # ties count half
    assert auroc(np.array([1, 3, 2, 4.0]), np.array([0, 1, 0, 1])) == 1.0
    assert auroc(np.array([1, 2, 3.0]), np.array([0, 1, 0])) == 0.5
    assert np.isnan(auroc(np.array([1, 2.0]), np.array([1, 1])))


def test_msp_and_entropy_by_hand():
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    assert DETECTORS.build("msp").score(p, None) == pytest.approx([0.1, 0.5])
    h = DETECTORS.build("entropy").score(p, None)
    assert h == pytest.approx([-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), np.log(2)])
    assert set(DETECTORS.names()) >= {"msp", "entropy", "spc"}


def _calibrated(n: int, seed: int):
    """Features h, the true class probabilities p = softmax(h W) and labels drawn from p: a
    perfectly calibrated classifier."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, 6)).astype(np.float32)
    z = h @ (0.8 * rng.normal(size=(6, 4)))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return h, p, y


def test_spc_head_recovers_the_calibrated_residual():
    h, p, y = _calibrated(3000, seed=0)
    det = SPC(steps=400, seed=0, uncertainty="discrepancy").fit(p[:2000], h[:2000], y[:2000])
    mar, mar_up, mar_down = det.residuals(h[2000:])
    ideal = expected_abs_residual(p[2000:])
    assert np.corrcoef(mar.ravel(), ideal.ravel())[0, 1] > 0.9
    assert np.abs(mar - ideal).mean() < 0.3 * np.abs(ideal - ideal.mean()).mean()
    # the discrepancy of a calibrated model is small next to the residual itself
    assert det.score(p[2000:], h[2000:]).mean() < 0.5 * ideal.sum(1).mean()
    # the split-point heads add up to the mar head, so the paper's consistency gate mostly passes
    assert np.mean(np.abs(mar_up + mar_down - mar) < det.consistency_tol) > 0.9
    # ... and the adjustment of a calibrated model is small next to p's own spread
    shift = det.adjusted(p[2000:], h[2000:]) - p[2000:]
    assert np.abs(shift).mean() < 0.3 * np.abs(p - p.mean()).mean()


def test_split_point_targets_and_adjustment_by_hand():
    t = split_point_targets(torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([1]))
    assert t.numpy() == pytest.approx(np.array([[[0.7, 0.8, 0.1], [0.0, 0.8, 0.0], [0.7, 0.0, 0.1]]]))
    mar, up, down = np.array([0.5, 0.52, 0.7]), np.array([0.3, 0.3, 0.3]), np.array([0.2, 0.2, 0.2])
    # consistent: the three estimates agree (0.1); within the tolerance: the smallest of
    # 0.1, 0.12, 0.08; outside it (|0.5 - 0.7| = 0.2): no shift
    assert split_point_adjustment(mar, up, down, tol=0.05) == pytest.approx([0.1, 0.08, 0.0])


def test_spc_flags_an_overconfident_model():
    """Sharpen the calibrated probabilities on half of the inputs: there SPC's discrepancy grows,
    and the adjusted probability of the predicted class moves back towards the true one."""
    h, p, y = _calibrated(3000, seed=1)
    sharp = p**4 / (p**4).sum(1, keepdims=True)
    overconfident = h[:, 0] > 0
    q = np.where(overconfident[:, None], sharp, p)
    det = SPC(steps=400, seed=0, uncertainty="discrepancy").fit(q[:2000], h[:2000], y[:2000])
    u = det.score(q[2000:], h[2000:])
    assert auroc(u, overconfident[2000:]) > 0.7

    det = SPC(steps=400, seed=0).fit(q[:2000], h[:2000], y[:2000])
    u = det.score(q[2000:], h[2000:])
    pred = q[2000:].argmax(1)
    wrong = pred != y[2000:]
    assert auroc(u, wrong) > 0.6
    true_conf = np.take_along_axis(p[2000:], pred[:, None], 1)[:, 0]
    stated, adjusted = np.take_along_axis(q[2000:], pred[:, None], 1)[:, 0], 1.0 - u
    over = overconfident[2000:]
    # the consistency gate leaves about a third of these predictions unadjusted: a quarter of the gap closes
    assert np.abs(adjusted - true_conf)[over].mean() < 0.8 * np.abs(stated - true_conf)[over].mean()


def test_spc_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"uncertainty = 'total' is not allowed: one of 'adjusted_confidence', "):
        SPC(uncertainty="total")
    with pytest.raises(ValueError, match="consistency_tol = 0.0: a positive tolerance"):
        DETECTORS.build("spc", consistency_tol=0.0)


def test_spc_is_seeded():
    h, p, y = _calibrated(500, seed=2)
    a = SPC(steps=20, seed=3).fit(p, h, y).score(p, h)
    b = SPC(steps=20, seed=3).fit(p, h, y).score(p, h)
    assert np.array_equal(a, b)
