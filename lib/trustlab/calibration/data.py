"""Offline data for the calibration family: scikit-learn's bundled digits (8x8, 10 classes) and
breast-cancer (binary) sets, shifted test sets, label noise, simulated crowd annotators with
soft labels, and the CA calibrator's transformed views.

Images are float32 in [0, 1] with shape (N, 8, 8); models see them flattened to 64 inputs.
Everything random takes an explicit seed (``trustlab.core.seeding.rng``), so a split, a shift or an
annotator panel is a pure function of its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from trustlab.core.config import ConfigError
from trustlab.core.registry import Registry
from trustlab.core.seeding import rng

__all__ = [
    "SHIFTS",
    "NOISE_KINDS",
    "SOFT_LABELS",
    "SOFT_METHODS",
    "Split",
    "load_digits_split",
    "load_breast_cancer_split",
    "make_waveforms",
    "load_waveforms_split",
    "IndexedDataset",
    "shift_images",
    "shifted_test_sets",
    "add_label_noise",
    "flip_map",
    "Annotators",
    "simulate_annotators",
    "perceptual_ambiguity",
    "vote_counts",
    "majority_vote",
    "soft_labels",
    "aggregate_soft_labels",
    "ca_views",
]

SHIFTS = ("rotation", "noise", "blur", "contrast", "occlusion")
NOISE_KINDS = ("uniform", "flip")
# soft-labelling methods for crowd labels: (labels (N, A) with -1 = no label, K, temperature) -> (N, K)
SOFT_LABELS: Registry = Registry("soft-label method")

# severity 1..5 -> parameter (chosen so digits accuracy degrades gradually on this scale)
SEVERITY = {
    "rotation": (6.0, 12.0, 18.0, 24.0, 30.0),  # degrees, random sign per image
    "noise": (0.1, 0.2, 0.3, 0.4, 0.5),  # Gaussian std on [0, 1] pixels, then clipped
    "blur": (0.4, 0.6, 0.8, 1.0, 1.2),  # Gaussian blur sigma in pixels
    "contrast": (0.8, 0.65, 0.5, 0.4, 0.3),  # (x - mean) * c + mean
    "occlusion": ((2, 2), (3, 3), (3, 4), (4, 4), (4, 5)),  # zeroed rectangle (h, w) at a random place
}


# -- splits ---------------------------------------------------------------------------------------


@dataclass
class Split:
    """Train / validation / test arrays. ``x_*`` are (N, 64) float32 (digits) or (N, d)
    (tables); ``images_*`` (N, 8, 8) for digits, else None."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    images_train: np.ndarray | None = None
    images_val: np.ndarray | None = None
    images_test: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _stratified_three_way(y: np.ndarray, val_frac: float, test_frac: float, seed: int):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_frac, stratify=y, random_state=seed)
    val_share = val_frac / (1.0 - test_frac)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed + 1)
    return np.sort(train), np.sort(val), np.sort(test)


def load_digits_split(seed: int, val_frac: float = 0.2, test_frac: float = 0.3, n_train: int | None = None) -> Split:
    """scikit-learn's ``load_digits`` (1797 images), pixels scaled to [0, 1], split stratified by
    ``seed``; ``n_train`` keeps a stratified subset of the training part (fewer samples ->
    more test errors to measure calibration with)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise ConfigError(f"val_frac = {val_frac}, test_frac = {test_frac}: need both in (0, 1) with sum < 1")
    d = load_digits()
    images = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    tr, va, te = _stratified_three_way(y, val_frac, test_frac, seed)
    if n_train is not None and n_train < len(tr):
        tr, _ = train_test_split(tr, train_size=n_train, stratify=y[tr], random_state=seed + 2)
        tr = np.sort(tr)
    return Split(
        x_train=images[tr].reshape(len(tr), -1), y_train=y[tr],
        x_val=images[va].reshape(len(va), -1), y_val=y[va],
        x_test=images[te].reshape(len(te), -1), y_test=y[te],
        num_classes=10, images_train=images[tr], images_val=images[va], images_test=images[te],
        meta={"dataset": "sklearn.load_digits", "seed": seed, "train_idx": tr, "val_idx": va, "test_idx": te},
    )


def load_breast_cancer_split(seed: int, val_frac: float = 0.2, test_frac: float = 0.3) -> Split:
    """scikit-learn's ``load_breast_cancer`` (569 x 30, binary), split stratified by ``seed``
    and standardised with the training part's mean and std. Label 1 = benign (sklearn's coding)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = d.data.astype(np.float64)
    y = d.target.astype(np.int64)
    tr, va, te = _stratified_three_way(y, val_frac, test_frac, seed)
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    z = ((x - mu) / sd).astype(np.float32)
    return Split(z[tr], y[tr], z[va], y[va], z[te], y[te], num_classes=2,
                 meta={"dataset": "sklearn.load_breast_cancer", "seed": seed})


