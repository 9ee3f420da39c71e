"""Post-hoc calibrators (TS, CA), the data helpers, the config, and a tiny deterministic
Lightning training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustlab.calibration import data as D
from trustlab.calibration.calibrators import CALIBRATORS, CACalibrator, TemperatureScaling, ca_features, ca_loss
from trustlab.calibration.config import CalibrationConfig
from trustlab.core.config import ConfigError


def synthetic_logits(n=2000, k=5, temp=2.0, seed=0):
    """Labels drawn from softmax(z / temp): the calibrating temperature is ``temp``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 4
    y = torch.multinomial((z / temp).softmax(-1), 1, generator=g).squeeze(1)
    return z, y


# -- temperature scaling ------------------------------------------------------------------------


def test_ts_recovers_the_temperature_and_keeps_predictions():
    z, y = synthetic_logits(temp=2.0)
    ts = TemperatureScaling()
    assert ts.temperature == 1.0  # starts at T = 1
    ts.fit(z, y)
    assert ts.temperature == pytest.approx(2.0, rel=0.1)
    assert torch.equal(ts(z).argmax(-1), z.argmax(-1))
    z2, y2 = synthetic_logits(temp=0.5, seed=1)
    assert TemperatureScaling().fit(z2, y2).temperature == pytest.approx(0.5, rel=0.1)


def test_ts_lowers_nll():
    import torch.nn.functional as F

    z, y = synthetic_logits(temp=3.0, seed=2)
    ts = TemperatureScaling().fit(z, y)
    assert F.cross_entropy(ts(z), y) < F.cross_entropy(z, y)


# -- CA -------------------------------------------------------------------------------------------


def test_ca_features_hand_computed():
    z = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0, 2.0]])
    views = [torch.arange(6.0).view(1, 6) * s for s in (1.0, 0.5, -1.0)]
    f = ca_features(z, views, top_k=4)
    top = [1, 3, 4, 5]  # original view's top-4 classes, by logit
    want = torch.cat([v.softmax(-1)[:, top] for v in views], dim=1)
    assert f.shape == (1, 12) and torch.allclose(f, want)


def test_ca_loss_hand_computed():
    conf = torch.tensor([0.9, 0.6, 0.8, 0.3])
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0])  # batch accuracy 0.75
    w = torch.tensor([0.25, 0.25, 0.25, 0.75])
    sq = torch.tensor([0.01, 0.16, 0.04, 0.09])
    assert float(ca_loss(conf, correct)) == pytest.approx(float((w * sq).sum() / w.sum()))
    assert float(ca_loss(conf[:3], correct[:3])) == pytest.approx(float(sq[:3].mean()))  # all correct


def _ca_inputs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 10, generator=g) * 3
    views = [z + torch.randn(n, 10, generator=g) * s for s in (0.5, 1.0, 2.0)]
    y = torch.where(torch.rand(n, generator=g) < 0.7, z.argmax(-1), torch.randint(0, 10, (n,), generator=g))
    return z, views, y


def test_ca_never_changes_predictions_and_bounds_t():
    z, views, y = _ca_inputs()
    ca = CACalibrator(lr=0.05, epochs=10, seed=0).fit(z, y, views)
    zc = ca(z, views)
    assert torch.equal(zc.argmax(-1), z.argmax(-1))
    t = ca.temperatures(z, views)
    assert t.shape == (200,) and float(t.min()) >= 0.1 and float(t.max()) <= 10.0
    # even with extreme weights the clamp holds and argmax is kept
    with torch.no_grad():
        ca.net[2].bias.fill_(-100.0)
    assert float(ca.temperatures(z, views).min()) == pytest.approx(0.1)
    assert torch.equal(ca(z, views).argmax(-1), z.argmax(-1))
    with torch.no_grad():
        ca.net[2].bias.fill_(1e6)
    assert float(ca.temperatures(z, views).max()) == pytest.approx(10.0)


