"""Calibration metrics: agreement with torchmetrics away from the conf = 1.0 edge, hand-computed
fixtures (including the edge), equal-mass adaptive bins, Brier range, AURC, plots."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from trustlab.calibration import figures as FG
from trustlab.calibration import metrics as M


def random_probs(n=500, k=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, k, (n,), generator=g)
    # make about half of them right so bins hold both outcomes
    flip = torch.rand(n, generator=g) < 0.5
    y = torch.where(flip, z.argmax(-1), y)
    return z.softmax(-1), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_and_mce_agree_with_torchmetrics_away_from_the_edge(seed):
    p, y = random_probs(seed=seed)
    assert float(p.max(-1).values.max()) < 1.0
    for norm, ours in (("l1", M.ece), ("max", M.mce)):
        tm = MulticlassCalibrationError(num_classes=p.shape[1], n_bins=15, norm=norm)
        assert ours(p, y) == pytest.approx(float(tm(p.float(), y)), abs=1e-5)


def test_ece_puts_confidence_one_into_the_last_bin():
    # top-label confidences 1.0 (right), 1.0 (wrong), 0.96 (right), 0.5 (wrong)
    p = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.96, 0.04, 0.0], [0.5, 0.3, 0.2]], dtype=torch.float64
    )
    y = torch.tensor([0, 1, 0, 1])
    # last bin [14/15, 1]: acc 2/3, conf (1 + 1 + 0.96) / 3; bin 7: acc 0, conf 0.5
    last_gap = abs(2 / 3 - (2.96 / 3))
    want = 3 / 4 * last_gap + 1 / 4 * 0.5
    assert M.ece(p, y) == pytest.approx(want, abs=1e-12)
    assert M.mce(p, y) == pytest.approx(0.5, abs=1e-12)
    assert int(M.bin_indices(torch.tensor([1.0]))[0]) == 14
    b = M.calibration_bins(p, y)
    assert b["count"][14] == 3 and b["count"].sum() == 4
    # torchmetrics' hidden 16th bin would give 2/4 * 0.5 + 1/4 * 0.04 + 1/4 * 0.5 instead
    assert want != pytest.approx(2 / 4 * 0.5 + 1 / 4 * 0.04 + 1 / 4 * 0.5)


def test_bin_edges_are_left_closed_like_torchmetrics():
    idx = M.bin_indices(torch.tensor([0.0, 1 / 15, 0.5, 14 / 15 - 1e-9, 14 / 15, 1.0], dtype=torch.float64))
    assert idx.tolist() == [0, 1, 7, 13, 14, 14]


def test_adaptive_bins_have_equal_mass():
    p, y = random_probs(n=301, seed=3)
    conf = p.max(-1).values
    idx = M.adaptive_bin_indices(conf, 15)
    counts = np.bincount(idx.numpy(), minlength=15)
    assert counts.sum() == 301 and counts.max() - counts.min() <= 1
    # bins are ordered by confidence
    hi = [float(conf[idx == b].max()) for b in range(15)]
    lo = [float(conf[idx == b].min()) for b in range(15)]
    assert all(hi[b] <= lo[b + 1] for b in range(14))


def test_adaptive_ece_hand_computed():
    conf = [0.9, 0.8, 0.7, 0.6, 0.55, 0.95]
    correct = [1, 0, 1, 1, 0, 1]
    p = torch.tensor([[c, 1 - c] for c in conf], dtype=torch.float64)
    y = torch.tensor([0 if ok else 1 for ok in correct])
    # 2 equal-mass bins: {0.55, 0.6, 0.7} and {0.8, 0.9, 0.95}
    want = 0.5 * abs(2 / 3 - (0.55 + 0.6 + 0.7) / 3) + 0.5 * abs(2 / 3 - (0.8 + 0.9 + 0.95) / 3)
    assert M.adaptive_ece(p, y, n_bins=2) == pytest.approx(want, abs=1e-12)


def test_classwise_ece_hand_computed():
    p = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    # 2 bins [0, .5), [.5, 1]. class 0: p0 = .8 (y0), .3 (y0), .6 (y1)
    #   bin0 {.3}: |1 - .3| ; bin1 {.8, .6}: |1/2 - .7|  -> (1/3) .7 + (2/3) .2
    # class 1: p1 = .2 (no), .7 (no), .4 (yes): bin0 {.2, .4}: |1/2 - .3|; bin1 {.7}: |0 - .7|
    c0 = 0.7 / 3 + 2 / 3 * 0.2
    c1 = 2 / 3 * 0.2 + 0.7 / 3
    assert M.classwise_ece(p, y, n_bins=2) == pytest.approx((c0 + c1) / 2, abs=1e-12)


def test_brier_range_and_values():
    y = torch.tensor([0, 2, 1])
    perfect = F.one_hot(y, 3).double()
    assert M.brier(perfect, y) == 0.0
    wrong = F.one_hot(torch.tensor([1, 0, 0]), 3).double()
    assert M.brier(wrong, y) == pytest.approx(2.0)
    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    assert M.brier(p, torch.tensor([0])) == pytest.approx(0.25 + 0.0625 * 2)
    q, yy = random_probs(seed=4)
    assert 0.0 <= M.brier(q, yy) <= 2.0


def test_aurc_hand_computed():
    conf = [0.9, 0.8, 0.7, 0.6]
    correct = [1, 0, 1, 0]
    p = torch.tensor([[c, 1 - c] for c in conf], dtype=torch.float64)
    y = torch.tensor([0 if ok else 1 for ok in correct])
    assert M.aurc(p, y) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    # perfect ranking of errors (all errors least confident) beats the reverse
    good = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]], dtype=torch.float64)
    yy = torch.tensor([0, 0, 1, 1])
    bad_y = torch.tensor([1, 1, 0, 0])
    assert M.aurc(good, yy) < M.aurc(good, bad_y)


def test_accuracy_nll_and_evaluate():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (50,), generator=g)
    assert M.nll(z, y) == pytest.approx(float(F.cross_entropy(z, y)))
    assert M.accuracy(z.softmax(-1), y) == pytest.approx(float((z.argmax(-1) == y).double().mean()))
    ev = M.evaluate(z, y)
    assert set(ev) == set(M.METRIC_NAMES)
    assert ev["ece"] == pytest.approx(M.ece(z.softmax(-1), y))
    # numpy inputs work too
    assert M.evaluate(z.numpy(), y.numpy())["acc"] == pytest.approx(ev["acc"])


def test_binary_metrics_hand_computed():
    z = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0])
    y = torch.tensor([1, 1, 0, 0, 1])
    m = M.binary_metrics(z, y)
    # predictions 1, 0, 1, 0, 1 -> TP 2, FN 1, FP 1, TN 1
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(4 / 6)
    assert m["bacc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["gmean"] == pytest.approx(math.sqrt(2 / 3 * 1 / 2))


def test_binary_metrics_use_one_decision_rule_at_logit_zero():
    # a logit of exactly 0 (sigmoid 0.5) predicts class 1 for every metric; with a second item
    # in the same bin the old two-class ECE (argmax ties -> class 0) disagreed with the accuracy
    z = torch.tensor([0.0, 0.08], dtype=torch.float64)
    y = torch.tensor([1, 1])
    m = M.binary_metrics(z, y)
    assert m["acc"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0
    conf = torch.sigmoid(z)  # both predicted 1, both right
    assert M.bin_indices(conf).tolist() == [7, 7]
    assert m["ece"] == pytest.approx(1.0 - float(conf.mean()), abs=1e-12)
    assert m["ece"] == pytest.approx(M.confidence_ece(conf, torch.ones(2)), abs=1e-12)
    # a label-0 item at logit 0 is an error, for accuracy and ECE alike
    m0 = M.binary_metrics(torch.tensor([0.0]), torch.tensor([0]))
    assert m0["acc"] == 0.0 and m0["ece"] == pytest.approx(0.5)


def test_binary_ece_equals_two_class_ece_away_from_ties():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(200, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 2, (200,), generator=g)
    p1 = torch.sigmoid(z)
    two = torch.stack([1 - p1, p1], -1)
    assert M.binary_metrics(z, y)["ece"] == pytest.approx(M.ece(two, y), abs=1e-12)
    assert M.binary_metrics(z, y)["acc"] == pytest.approx(M.accuracy(two, y), abs=1e-12)


@pytest.mark.parametrize("fn", [M.ece, M.mce, M.adaptive_ece, M.classwise_ece, M.brier, M.aurc, M.calibration_bins])
def test_probability_metrics_refuse_logits(fn):
    g = torch.Generator().manual_seed(8)
    z = torch.randn(40, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (40,), generator=g)
    with pytest.raises(ValueError, match=r"probs must be class probabilities: values in \[0, 1\] and each row sum"):
        fn(z, y)
    with pytest.raises(ValueError, match="row sum off by"):
        fn(z.softmax(-1) * 0.9, y)  # in [0, 1] but not normalised
    with pytest.raises(ValueError, match="finite"):
        fn(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        fn(torch.tensor([0.2, 0.8]), torch.tensor([1]))
    fn(z.softmax(-1).float(), y)  # float32 softmax rows pass


def test_ece_of_logits_used_to_be_silently_above_one():
    g = torch.Generator().manual_seed(9)
    z = torch.randn(100, 4, generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, 4, (100,), generator=g)
    assert float(z.max()) > 1  # the top "confidence" of raw logits is not a probability
    with pytest.raises(ValueError, match="Pass softmax\\(logits\\), not logits"):
        M.ece(z, y)
    assert 0 <= M.ece(z.softmax(-1), y) <= 1


def test_reliability_diagram_returns_figure():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    p, y = random_probs(seed=6)
    fig = FG.reliability_diagram(p, y, title="test")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    plt.close(fig)
    fig, ax = plt.subplots()
    assert FG.reliability_diagram(p, y, ax=ax) is fig
    plt.close(fig)
