"""Calibration losses: hand-computed values on small fixed tensors, limits, stability,
gradient flow and the registry's validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trustlab.calibration import losses as L
from trustlab.calibration.losses import build_loss, loss_names, validate_loss
from trustlab.core.config import ConfigError

torch.set_default_dtype(torch.float32)

# two samples, three classes
Z = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
Y = [0, 1]


def logits(requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(Z, dtype=torch.float64, requires_grad=requires_grad)


def target() -> torch.Tensor:
    return torch.tensor(Y)


def softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


P = [softmax_row(r) for r in Z]
PY = [P[i][Y[i]] for i in range(2)]


def mean(xs):
    return sum(xs) / len(xs)


def value(name, **hp):
    return float(build_loss(name, **hp)(logits(), target()))


# -- hand-computed values ------------------------------------------------------------------------


def test_ce_and_label_smoothing():
    assert value("ce") == pytest.approx(mean([-math.log(p) for p in PY]), rel=1e-9)
    eps, k = 0.1, 3
    want = mean(
        [-(1 - eps) * math.log(P[i][Y[i]]) - eps / k * sum(math.log(p) for p in P[i]) for i in range(2)]
    )
    assert value("label_smoothing", eps=eps) == pytest.approx(want, rel=1e-9)


def test_focal_and_flsd53():
    g = 2.0
    assert value("focal", gamma=g) == pytest.approx(mean([-((1 - p) ** g) * math.log(p) for p in PY]), rel=1e-9)
    assert value("focal", gamma=0.0) == pytest.approx(value("ce"), rel=1e-9)
    # sample 0: p_y = 0.665 >= 0.2 -> gamma 3; sample 1: p_y = 0.140 < 0.2 -> gamma 5
    assert PY[0] > 0.2 > PY[1]
    want = mean([-((1 - PY[0]) ** 3) * math.log(PY[0]), -((1 - PY[1]) ** 5) * math.log(PY[1])])
    assert value("flsd53") == pytest.approx(want, rel=1e-9)


def test_brier():
    want = mean([sum((P[i][k] - (k == Y[i])) ** 2 for k in range(3)) for i in range(2)])
    assert value("brier") == pytest.approx(want, rel=1e-9)


def test_mmce_hand_computed():
    z = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.2, 0.0, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 2])  # correct, correct, wrong, wrong
    probs = [softmax_row(r) for r in z.tolist()]
    r = [max(p) for p in probs]
    c_idx, w_idx = [0, 1], [2, 3]

    def k(a, b):
        return math.exp(-abs(r[a] - r[b]) / 0.4)

    cc = sum((1 - r[i]) * (1 - r[j]) * k(i, j) for i in c_idx for j in c_idx) / 4
    ww = sum(r[i] * r[j] * k(i, j) for i in w_idx for j in w_idx) / 4
    cw = sum((1 - r[i]) * r[j] * k(i, j) for i in c_idx for j in w_idx) / 4
    mmce = math.sqrt(cc + ww - 2 * cw + 1e-10)
    assert float(L.mmce_weighted(z, y, 0.4)) == pytest.approx(mmce, rel=1e-9)
    ce = float(F.cross_entropy(z, y))
    assert float(build_loss("mmce", lam=2.0)(z, y)) == pytest.approx(ce + 2.0 * mmce, rel=1e-9)


def test_mmce_single_group_is_finite():
    z = torch.tensor([[3.0, 0.0], [2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = L.mmce_weighted(z, torch.tensor([0, 0]))  # all correct: only the correct-correct term
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_comp_sum_limits_and_values():
    # tau = 1 is CE, tau = 2 is 1 - p_y, tau = 0 is sum-exp 1/p_y - 1, tau = 0.5 by the formula
    assert value("comp_sum", tau=1.0) == pytest.approx(value("ce"), rel=1e-9)
    assert value("comp_sum", tau=2.0) == pytest.approx(mean([1 - p for p in PY]), rel=1e-9)
    assert value("comp_sum", tau=0.0) == pytest.approx(mean([1 / p - 1 for p in PY]), rel=1e-9)
    u = [sum(math.exp(Z[i][k] - Z[i][Y[i]]) for k in range(3) if k != Y[i]) for i in range(2)]
    assert value("comp_sum", tau=0.5) == pytest.approx(mean([((1 + x) ** 0.5 - 1) / 0.5 for x in u]), rel=1e-9)


def test_gce_and_mae():
    q = 0.7
    assert value("gce", q=q) == pytest.approx(mean([(1 - p**q) / q for p in PY]), rel=1e-9)
    assert value("gce", q=q) == pytest.approx(value("comp_sum", tau=1 + q), rel=1e-9)
    # GCE -> CE as q -> 0 (the gap shrinks linearly in q)
    gaps = [abs(value("gce", q=q) - value("ce")) for q in (1e-2, 1e-3, 1e-4)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3
    # MAE = ||p - onehot||_1 = 2 (1 - p_y) = 2 Phi_2, and it is not identically zero
    mae_l1 = mean([sum(abs(P[i][k] - (k == Y[i])) for k in range(3)) for i in range(2)])
    assert value("mae") == pytest.approx(mae_l1, rel=1e-9)
    assert value("mae") == pytest.approx(2 * value("comp_sum", tau=2.0), rel=1e-9)
    assert value("mae") > 0.5
    assert value("gce", q=1.0) == pytest.approx(value("comp_sum", tau=2.0), rel=1e-9)


def _ldr_hand(row, y, lam, c):
    sp = [math.log1p(math.exp(v)) for v in row]
    m = mean(sp)
    z = [v / m for v in sp]
    terms = [(c * (k != y) + z[k] - z[y]) / lam for k in range(len(row))]
    return lam * math.log(mean([math.exp(t) for t in terms]))


def test_ldr_kl_hand_computed():
    want = mean([_ldr_hand(Z[i], Y[i], 10.0, 0.1) for i in range(2)])
    assert value("ldr_kl") == pytest.approx(want, rel=1e-9)
    want = mean([_ldr_hand(Z[i], Y[i], 0.5, 0.3) for i in range(2)])
    assert value("ldr_kl", lam=0.5, margin=0.3) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_ldr_kl_finite_for_huge_logits(scale):
    z = torch.tensor([[scale, -scale, 0.0], [-scale, -scale, -scale], [scale, scale, 1.0]], requires_grad=True)
    y = torch.tensor([1, 0, 2])
    for lam in (10.0, 0.01):
        loss = build_loss("ldr_kl", lam=lam)(z, y)
        (g,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_aldr_kl_first_update_hand_computed_and_bounds():
    loss = build_loss("aldr_kl", n_samples=5)
    ids = torch.tensor([3, 1])
    out = loss(logits(), target(), sample_ids=ids)
    lam0, alpha, c, k = 10.0, 2.0, 0.1, 3
    want_lams, want_losses = [], []
    for i in range(2):
        sp = [math.log1p(math.exp(v)) for v in Z[i]]
        z = [v / mean(sp) for v in sp]
        a = [c * (j != Y[i]) + z[j] - z[Y[i]] for j in range(k)]
        p = softmax_row([x / lam0 for x in a])
        kl = sum(pj * math.log(pj * k) for pj in p)
        lam = lam0 - lam0 * kl / (alpha * math.log(k))
        want_lams.append(lam)
        want_losses.append(lam * math.log(mean([math.exp(x / lam) for x in a])))
    assert loss.lambdas[ids].tolist() == pytest.approx(want_lams, rel=1e-5)
    assert loss.lambdas[[0, 2, 4]].tolist() == [10.0, 10.0, 10.0]  # untouched
    assert float(out) == pytest.approx(mean(want_losses), rel=1e-5)


def test_aldr_kl_lambda_stays_in_bounds():
    torch.manual_seed(0)
    loss = build_loss("aldr_kl", n_samples=64, lambda0=2.0, alpha=1.5)
    lo, hi = loss.bounds
    assert (lo, hi) == pytest.approx((2.0 * (1 - 1 / 1.5), 2.0))
    for scale in (0.01, 1.0, 100.0, 1e6):
        z = torch.randn(64, 10) * scale
        loss(z, torch.randint(0, 10, (64,)), sample_ids=torch.arange(64))
        assert lo - 1e-6 <= float(loss.lambdas.min()) and float(loss.lambdas.max()) <= hi + 1e-6
    # the bounds come from the formula (0 <= KL(p || uniform) <= log k), not from the clamp: on raw
    # logits, near-uniform margins keep lambda at lambda0 and one-hot margins drive it to the lower bound
    raw = L.ALDRKLLoss(n_samples=64, lambda0=2.0, alpha=1.5, normalize=False)
    raw(torch.randn(64, 10) * 1e-3, torch.randint(0, 10, (64,)), sample_ids=torch.arange(64))
    assert raw.lambdas.min().item() == pytest.approx(hi, rel=1e-2)
    raw(torch.randn(64, 10) * 1e6, torch.randint(0, 10, (64,)), sample_ids=torch.arange(64))
    assert raw.lambdas.max().item() == pytest.approx(lo, rel=1e-4)


def test_aldr_kl_lambda_is_detached():
    loss = build_loss("aldr_kl", n_samples=4)
    z = logits(requires_grad=True)
    ids = torch.tensor([0, 1])
    out = loss(z, target(), sample_ids=ids)
    (g,) = torch.autograd.grad(out, z)
    assert not loss.lambdas.requires_grad
    # same gradient as LDR-KL with lambda_i held constant at the updated values
    z2 = logits(requires_grad=True)
    zn = L.normalize_logits_softplus(z2)
    ref = L.ldr_kl_per_sample(zn, target(), loss.lambdas[ids].to(z2.dtype), 0.1).mean()
    (g2,) = torch.autograd.grad(ref, z2)
    assert torch.allclose(g, g2)
    with pytest.raises(ValueError, match="sample_ids"):
        loss(logits(), target())


def test_bias_loss_hand_computed_and_detached():
    feats = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    # population variances 0 and 1 -> min-max normalised 0 and 1
    ce = [-math.log(p) for p in PY]
    a = b = 0.3
    want = mean([(math.exp(b * 0) - 1 + a) * ce[0], (math.exp(b * 1) - 1 + a) * ce[1]])
    z = logits(requires_grad=True)
    out = build_loss("bias")(z, target(), features=feats)
    assert float(out.detach()) == pytest.approx(want, rel=1e-9)
    out.backward()
    assert feats.grad is None  # the variance is computed from detached features
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # equal variances -> all weights alpha
    same = torch.ones(2, 4, dtype=torch.float64)
    assert float(build_loss("bias")(logits(), target(), features=same)) == pytest.approx(a * mean(ce), rel=1e-9)


def test_zloss_hand_computed():
    a, b = 1.5, 1.0
    vals = []
    for i in range(2):
        mu = mean(Z[i])
        sd = math.sqrt(mean([(v - mu) ** 2 for v in Z[i]]))
        zy = (Z[i][Y[i]] - mu) / (sd + 1e-8)
        vals.append(math.log1p(math.exp(a * (b - zy))) / a)
    assert value("zloss", a=a, b=b) == pytest.approx(mean(vals), rel=1e-9)
    # shift and scale invariant
    z = logits()
    zl = build_loss("zloss", a=a, b=b)
    assert float(zl(3 * z + 7, target())) == pytest.approx(float(zl(z, target())), rel=1e-6)


def test_soft_kl():
    q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]], dtype=torch.float64)
    want = sum(q[i, k].item() * (math.log(q[i, k].item()) - math.log(P[i][k])) for i in range(2) for k in range(3)) / 2
    assert float(build_loss("soft_kl")(logits(), q)) == pytest.approx(want, rel=1e-9)
    assert value("soft_kl") == pytest.approx(value("ce"), rel=1e-9)  # integer labels = one-hot


def test_anyloss_hand_computed():
    z = torch.tensor([2.0, -1.0, 0.5, -3.0], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 0])
    Lamp = 10.0
    A = [1 / (1 + math.exp(-Lamp * (1 / (1 + math.exp(-v)) - 0.5))) for v in z.tolist()]
    tp = A[0] + A[1]
    fp = sum(A) - tp
    fn = 2 - tp
    tn = 4 - 2 - sum(A) + tp
    e = 1e-8
    f1 = 2 * tp / (2 * tp + fp + fn + e)
    b2 = 4.0
    fb = (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp + e)
    tpr, tnr = tp / (tp + fn + e), tn / (tn + fp + e)
    want = {"anyloss_f1": 1 - f1, "anyloss_fbeta": 1 - fb, "anyloss_bacc": 1 - (tpr + tnr) / 2,
            "anyloss_gmean": 1 - math.sqrt(tpr * tnr + e)}
    for name, w in want.items():
        hp = {"L": Lamp, **({"beta": 2.0} if name == "anyloss_fbeta" else {})}
        loss = build_loss(name, **hp)
        assert loss.task == "binary"
        assert float(loss(z, y)) == pytest.approx(w, rel=1e-9), name
        assert float(loss(z.view(-1, 1), y)) == pytest.approx(w, rel=1e-9)
    assert float(build_loss("bce")(z, y)) == pytest.approx(float(F.binary_cross_entropy_with_logits(z, y.double())))


# -- gradients ---------------------------------------------------------------------------------


def _focal_reference(z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
    """Focal loss in float64 with ``log(1 - p_y) = logsumexp_{k != y} z_k - logsumexp_k z_k``,
    so ``(1 - p_y)^gamma`` never rounds to 0^gamma."""
    z = z.double()
    logp = torch.log_softmax(z, -1).gather(1, y.view(-1, 1)).squeeze(1)
    others = z.scatter(1, y.view(-1, 1), float("-inf"))
    log_1mp = torch.logsumexp(others, -1) - torch.logsumexp(z, -1)
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    return (-torch.exp(gamma * log_1mp) * logp).mean()


@pytest.mark.parametrize("name, hp", [("focal", {"gamma": 0.5}), ("focal", {"gamma": 0.2}),
                                      ("flsd53", {"gamma_low_p": 0.5, "gamma_high_p": 0.5})])
def test_focal_gradient_is_finite_for_gamma_below_one_on_a_confident_sample(name, hp):
    # logits [40, 0, 0] with label 0: 1 - p_y rounds to 0 in float32 and float64; the plain formula's
    # derivative gamma (1 - p_y)^(gamma - 1) is then infinite and the batch gradient NaN
    z = torch.tensor([[40.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.2, 2.0, -1.0]], requires_grad=True)
    y = torch.tensor([0, 1, 0])
    loss = build_loss(name, **hp)
    out = loss(z, y)
    (g,) = torch.autograd.grad(out, z)
    assert torch.isfinite(out) and torch.isfinite(g).all()
    z64 = z.detach().double().requires_grad_(True)
    gamma = loss.gammas(z64, y) if name == "flsd53" else hp["gamma"]
    ref = _focal_reference(z64, y, gamma)
    (g_ref,) = torch.autograd.grad(ref, z64)
    assert float(out.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(g.double(), g_ref, rtol=1e-5, atol=1e-7)
    assert float(g[0].abs().max()) < 1e-7  # the saturated sample contributes (almost) nothing


def test_focal_weight_matches_the_plain_formula_away_from_saturation():
    logp = torch.log(torch.tensor([0.1, 0.5, 0.9, 0.999], dtype=torch.float64))
    for gamma in (0.0, 0.5, 3.0):
        assert torch.equal(L.focal_weight(logp, gamma), (1 - logp.exp()) ** gamma)


@pytest.mark.parametrize("name", loss_names("multiclass"))
def test_every_multiclass_loss_has_finite_nonzero_gradient(name):
    torch.manual_seed(0)
    z = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    loss = build_loss(name, n_samples=8)
    kwargs = {}
    if "sample_ids" in loss.needs:
        kwargs["sample_ids"] = torch.arange(8)
    if "features" in loss.needs:
        kwargs["features"] = torch.randn(8, 6)
    out = loss(z, y, **kwargs)
    (g,) = torch.autograd.grad(out, z)
    assert out.dim() == 0 and torch.isfinite(out)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("name", loss_names("binary"))
def test_every_binary_loss_has_finite_nonzero_gradient(name):
    torch.manual_seed(0)
    z = torch.randn(16, requires_grad=True)
    y = torch.randint(0, 2, (16,))
    loss = build_loss(name) if name == "bce" else build_loss(name, L=5.0)
    (g,) = torch.autograd.grad(loss(z, y), z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# -- registry validation -----------------------------------------------------------------------


def test_unknown_loss_names_allowed():
    with pytest.raises(ConfigError) as e:
        build_loss("focall")
    msg = str(e.value)
    assert "'focall'" in msg and "did you mean 'focal'" in msg
    registered = msg.split("registered: ")[1].split(", ")
    assert registered == L.LOSSES.names()
    for name in ("ce", "focal", "gce", "aldr_kl", "anyloss_f1"):
        assert name in registered


def test_registry_names_formulas_and_defaults():
    assert loss_names("multiclass") == ["ce", "label_smoothing", "focal", "flsd53", "brier", "mmce", "comp_sum",
                                        "gce", "mae", "ldr_kl", "aldr_kl", "bias", "zloss", "soft_kl"]
    assert loss_names("binary") == ["bce", "anyloss_f1", "anyloss_fbeta", "anyloss_bacc", "anyloss_gmean"]
    formulas = L.LOSSES.describe()
    assert "-(1 - p_y)^gamma * log p_y" in formulas["focal"]
    assert "(1 - p_y^q) / q" in formulas["gce"]
    assert L.loss_defaults("flsd53") == {"gamma_low_p": 5.0, "gamma_high_p": 3.0, "threshold": 0.2}
    assert L.loss_defaults("anyloss_fbeta") == {"L": 73.0, "beta": 2.0}
    assert L.loss_defaults("aldr_kl") == {"lambda0": 10.0, "alpha": 2.0, "margin": 0.1}  # n_samples is not tunable
    fb = build_loss("anyloss_fbeta")
    assert (fb.metric, fb.beta, fb.L, fb.name) == ("fbeta", 2.0, 73.0, "anyloss_fbeta")
    assert fb.hparams == {"L": 73.0, "beta": 2.0}


@pytest.mark.parametrize(
    "name, hp, allowed",
    [
        ("gce", {"q": 0.0}, "0 < q <= 1"),
        ("gce", {"q": 1.5}, "0 < q <= 1"),
        ("gce", {"q": -0.1}, "q in (0, 1]"),
        ("focal", {"gamma": -1.0}, "0 <= gamma"),
        ("mmce", {"lam": 0.0}, "0 < lam"),
        ("ldr_kl", {"lam": -2.0}, "0 < lam"),
        ("aldr_kl", {"lambda0": 0.0}, "0 < lambda0"),
        ("aldr_kl", {"alpha": 1.0}, "1 < alpha"),
        ("label_smoothing", {"eps": 1.0}, "0 <= eps < 1"),
        ("comp_sum", {"tau": -0.5}, "0 <= tau"),
        ("zloss", {"a": 0.0}, "0 < a"),
        ("anyloss_f1", {"L": 0.0}, "0 < L"),
    ],
)
def test_out_of_range_hyperparameters(name, hp, allowed):
    with pytest.raises(ConfigError) as e:
        build_loss(name, n_samples=4, **hp)
    msg = str(e.value)
    assert "out of range" in msg and allowed in msg and name in msg


def test_unknown_hyperparameter_and_types():
    with pytest.raises(ConfigError, match="'focal' has no parameter 'q'.*allowed: gamma"):
        build_loss("focal", q=0.5)
    with pytest.raises(ConfigError, match="'ce' has no parameter 'gamma'.*allowed: none"):
        build_loss("ce", gamma=1.0)
    with pytest.raises(ConfigError, match="has no parameter 'n_samples'"):  # set by the trainer, not a params file
        validate_loss("aldr_kl", {"n_samples": 3})
    with pytest.raises(ConfigError, match="has no parameter 'normalize'"):
        validate_loss("ldr_kl", {"normalize": False})
    with pytest.raises(ConfigError, match="finite number"):
        validate_loss("gce", {"q": "0.5"})
    with pytest.raises(ConfigError, match="n_samples"):
        build_loss("aldr_kl")
    assert validate_loss("gce", {"q": 1}) == {"q": 1.0}
    assert validate_loss("zloss", {"b": -3}) == {"a": 1.0, "b": -3.0}