def test_ca_starts_at_identity_fits_and_is_deterministic():
    z, views, y = _ca_inputs(seed=1)
    fresh = CACalibrator(seed=3)
    assert torch.allclose(fresh.temperatures(z, views), torch.ones(200))
    assert torch.allclose(CACalibrator(init_temperature=2.5).temperatures(z, views), torch.full((200,), 2.5))
    a = CACalibrator(lr=1e-2, epochs=15, seed=3).fit(z, y, views)
    b = CACalibrator(lr=1e-2, epochs=15, seed=3).fit(z, y, views)
    assert a.history[-1] < a.history[0]
    assert torch.equal(a(z, views), b(z, views))
    with pytest.raises(ValueError, match="3 transformed views"):
        a(z, views[:2])
    with pytest.raises(ValueError, match="pass views="):
        CACalibrator().fit(z, y)


def test_ca_init_from_ts_starts_at_the_clamped_ts_temperature():
    z, views, y = _ca_inputs(seed=2)
    t_ts = TemperatureScaling(max_iter=50).fit(z, y).temperature
    ca = CACalibrator(epochs=0, init_from_ts=True, ts_max_iter=50).fit(z, y, views)
    assert ca.mean_temperature(z, views) == pytest.approx(t_ts, rel=1e-6)
    low = CACalibrator(epochs=0, init_from_ts=True, t_max=t_ts / 2).fit(z, y, views)
    assert low.mean_temperature(z, views) == pytest.approx(t_ts / 2, rel=1e-6)


def test_calibrator_registry_builds_from_the_config():
    assert CALIBRATORS.names() == ["ts", "ca"]
    assert "Guo et al. 2017" in CALIBRATORS.describe()["ts"] and "z / T(f)" in CALIBRATORS.describe()["ca"]
    cfg = CalibrationConfig.from_dict({"ts_max_iter": 7, "ca": {"top_k": 3, "init": "one", "epochs": 4}})
    ts = CALIBRATORS.get("ts").from_config(cfg, seed=1)
    ca = CALIBRATORS.get("ca").from_config(cfg, seed=5)
    assert ts.max_iter == 7 and not ts.needs_views
    assert (ca.top_k, ca.epochs, ca.seed, ca.init_from_ts, ca.needs_views) == (3, 4, 5, False, True)
    z, views, y = _ca_inputs(seed=4)
    ts.fit(z, y)
    assert ts.mean_temperature(z) == ts.temperature and torch.equal(ts(z, None), ts(z))
    with pytest.raises(ConfigError, match="calibration.calibrators.*'platt'"):
        CalibrationConfig.from_dict({"calibrators": ["ts", "platt"]})


# -- data ---------------------------------------------------------------------------------------


def test_digits_split_is_stratified_disjoint_and_seeded():
    a = D.load_digits_split(0, n_train=200)
    b = D.load_digits_split(0, n_train=200)
    c = D.load_digits_split(1, n_train=200)
    assert a.sizes == {"train": 200, "val": 360, "test": 540}
    ids = [set(a.meta[k].tolist()) for k in ("train_idx", "val_idx", "test_idx")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.meta["test_idx"], c.meta["test_idx"])
    assert np.bincount(a.y_train).min() >= 19  # stratified: ~20 per class
    assert a.x_train.dtype == np.float32 and 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    ds = D.IndexedDataset(a.x_train, a.y_train)
    x, y, i = ds[5]
    assert int(i) == 5 and x.shape == (64,) and int(y) == a.y_train[5]
    xb, yb, ib = ds[[1, 2, 3]]
    assert ib.tolist() == [1, 2, 3] and xb.shape == (3, 64)


def test_breast_cancer_split_is_standardised():
    s = D.load_breast_cancer_split(0)
    assert s.num_classes == 2 and s.x_train.shape[1] == 30
    assert np.allclose(s.x_train.mean(0), 0, atol=1e-5) and np.allclose(s.x_train.std(0), 1, atol=1e-3)


