"""The ``calibration:`` section of ``params.yaml``.

Every loss name (main table, label-noise robustness, AnyLoss table) and every per-loss
hyperparameter is checked against the loss registry (:mod:`trustlab.calibration.losses`),
and every calibrator name against the calibrator registry
(:mod:`trustlab.calibration.calibrators`), when the config is loaded, i.e. before anything
is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trustlab.calibration.calibrators import CALIBRATORS
from trustlab.calibration.data import NOISE_KINDS, SHIFTS, SOFT_METHODS
from trustlab.calibration.losses import LOSSES, loss_names, validate_loss
from trustlab.calibration.tuning import DEFAULT_GRIDS, check_grids, tuned_losses
from trustlab.core.config import ConfigError, Section
from trustlab.core.tuning import check_equal_budget

__all__ = [
    "CalibrationConfig",
    "CASettings",
    "NoiseSettings",
    "AnnotatorSettings",
    "AnyLossSettings",
    "LMSettings",
    "SPCSettings",
    "TuningSettings",
    "WaveformSettings",
    "LM_POOLS",
    "MAIN_LOSSES",
    "SOFT_VARIANTS",
]

MAIN_LOSSES = [
    "ce", "label_smoothing", "focal", "flsd53", "brier", "mmce",
    "gce", "mae", "ldr_kl", "aldr_kl", "bias", "zloss",
]
# soft-label table rows: CE on gold / majority-vote labels, or soft_kl on a soft-label method
SOFT_VARIANTS = ("gold", "majority", *SOFT_METHODS, "aggregate")


@dataclass(frozen=True)
class CASettings(Section):
    """Correctness-aware calibrator: transformed views and training (see ``CACalibrator``)."""

    SECTION = "calibration.ca"
    rotation: float = 15.0  # degrees, view 1
    contrast: float = 0.7  # view 2: (x - mean) * contrast + mean + brightness
    brightness: float = 0.1
    shift: int = 1  # view 3: translation in pixels (used when blur == 0)
    blur: float = 0.0  # view 3: Gaussian blur sigma instead of the shift when > 0
    top_k: int = 4
    hidden: int = 5
    t_min: float = 0.1
    t_max: float = 10.0
    lr: float = 1e-3  # paper: 1e-4 x 10 epochs on a large validation set; see CACalibrator
    epochs: int = 100
    batch_size: int = 1000
    init: str = "ts"  # start T at the TS solution ("ts") or at 1 ("one"); the paper inits at random

    def validate(self) -> None:
        self.check_range("rotation", -180, 180)
        self.check_range("contrast", 0, None, lo_open=True)
        self.check_range("brightness", -1, 1)
        self.check_range("shift", 0, 3)
        self.check_range("blur", 0, None)
        self.check_range("top_k", 1, 10)
        self.check_range("hidden", 1, None)
        self.check_range("t_min", 0, None, lo_open=True)
        if self.t_max <= self.t_min:
            self.fail("t_max", f"greater than t_min = {self.t_min}")
        self.check_range("lr", 0, None, lo_open=True)
        self.check_range("epochs", 1, None)
        self.check_range("batch_size", 1, None)
        self.check_choice("init", ["ts", "one"])


@dataclass(frozen=True)
class NoiseSettings(Section):
    """Label-noise robustness table: which losses, noise kinds and rates."""

    SECTION = "calibration.noise"
    losses: list[str] = field(default_factory=lambda: ["ce", "gce", "mae", "ldr_kl", "aldr_kl"])
    kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS))
    rates: list[float] = field(default_factory=lambda: [0.4])  # [0.2, 0.4] adds ~60-110 s
    shifted: bool = False  # also evaluate every shifted test set (slower)

    def validate(self) -> None:
        self.check_subset("losses", loss_names("multiclass"), nonempty=False)
        self.check_subset("kinds", NOISE_KINDS)
        self.check_range("rates", 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class AnnotatorSettings(Section):
    """Simulated crowd annotators and the soft-label table."""

    SECTION = "calibration.annotators"
    n_annotators: int = 15
    labels_per_item: int = 10
    acc_low: float = 0.5
    acc_high: float = 0.9
    concentration: float = 0.5  # Dirichlet over each annotator's confusions (small: few favourites)
    ambiguity: float = 0.6  # share of each label drawn from the item's look-alike distribution
    ambiguity_temperature: float = 0.5  # nearest-centroid softmax temperature (squared pixel distance)
    methods: list[str] = field(default_factory=lambda: list(SOFT_METHODS))  # averaged into "aggregate"
    softmax_temperature: float = 1.0
    variants: list[str] = field(default_factory=lambda: ["majority", "vote", "aggregate"])
    epochs: int | None = None  # training epochs for this table (None: the main table's)

    def validate(self) -> None:
        self.check_range("n_annotators", 1, None)
        self.check_range("labels_per_item", 1, self.n_annotators)
        self.check_range("acc_low", 0.0, 1.0)
        self.check_range("acc_high", self.acc_low, 1.0)
        self.check_range("concentration", 0.0, None, lo_open=True)
        self.check_range("ambiguity", 0.0, 1.0)
        self.check_range("ambiguity_temperature", 0.0, None, lo_open=True)
        self.check_subset("methods", SOFT_METHODS)
        self.check_range("softmax_temperature", 0.0, None, lo_open=True)
        self.check_subset("variants", SOFT_VARIANTS, nonempty=False)
        self.check_range("epochs", 1, None)


@dataclass(frozen=True)
class AnyLossSettings(Section):
    """The binary AnyLoss table on breast cancer (BCE baseline + AnyLoss metrics)."""

    SECTION = "calibration.anyloss"
    losses: list[str] = field(
        default_factory=lambda: ["bce", "anyloss_f1", "anyloss_fbeta", "anyloss_bacc", "anyloss_gmean"]
    )
    hidden: int = 16
    epochs: int = 60
    lr: float = 1e-2
    batch_size: int = 64

    def validate(self) -> None:
        self.check_subset("losses", loss_names("binary"), nonempty=False)
        self.check_range("hidden", 1, None)
        self.check_range("epochs", 1, None)
        self.check_range("lr", 0, None, lo_open=True)
        self.check_range("batch_size", 1, None)


@dataclass(frozen=True)
class SPCSettings(Section):
    """The SPC detector's residual head (``trustlab.calibration.detectors.SPC``), fit on the
    validation split of each (loss, seed) model."""

    SECTION = "calibration.spc"
    hidden: int = 32
    steps: int = 300  # full-batch Adam steps on the validation split
    lr: float = 1e-2
    weight_decay: float = 1e-4
    uncertainty: str = "adjusted_confidence"  # or "discrepancy", the paper's detection score
    consistency_tol: float = 0.05  # the paper's gate: adjust p_c only where |mar_up + mar_down - mar| < tol

    def validate(self) -> None:
        self.check_range("hidden", 1, None)
        self.check_range("steps", 1, None)
        self.check_range("lr", 0, None, lo_open=True)
        self.check_range("weight_decay", 0, None)
        self.check_choice("uncertainty", ["adjusted_confidence", "discrepancy"])  # detectors.SPC_UNCERTAINTIES
        self.check_range("consistency_tol", 0, None, lo_open=True)


@dataclass(frozen=True)
class WaveformSettings(Section):
    """The second main-table dataset: generated 1-D waveform digits (``data.make_waveforms``).
    Same losses, seeds, model and lr as the digits table; temperature scaling only (CA needs
    image views) and no shifted sets."""

    SECTION = "calibration.waveforms"
    enabled: bool = True
    n_samples: int = 4000  # generated once (seed 0), then split by each seed
    length: int = 40
    n_train: int | None = 800  # a stratified subset of the training part
    epochs: int = 60

    def validate(self) -> None:
        self.check_range("n_samples", 100, None)
        self.check_range("length", 8, None)
        self.check_range("n_train", 20, None)
        self.check_range("epochs", 1, None)


@dataclass(frozen=True)
class TuningSettings(Section):
    """Equal-budget tuning of every loss on validation data (``trustlab.calibration.tuning``):
    each tuned loss gets exactly ``trials`` values of its knob (``grids``: loss -> values),
    each trained on every tuning seed's training split and scored on its validation split."""

    SECTION = "calibration.tuning"
    enabled: bool = True
    seeds: list[int] = field(default_factory=lambda: [100])  # disjoint from calibration.seeds
    trials: int = 4  # the budget: values per loss, the same for every loss
    grids: dict[str, list[float]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_GRIDS.items()})

    def validate(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            self.fail("seeds", "at least one non-negative integer seed, each at most once")
        self.check_range("seeds", 0, None)
        self.check_range("trials", 1, None)
        unknown = [k for k in self.grids if k not in loss_names("multiclass")]
        if unknown:
            raise ConfigError(f"{self._path()}.grids: unknown loss {unknown[0]!r}; allowed: "
                              f"{', '.join(map(repr, loss_names('multiclass')))}")  # fmt: skip
        check_grids(self.grids, f"{self._path()}.grids")


LM_POOLS = ["world_qa/qa_train", "world_qa/qa_heldout", "world_qa/new_facts", "arithmetic/test", "arithmetic/ood"]


def _allowed_pools() -> list[str]:
    """Every ``task/split`` the answer checkers cover (``trustlab.data.checkers.CHECKERS``)."""
    from trustlab.data.checkers import CHECKERS
    from trustlab.data.tasks import task_splits

    return [f"{t}/{s}" for t in CHECKERS for s in task_splits(t)]


@dataclass(frozen=True)
class LMSettings(Section):
    """Answer-level calibration of the base language model (``trustlab.calibration.lm``)."""

    SECTION = "calibration.lm"
    enabled: bool = True
    model_dir: str | None = None  # None: <data_dir>/models/base (the base_model stage); relative: under data_dir
    pools: list[str] = field(default_factory=lambda: list(LM_POOLS))  # task/split, answered greedily
    n_items: int | None = 300  # per pool, a seeded sample (None: every record)
    val_frac: float = 0.3  # of each pool's items, for fitting T (the rest is the test set)
    objectives: list[str] = field(default_factory=lambda: ["correctness", "gold_nll"])  # first = primary
    max_new_tokens: int = 12
    batch_size: int = 64
    max_iter: int = 100  # LBFGS iterations for T

    def validate(self) -> None:
        from trustlab.calibration.lm import OBJECTIVES

        self.check_subset("pools", _allowed_pools())
        if len(set(self.pools)) != len(self.pools):
            self.fail("pools", "distinct task/split names")
        self.check_range("n_items", 2, None)
        self.check_range("val_frac", 0.0, 1.0, lo_open=True, hi_open=True)
        self.check_subset("objectives", OBJECTIVES)
        if len(set(self.objectives)) != len(self.objectives):
            self.fail("objectives", f"distinct names from {', '.join(map(repr, OBJECTIVES))}")
        self.check_range("max_new_tokens", 1, 256)
        self.check_range("batch_size", 1, None)
        self.check_range("max_iter", 1, None)


@dataclass(frozen=True)
class CalibrationConfig(Section):
    """Calibration losses, post-hoc calibrators and metrics on digits / breast cancer."""

    SECTION = "calibration"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    losses: list[str] = field(default_factory=lambda: list(MAIN_LOSSES))
    # per-loss hyperparameter overrides, e.g. {"focal": {"gamma": 3}, "zloss": {"a": 1, "b": 2}}
    loss_params: dict[str, dict[str, float]] = field(default_factory=dict)
    # data (digits): stratified split by seed; n_train keeps a stratified subset of the train part
    val_frac: float = 0.2
    test_frac: float = 0.3
    n_train: int | None = 200
    # model + training
    hidden: int = 64
    depth: int = 1
    epochs: int = 150
    lr: float = 1e-2
    batch_size: int = 32
    weight_decay: float = 0.0
    # per-loss weight decay overrides, e.g. {"ce": 0.001}; the tuning sets them for the losses
    # tuned on weight decay (trustlab.calibration.tuning)
    weight_decay_per_loss: dict[str, float] = field(default_factory=dict)
    threads: int = 1  # torch threads of a serial run (workers = 1); each worker process uses one
    workers: int = 0  # processes for the independent (loss, seed) runs: 0 = every core, 1 = serial
    enable_progress_bar: bool | None = None  # None: trustlab.core.progress decides
    # evaluation
    shifts: list[str] = field(default_factory=lambda: list(SHIFTS))
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    n_bins: int = 15
    ts_max_iter: int = 100
    calibrators: list[str] = field(default_factory=lambda: ["ts", "ca"])
    detectors: list[str] = field(default_factory=lambda: ["msp", "entropy", "spc"])  # error detectors, raw model
    spc: SPCSettings = field(default_factory=SPCSettings)
    waveforms: WaveformSettings = field(default_factory=WaveformSettings)
    tuning: TuningSettings = field(default_factory=TuningSettings)
    # sub-tables
    ca: CASettings = field(default_factory=CASettings)
    noise: NoiseSettings = field(default_factory=NoiseSettings)
    annotators: AnnotatorSettings = field(default_factory=AnnotatorSettings)
    anyloss: AnyLossSettings = field(default_factory=AnyLossSettings)
    lm: LMSettings = field(default_factory=LMSettings)

    def validate(self) -> None:
        if not self.seeds:
            self.fail("seeds", "at least one non-negative integer seed")
        self.check_range("seeds", 0, None)
        if len(set(self.seeds)) != len(self.seeds):
            self.fail("seeds", "distinct seeds")
        self.check_subset("losses", loss_names("multiclass"))
        for name, hp in self.loss_params.items():
            if name not in LOSSES:
                raise ConfigError(
                    f"{self._path()}.loss_params: unknown loss {name!r}; allowed: {', '.join(map(repr, LOSSES))}"
                )
            validate_loss(name, hp, where=f"{self._path()}.loss_params")
        self.check_range("val_frac", 0.0, 1.0, lo_open=True, hi_open=True)
        self.check_range("test_frac", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.val_frac + self.test_frac >= 0.95:
            self.fail("test_frac", f"val_frac + test_frac < 0.95 (val_frac = {self.val_frac})")
        self.check_range("n_train", 20, None)
        self.check_range("hidden", 1, None)
        self.check_range("depth", 1, 4)
        self.check_range("epochs", 1, None)
        self.check_range("lr", 0.0, None, lo_open=True)
        self.check_range("batch_size", 1, None)
        self.check_range("weight_decay", 0.0, None)
        for name, wd in self.weight_decay_per_loss.items():
            if name not in LOSSES:
                raise ConfigError(f"{self._path()}.weight_decay_per_loss: unknown loss {name!r}; "
                                  f"allowed: {', '.join(map(repr, LOSSES))}")  # fmt: skip
            if not wd >= 0.0:
                raise ConfigError(f"{self._path()}.weight_decay_per_loss.{name} = {wd!r} is out of range: "
                                  "allowed 0 <= weight_decay")  # fmt: skip
        self._validate_tuning()
        self.check_range("threads", 1, 64)
        self.check_subset("shifts", SHIFTS, nonempty=False)
        self.check_subset("severities", [1, 2, 3, 4, 5], nonempty=bool(self.shifts))
        self.check_range("n_bins", 2, 100)
        self.check_range("ts_max_iter", 1, None)
        self.check_subset("calibrators", CALIBRATORS.names(), nonempty=False)
        self.check_range("workers", 0, 256)
        from trustlab.calibration.detectors import DETECTORS  # torch: kept out of the module import

        self.check_subset("detectors", DETECTORS.names(), nonempty=False)

    def _validate_tuning(self) -> None:
        """Every tuned loss has a grid of exactly ``tuning.trials`` values (the equal budget), and
        no tuning seed is a test seed."""
        t = self.tuning
        if not t.enabled:
            return
        where = f"{self._path()}.tuning.grids"
        used = tuned_losses(self, "digits")  # the waveform table tunes a subset: calibration.losses
        missing = [loss for loss in used if loss not in t.grids]
        if missing:
            raise ConfigError(f"{where}: no grid for {', '.join(map(repr, missing))}; every loss in "
                              f"calibration.losses and calibration.noise.losses needs one of trials = {t.trials} "
                              f"values (or set calibration.tuning.enabled: false)")  # fmt: skip
        check_equal_budget({loss: t.grids[loss] for loss in used}, t.trials, where)
        shared = sorted(set(t.seeds) & set(self.seeds))
        if shared:
            raise ConfigError(f"{self._path()}.tuning.seeds = {t.seeds!r} is not allowed: seed(s) {shared} are "
                              f"also test seeds (calibration.seeds = {self.seeds!r}); tuning seeds must differ")

    def weight_decay_for(self, loss: str) -> float:
        """The weight decay ``loss`` trains with: its ``weight_decay_per_loss`` entry, else ``weight_decay``."""
        return float(self.weight_decay_per_loss.get(loss, self.weight_decay))

    def detector_params(self, name: str, seed: int) -> dict[str, float]:
        """Keyword arguments of detector ``name``: the ``spc`` settings it accepts, and the seed."""
        from trustlab.calibration.detectors import DETECTORS

        values = {**self.spc.to_dict(), "seed": seed}
        return {k: v for k, v in values.items() if k in DETECTORS.parameters(name)}

    def hparams_for(self, loss: str) -> dict[str, float]:
        """The loss's full hyperparameters: registry defaults with this config's overrides."""
        return validate_loss(loss, self.loss_params.get(loss), where=f"{self._path()}.loss_params")