# -- 1-D waveform digits (a second, larger 10-class set, generated here) ---------------------------

# Each class is a smooth 1-D curve: a sum of Gaussian bumps (centre, width, height) on [0, 1].
# The shapes are our own; what matters is that classes overlap once the curves are scaled,
# sheared, translated and noised, so that a small MLP makes frequent errors.
WAVE_TEMPLATES = (
    ((0.5, 0.25, 1.0),),
    ((0.3, 0.08, 1.0), (0.7, 0.08, -1.0)),
    ((0.25, 0.1, 1.0), (0.5, 0.1, 1.0), (0.75, 0.1, 1.0)),
    ((0.3, 0.12, -1.0), (0.7, 0.12, 1.0)),
    ((0.2, 0.06, 1.0), (0.6, 0.2, -0.6)),
    ((0.5, 0.06, 1.2), (0.5, 0.3, -0.5)),
    ((0.35, 0.15, 1.0), (0.75, 0.05, 0.8)),
    ((0.15, 0.2, -0.8), (0.65, 0.1, 1.0)),
    ((0.3, 0.05, 1.0), (0.5, 0.05, -1.0), (0.7, 0.05, 1.0)),
    ((0.5, 0.15, -1.0), (0.85, 0.06, 0.7)),
)


def _template(k: int, t: np.ndarray) -> np.ndarray:
    return sum(h * np.exp(-0.5 * ((t - c) / w) ** 2) for c, w, h in WAVE_TEMPLATES[k])