@pytest.mark.parametrize("kind", D.SHIFTS)
def test_shifts_grow_with_severity(kind):
    imgs = D.load_digits_split(0).images_test[:100]
    dist = []
    for sev in range(1, 6):
        out = D.shift_images(imgs, kind, sev, seed=0)
        assert out.shape == imgs.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        assert np.array_equal(out, D.shift_images(imgs, kind, sev, seed=0))
        dist.append(float(np.abs(out - imgs).mean()))
    assert dist[0] > 0 and dist[-1] > dist[0]
    with pytest.raises(ConfigError, match="1, 2, 3, 4 or 5"):
        D.shift_images(imgs, kind, 6)


def test_label_noise_rates_and_kinds():
    y = np.repeat(np.arange(10), 30)
    for kind in D.NOISE_KINDS:
        noisy = D.add_label_noise(y, 0.3, kind, 10, seed=0)
        changed = noisy != y
        assert changed.sum() == 90
        if kind == "flip":
            assert np.array_equal(noisy[changed], (y[changed] + 1) % 10)
    assert np.array_equal(D.add_label_noise(y, 0.0, "uniform", 10, 0), y)
    with pytest.raises(ConfigError, match="uniform"):
        D.add_label_noise(y, 0.3, "pairwise", 10, 0)


def test_annotators_and_soft_labels():
    y = np.repeat(np.arange(4), 50)
    crowd = D.simulate_annotators(y, 4, n_annotators=6, labels_per_item=3, acc_range=(0.6, 0.9), seed=0)
    assert crowd.labels.shape == (200, 6) and ((crowd.labels >= 0).sum(1) == 3).all()
    assert np.allclose(crowd.confusions.sum(2), 1)
    for m in D.SOFT_METHODS:
        q = D.soft_labels(crowd.labels, 4, m)
        assert q.shape == (200, 4) and np.allclose(q.sum(1), 1) and (q >= 0).all(), m
    vote = D.soft_labels(crowd.labels, 4, "vote")
    assert set(np.unique(vote * 3).round(6)) <= {0.0, 1.0, 2.0, 3.0}
    agg = D.aggregate_soft_labels(crowd.labels, 4)
    assert np.allclose(agg, np.mean([D.soft_labels(crowd.labels, 4, m) for m in D.SOFT_METHODS], 0), atol=1e-6)
    mv = D.majority_vote(crowd.labels, 4, seed=0)
    assert (mv == y).mean() > 0.8 and (agg.argmax(1) == y).mean() > 0.8
    counts = D.vote_counts(crowd.labels, 4)
    assert (counts[np.arange(200), mv] == counts.max(1)).all()
    assert D.SOFT_METHODS == ("vote", "dawid_skene", "accuracy_weighted", "softmax")  # registry order
    with pytest.raises(ConfigError, match="unknown soft-label method 'votes'.*did you mean 'vote'"):
        D.soft_labels(crowd.labels, 4, "votes")


def test_ca_views():
    imgs = D.load_digits_split(0).images_val[:20]
    views = D.ca_views(imgs)
    assert len(views) == 3 and all(v.shape == (20, 64) for v in views)
    assert all(not np.allclose(v, imgs.reshape(20, -1)) for v in views)


# -- config ------------------------------------------------------------------------------------