def make_waveforms(n: int, length: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy 1-D digits (``length`` points, 10 balanced classes), in the spirit of MNIST-1D.

    Per sample: the class template, evaluated on a sheared and translated time axis
    (``t' = t + shift + shear * (t - 1/2)``, shift ~ U(-0.25, 0.25), shear ~ U(-0.3, 0.3)),
    scaled by ~ U(0.6, 1.4), plus a random linear trend, correlated noise (white noise smoothed
    by a Gaussian of 2 points, std 0.25) and iid noise (std 0.05); then standardised with the
    whole set's mean and std. A pure function of its arguments; no download."""
    g = rng(seed)
    y = np.repeat(np.arange(10), -(-n // 10))[:n]
    y = y[g.permutation(n)]
    t = np.linspace(0.0, 1.0, length)
    shift = g.uniform(-0.25, 0.25, (n, 1))
    shear = g.uniform(-0.3, 0.3, (n, 1))
    scale = g.uniform(0.6, 1.4, (n, 1))
    trend = g.uniform(-0.3, 0.3, (n, 1)) * (t - 0.5)
    tt = t + shift + shear * (t - 0.5)
    x = np.stack([_template(int(k), tt[i]) for i, k in enumerate(y)]) * scale + trend
    # smoothing white noise with a 2-point Gaussian halves its std: x2 brings it back to about 0.25
    x += 0.5 * ndimage.gaussian_filter1d(g.normal(size=(n, length)), 2.0, axis=1)
    x += 0.05 * g.normal(size=(n, length))
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32), y.astype(np.int64)


def load_waveforms_split(seed: int, n_samples: int = 4000, length: int = 40, val_frac: float = 0.2,
                         test_frac: float = 0.3, n_train: int | None = None) -> Split:  # fmt: skip
    """The waveform set (generated once with seed 0, like a fixed dataset) split stratified by
    ``seed``; ``n_train`` keeps a stratified subset of the training part."""
    from sklearn.model_selection import train_test_split

    x, y = make_waveforms(n_samples, length, seed=0)
    tr, va, te = _stratified_three_way(y, val_frac, test_frac, seed)
    if n_train is not None and n_train < len(tr):
        tr, _ = train_test_split(tr, train_size=n_train, stratify=y[tr], random_state=seed + 2)
        tr = np.sort(tr)
    return Split(x[tr], y[tr], x[va], y[va], x[te], y[te], num_classes=10,
                 meta={"dataset": "waveforms", "seed": seed})


class IndexedDataset(Dataset):
    """Yields ``(x, y, sample_id)``; ``y`` is an integer label or a soft-label row.

    Indexing with a tensor / list of indices returns a whole batch at once, so a
    ``BatchSampler`` with ``batch_size=None`` avoids per-item collation."""

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor):
        self.x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        y = np.asarray(y)
        self.y = torch.as_tensor(y, dtype=torch.float32 if y.dtype.kind == "f" else torch.long)
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        self.ids = torch.arange(len(self.x))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        if isinstance(i, list):
            i = torch.as_tensor(i, dtype=torch.long)
        return self.x[i], self.y[i], self.ids[i]


# -- shifts -------------------------------------------------------------------------------------


def shift_images(images: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """One corruption of (N, 8, 8) images in [0, 1] at severity 1..5 (see ``SEVERITY``);
    output clipped to [0, 1], float32."""
    if kind not in SHIFTS:
        raise ConfigError(f"shift = {kind!r} is not allowed: choose one of {', '.join(SHIFTS)}")
    if severity not in (1, 2, 3, 4, 5):
        raise ConfigError(f"severity = {severity!r} is not allowed: 1, 2, 3, 4 or 5")
    g = rng(seed * 1000 + SHIFTS.index(kind) * 10 + severity)
    x = np.asarray(images, dtype=np.float64)
    v = SEVERITY[kind][severity - 1]
    if kind == "rotation":
        signs = g.choice([-1.0, 1.0], size=len(x))
        out = np.stack([ndimage.rotate(im, s * v, reshape=False, order=1, mode="constant") for im, s in zip(x, signs)])
    elif kind == "noise":
        out = x + g.normal(0.0, v, size=x.shape)
    elif kind == "blur":
        out = ndimage.gaussian_filter(x, sigma=(0, v, v), mode="constant")
    elif kind == "contrast":
        mu = x.mean(axis=(1, 2), keepdims=True)
        out = (x - mu) * v + mu
    else:  # occlusion
        rh, rw = v
        h, w = x.shape[1:]
        out = x.copy()
        r0 = g.integers(0, h - rh + 1, size=len(x))
        c0 = g.integers(0, w - rw + 1, size=len(x))
        for i in range(len(x)):
            out[i, r0[i]:r0[i] + rh, c0[i]:c0[i] + rw] = 0.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def shifted_test_sets(
    images: np.ndarray, shifts: Sequence[str] = SHIFTS, severities: Sequence[int] = (1, 2, 3, 4, 5), seed: int = 0
) -> dict[tuple[str, int], np.ndarray]:
    """``{(shift, severity): flattened images (N, 64)}`` for every requested combination."""
    return {
        (k, s): shift_images(images, k, s, seed).reshape(len(images), -1) for k in shifts for s in severities
    }


# -- label noise --------------------------------------------------------------------------------


def flip_map(num_classes: int) -> np.ndarray:
    """Class-flip targets: each class goes to the next one, ``y -> (y + 1) mod K`` (pair-flip)."""
    return (np.arange(num_classes) + 1) % num_classes


def add_label_noise(y: np.ndarray, rate: float, kind: str, num_classes: int, seed: int) -> np.ndarray:
    """Corrupt a fraction ``rate`` of labels (exactly ``round(rate * N)`` of them, chosen at random).

    ``uniform``: a corrupted label becomes a uniformly chosen *other* class (so the realised noise
    rate is exactly ``rate``). ``flip``: it becomes ``flip_map(K)[y]`` (class-dependent noise)."""
    if kind not in NOISE_KINDS:
        raise ConfigError(f"label noise kind = {kind!r} is not allowed: choose one of {', '.join(NOISE_KINDS)}")
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"label noise rate = {rate!r} is out of range: allowed 0 <= rate < 1")
    g = rng(seed + 7919)
    y = np.asarray(y).copy()
    n_noisy = int(round(rate * len(y)))
    which = g.choice(len(y), size=n_noisy, replace=False)
    if kind == "uniform":
        offset = g.integers(1, num_classes, size=n_noisy)
        y[which] = (y[which] + offset) % num_classes
    else:
        y[which] = flip_map(num_classes)[y[which]]
    return y


# -- crowd annotators and soft labels ------------------------------------------------------------


@dataclass
class Annotators:
    """Simulated crowd labels: ``labels`` (N, A) with -1 where annotator a did not label item i,
    and each annotator's true confusion matrix ``confusions`` (A, K, K) (rows: true class)."""

    labels: np.ndarray
    confusions: np.ndarray
    accuracies: np.ndarray


def perceptual_ambiguity(features: np.ndarray, y: np.ndarray, num_classes: int, temperature: float = 0.5) -> np.ndarray:
    """An item's "which class does it look like" distribution: ``softmax_k(-||x_i - mu_k||^2 / T)``
    with ``mu_k`` the mean input of class k among the given items (a nearest-centroid view of
    the image). Easy items put nearly all mass on their class; ambiguous ones spread it over
    look-alike classes."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    mu = np.stack([x[y == k].mean(0) if (y == k).any() else np.full(x.shape[1], np.inf) for k in range(num_classes)])
    d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    z = -d2 / temperature
    z -= z.max(1, keepdims=True)
    h = np.exp(z)
    return h / h.sum(1, keepdims=True)


def simulate_annotators(
    y: np.ndarray,
    num_classes: int,
    n_annotators: int = 7,
    labels_per_item: int = 5,
    acc_range: tuple[float, float] = (0.5, 0.9),
    concentration: float = 0.5,
    seed: int = 0,
    features: np.ndarray | None = None,
    ambiguity: float = 0.0,
    ambiguity_temperature: float = 0.5,
) -> Annotators:
    """Simulated crowd labels.

    Annotator a has accuracy ``acc_a ~ U(acc_range)`` and a confusion matrix ``C_a`` whose row k
    is ``acc_a`` on k and ``(1 - acc_a) * Dirichlet(concentration)`` over the other classes (a
    small concentration gives each annotator a few favourite confusions). With ``features`` and
    ``ambiguity = rho > 0`` the label of item i is drawn from
    ``rho * h_i + (1 - rho) * C_a[y_i]``, where ``h_i`` is the item's
    :func:`perceptual_ambiguity` -- so, as with real crowds, disagreement concentrates on items
    that look like another class; with ``rho = 0`` errors ignore the item. Each item is labelled
    by ``labels_per_item`` distinct annotators chosen at random.
    """
    if labels_per_item > n_annotators:
        raise ConfigError(f"labels_per_item = {labels_per_item} is out of range: at most n_annotators = {n_annotators}")
    if not 0.0 <= ambiguity <= 1.0:
        raise ConfigError(f"ambiguity = {ambiguity!r} is out of range: allowed 0 <= ambiguity <= 1")
    if ambiguity > 0 and features is None:
        raise ConfigError("ambiguity > 0 needs features= (the items' inputs)")
    g = rng(seed + 104729)
    k = num_classes
    y = np.asarray(y)
    accs = g.uniform(acc_range[0], acc_range[1], size=n_annotators)
    conf = np.zeros((n_annotators, k, k))
    for a in range(n_annotators):
        for c in range(k):
            off = g.dirichlet(np.full(k - 1, concentration))
            conf[a, c] = np.insert(off * (1 - accs[a]), c, accs[a])
    h = perceptual_ambiguity(features, y, k, ambiguity_temperature) if ambiguity > 0 else None
    n = len(y)
    labels = np.full((n, n_annotators), -1, dtype=np.int64)
    for i in range(n):
        who = g.choice(n_annotators, size=labels_per_item, replace=False)
        for a in who:
            p = conf[a, y[i]] if h is None else ambiguity * h[i] + (1 - ambiguity) * conf[a, y[i]]
            labels[i, a] = g.choice(k, p=p / p.sum())
    return Annotators(labels=labels, confusions=conf, accuracies=accs)


def vote_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, K) vote counts from (N, A) crowd labels (-1 = missing)."""
    n = labels.shape[0]
    counts = np.zeros((n, num_classes))
    for a in range(labels.shape[1]):
        ok = labels[:, a] >= 0
        np.add.at(counts, (np.nonzero(ok)[0], labels[ok, a]), 1.0)
    return counts


def majority_vote(labels: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """Most frequent label per item; ties broken at random (seeded)."""
    counts = vote_counts(labels, num_classes)
    g = rng(seed + 15485863)
    jitter = g.uniform(0, 0.5, size=counts.shape)  # < 1, so it only breaks ties
    return np.argmax(counts + jitter * (counts == counts.max(1, keepdims=True)), axis=1)


@SOFT_LABELS.register("vote")
def vote_soft_labels(labels: np.ndarray, k: int, temperature: float = 1.0) -> np.ndarray:
    """The vote distribution ``counts / n_votes``."""
    counts = vote_counts(labels, k)
    return counts / counts.sum(1, keepdims=True)


@SOFT_LABELS.register("dawid_skene")
def dawid_skene(labels: np.ndarray, k: int, temperature: float = 1.0, n_iter: int = 10,
                smoothing: float = 0.01) -> np.ndarray:  # fmt: skip
    """Dawid & Skene (1979) EM posteriors (per-annotator confusion matrices), initialised from vote shares."""
    n, n_a = labels.shape
    post = vote_counts(labels, k)
    post = post / post.sum(1, keepdims=True)
    for _ in range(n_iter):
        prior = post.mean(0) + 1e-12
        conf = np.full((n_a, k, k), smoothing)
        for a in range(n_a):
            ok = labels[:, a] >= 0
            np.add.at(conf[a].T, labels[ok, a], post[ok])  # conf[a, true, given] += post
        conf /= conf.sum(2, keepdims=True)
        logp = np.tile(np.log(prior), (n, 1))
        for a in range(n_a):
            ok = labels[:, a] >= 0
            logp[ok] += np.log(conf[a][:, labels[ok, a]].T)
        logp -= logp.max(1, keepdims=True)
        post = np.exp(logp)
        post /= post.sum(1, keepdims=True)
    return post


@SOFT_LABELS.register("accuracy_weighted")
def accuracy_weighted_soft_labels(labels: np.ndarray, k: int, temperature: float = 1.0) -> np.ndarray:
    """Votes weighted by each annotator's agreement with the majority vote, normalised per item."""
    counts = vote_counts(labels, k)
    mv = counts.argmax(1)
    w = np.zeros(labels.shape[1])
    for a in range(labels.shape[1]):
        ok = labels[:, a] >= 0
        w[a] = (labels[ok, a] == mv[ok]).mean() if ok.any() else 0.0
    weighted = np.zeros_like(counts)
    for a in range(labels.shape[1]):
        ok = labels[:, a] >= 0
        np.add.at(weighted, (np.nonzero(ok)[0], labels[ok, a]), w[a])
    weighted += 1e-12
    return weighted / weighted.sum(1, keepdims=True)


@SOFT_LABELS.register("softmax")
def softmax_soft_labels(labels: np.ndarray, k: int, temperature: float = 1.0) -> np.ndarray:
    """A smoothed vote ``softmax(counts / temperature)``."""
    z = vote_counts(labels, k) / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


SOFT_METHODS = tuple(SOFT_LABELS.names())


def soft_labels(labels: np.ndarray, num_classes: int, method: str, temperature: float = 1.0) -> np.ndarray:
    """One registered soft-labelling method (:data:`SOFT_LABELS`: vote, dawid_skene,
    accuracy_weighted, softmax) applied to crowd labels; rows sum to 1."""
    return SOFT_LABELS.get(method)(labels, num_classes, temperature)


def aggregate_soft_labels(
    labels: np.ndarray, num_classes: int, methods: Sequence[str] = SOFT_METHODS, temperature: float = 1.0
) -> np.ndarray:
    """The aggregate soft label of Singh et al. 2023: the plain average of several soft-labelling
    methods' distributions (float32, rows sum to 1)."""
    if not methods:
        raise ConfigError(f"soft-label methods is empty: give at least one of {', '.join(SOFT_METHODS)}")
    dists = [soft_labels(labels, num_classes, m, temperature) for m in methods]
    agg = np.mean(dists, axis=0)
    return (agg / agg.sum(1, keepdims=True)).astype(np.float32)


# -- CA transformed views ------------------------------------------------------------------------


def ca_views(
    images: np.ndarray, rotation: float = 15.0, contrast: float = 0.7, brightness: float = 0.1, shift: int = 1,
    blur: float = 0.0,
) -> list[np.ndarray]:
    """The three deterministic transformed views the CA calibrator reads, each flattened (N, 64):
    rotation by ``rotation`` degrees; brightness/contrast jitter ``(x - mean) * contrast + mean +
    brightness``; a ``shift``-pixel translation right and down (or, if ``blur > 0``, a Gaussian
    blur of that sigma instead). Greyscale conversion (used in the paper) is meaningless here."""
    x = np.asarray(images, dtype=np.float64)
    n = len(x)
    rot = np.stack([ndimage.rotate(im, rotation, reshape=False, order=1, mode="constant") for im in x]) if n else x
    mu = x.mean(axis=(1, 2), keepdims=True)
    jit = (x - mu) * contrast + mu + brightness
    if blur > 0:
        third = ndimage.gaussian_filter(x, sigma=(0, blur, blur), mode="constant")
    else:
        third = ndimage.shift(x, (0, shift, shift), order=0, mode="constant")
    return [np.clip(v, 0, 1).astype(np.float32).reshape(n, -1) for v in (rot, jit, third)]