def test_config_validates_losses_and_hyperparameters():
    cfg = CalibrationConfig.from_dict({})
    assert cfg.hparams_for("gce") == {"q": 0.7}
    assert CalibrationConfig.from_dict({"loss_params": {"gce": {"q": 0.05}}}).hparams_for("gce") == {"q": 0.05}
    with pytest.raises(ConfigError, match="'focall'.*allowed values are.*'focal'"):
        CalibrationConfig.from_dict({"losses": ["ce", "focall"]})
    with pytest.raises(ConfigError, match="0 < q <= 1"):
        CalibrationConfig.from_dict({"loss_params": {"gce": {"q": 2.0}}})
    with pytest.raises(ConfigError, match="0 < lam"):
        CalibrationConfig.from_dict({"loss_params": {"ldr_kl": {"lam": 0}}})
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        CalibrationConfig.from_dict({"loss_params": {"nope": {}}})
    with pytest.raises(ConfigError, match="calibration.noise.losses"):
        CalibrationConfig.from_dict({"noise": {"losses": ["anyloss_f1"]}})
    with pytest.raises(ConfigError, match="calibration.anyloss.losses"):
        CalibrationConfig.from_dict({"anyloss": {"losses": ["ce"]}})
    with pytest.raises(ConfigError, match="calibration.ca.t_max"):
        CalibrationConfig.from_dict({"ca": {"t_min": 5.0, "t_max": 1.0}})


# -- tiny training run ----------------------------------------------------------------------------

TINY = {
    "seeds": [0],
    "n_train": 60,
    "epochs": 2,
    "hidden": 16,
    "shifts": ["noise"],
    "severities": [2],
    "ca": {"epochs": 3},
    "enable_progress_bar": False,
}


def _run(cfg, loss, seed):
    from trustlab.calibration.run import evaluate_model, prepare_seed, train_one

    data = prepare_seed(cfg, seed)
    res = train_one(cfg, loss, seed, data.split.x_train, data.split.y_train)
    rows, _, _ = evaluate_model(cfg, res.model, data)
    return res, rows


def test_tiny_training_is_deterministic_and_calibrators_keep_accuracy():
    cfg = CalibrationConfig.from_dict(TINY)
    res_a, a = _run(cfg, "ce", 0)
    _, b = _run(cfg, "ce", 0)
    _, c = _run(cfg, "ce", 1)
    assert a == b  # same seed -> identical metrics (and temperatures)
    assert a != c
    by = {r["variant"]: r for r in a}
    assert set(by) == {"raw", "ts", "ca"}
    assert by["raw"]["id_acc"] == by["ts"]["id_acc"] == by["ca"]["id_acc"]
    assert by["raw"]["shift_acc"] == by["ts"]["shift_acc"] == by["ca"]["shift_acc"]
    assert len(res_a.train_losses) == 2


@pytest.mark.parametrize("loss", ["aldr_kl", "bias", "soft_kl"])
def test_training_passes_sample_ids_and_features(loss):
    cfg = CalibrationConfig.from_dict({**TINY, "calibrators": []})
    res, rows = _run(cfg, loss, 0)
    assert all(np.isfinite(v) for v in res.train_losses)
    if loss == "aldr_kl":
        lo, hi = res.loss.bounds
        lam = res.loss.lambdas
        assert float(lam.min()) >= lo and float(lam.max()) <= hi and (lam != res.loss.lambda0).all()


def test_waveforms_are_generated_balanced_seeded_and_split_by_seed():
    from trustlab.calibration.data import load_waveforms_split, make_waveforms

    x, y = make_waveforms(200, length=40, seed=0)
    assert x.shape == (200, 40) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [20] * 10
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    x2, y2 = make_waveforms(200, length=40, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(make_waveforms(200, seed=1)[0], x)
    a, b = load_waveforms_split(0, n_samples=300, n_train=60), load_waveforms_split(1, n_samples=300, n_train=60)
    assert a.sizes["train"] == 60 and a.sizes["test"] == 90 and a.num_classes == 10
    assert not np.array_equal(a.x_test, b.x_test)
    # the classes are learnable but overlap: a linear model is far from chance and far from perfect
    from sklearn.linear_model import LogisticRegression

    big = load_waveforms_split(0, n_samples=2000)
    acc = LogisticRegression(max_iter=300).fit(big.x_train, big.y_train).score(big.x_test, big.y_test)
    assert 0.3 < acc < 0.9
