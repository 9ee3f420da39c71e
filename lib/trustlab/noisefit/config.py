"""The ``noisefit:`` section of ``params.yaml`` (no torch import, so params validation is cheap).

Defaults follow the paper's public v1 code (docs/methods/noisefit.md) where it applies to our scale:

* beta = 0.1, 10 SNR draws, alpha = 0.5, lambda = 0.1, T = 1;
* ``noise_scale: sigma0`` — one noise function, ``base_std = sigma0 * std(h)``, both for the SNR
  and for training. ``sigma0_squared`` reproduces v1, which measures the SNR with ``sigma0`` but
  trains with ``sigma0**2`` (see ``trustlab.noisefit.noise``);
* ``sigma0 = 0.01``: the noise v1 actually trains with at its default 0.1 (0.1**2 = 0.01), now
  used consistently. (v1's 0.1 applied at full strength gives a per-layer SNR of about 1.5 on our
  base GPT — noise 60% the size of the signal — and the noisy passes' CE goes above 4 nats; at
  0.01 the SNR is about 15.) Layer *selection* does not depend on sigma0 or the convention;
* ``detach_teacher: true`` (v2 and the sane choice); ``false`` is the paper's v1 behaviour;
* k = 2 rather than the paper's 3 of 16-32 layers: our base GPT has few layers, and with
  k = 3 of 4 the Largest and Lowest sets would share two layers;
* the noise scales are tuned, not fixed (``trustlab.noisefit.tuning``): NoiseFiT's ``sigma0``
  (for Largest and for Lowest) and NEFTune's ``alpha`` each get the same number of trials on a
  validation split of people that the test metrics never see, ``tune_seeds`` seeds each; the
  chosen values then run on every seed of ``seeds``. ``sigma0`` / ``neftune_alpha`` are used
  as they are only when ``tune: false`` (or for a variant that is not swept);
* decoding: greedy plus the paper's 5 samples at T = 0.5, top-p 0.9, top-k 40, repetition
  penalty 1.2.

``k`` is checked against the model's depth with :meth:`NoiseFitConfig.check_model` before any
training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trustlab.core.config import ConfigError, Section
from trustlab.noisefit.variants import VARIANTS

# the variants that answer a claim (trustlab.noisefit.claims); R-Drop and the other loss-term
# ablations (noisefit_ce_only, noisefit_no_consistency, noisefit_no_soft) answer none and stay
# runnable through ``variants``
DEFAULT_VARIANTS = [
    "sft",
    "neftune",
    "noisefit_largest",
    "noisefit_lowest",
    "noisefit_kl_only",
    "noisefit_consistency_only",
]


# the evaluation splits (greedy decoding and multiple choice run on all of them)
EVAL_SPLITS = ("qa_train", "qa_heldout", "new_facts", "nonexistent_test")


@dataclass(frozen=True)
class DecodingConfig(Section):
    """How answers are decoded for evaluation: greedy, and the paper's sampling protocol.

    The sampling protocol (5 samples per prompt) costs about six times a greedy pass, so it runs
    on ``sample_splits`` only: by default the two splits the claims are about (held-out and
    non-existent people)."""

    SECTION = "noisefit.decoding"

    greedy: bool = True
    n_samples: int = 5  # 0 switches the sampling protocol off
    sample_splits: list[str] = field(default_factory=lambda: ["qa_heldout", "nonexistent_test"])
    temperature: float = 0.5
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.2
    max_new_tokens: int = 8  # answers are one value: a word, or a year of 4 digit tokens
    batch_size: int = 128

    def validate(self) -> None:
        self.check_range("n_samples", 0)
        self.check_subset("sample_splits", list(EVAL_SPLITS), nonempty=False)
        self.check_range("temperature", 0, lo_open=True)
        self.check_range("top_p", 0, 1, lo_open=True)
        self.check_range("top_k", 1)
        self.check_range("repetition_penalty", 0, lo_open=True)
        self.check_range("max_new_tokens", 1)
        self.check_range("batch_size", 1)
        if not self.greedy and (self.n_samples == 0 or not self.sample_splits):
            self.fail("n_samples", "at least one protocol: greedy: true, or n_samples >= 1 with sample_splits")


@dataclass(frozen=True)
class NoiseFitConfig(Section):
    SECTION = "noisefit"

    # what to run
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    export_seed: int = 0  # the seed whose fine-tuned models go to <data_dir>/models/noisefit/<variant>/
    export: bool = True
    base_model: str = "models/base"  # relative to data_dir (or absolute)

    # SNR and noise
    k: int = 2
    sigma0: float = 0.01
    noise_scale: Literal["sigma0", "sigma0_squared"] = "sigma0"
    beta: float = 0.1
    snr_draws: int = 10

    # hybrid loss
    alpha: float = 0.5
    lambda_consistency: float = 0.1
    temperature: float = 1.0
    detach_teacher: bool = True

    # baselines
    neftune_alpha: float = 5.0
    rdrop_dropout: float = 0.1
    rdrop_weight: float = 1.0

    # the validation split and the equal-budget tuning (trustlab.noisefit.tuning)
    validation_fraction: float = 0.5  # share of held-out and of non-existent test people kept for validation
    tune: bool = True
    tune_seeds: list[int] = field(default_factory=lambda: [100, 101])  # seeds of every sweep trial
    sigma0_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3])
    neftune_alpha_grid: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0, 10.0])

    # fine-tuning (shared by every variant)
    steps: int = 80
    lr: float = 2e-4
    batch_size: int = 32
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 5

    # data
    include_new_facts: bool = True  # also fine-tune new_facts_variants with new_facts QA (stress test)
    new_facts_variants: list[str] = field(default_factory=lambda: ["sft", "noisefit_largest"])
    max_train_examples: int | None = None  # cap on the fine-tuning set (smoke)

    # evaluation
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    max_eval_items: int = 200  # per evaluation split (a fixed subset, the same for every model)
    threads: int | None = None
    workers: int = 0  # parallel runs (trustlab.core.parallel): 0 = every core, 1 = serial in this process

    def validate(self) -> None:
        allowed = list(VARIANTS)
        self.check_subset("variants", allowed)
        if len(set(self.variants)) != len(self.variants):
            self.fail("variants", "each variant at most once")
        self.check_subset("new_facts_variants", allowed, nonempty=False)
        if not self.seeds:
            self.fail("seeds", "at least one seed (three or more for confidence intervals)")
        self.check_range("seeds", 0)
        if len(set(self.seeds)) != len(self.seeds):
            self.fail("seeds", "distinct seeds")
        if self.export_seed not in self.seeds:
            self.fail("export_seed", f"one of seeds = {self.seeds}")
        self.check_range("k", 1)
        self.check_range("sigma0", 0, lo_open=True)
        self.check_range("beta", 0)
        self.check_range("snr_draws", 1)
        self.check_range("alpha", 0, 1)
        self.check_range("lambda_consistency", 0)
        self.check_range("temperature", 0, lo_open=True)
        self.check_range("neftune_alpha", 0, lo_open=True)
        self.check_range("rdrop_weight", 0)
        if "rdrop" in self.variants or "rdrop" in self.new_facts_variants:
            self.check_range("rdrop_dropout", 0, 1, lo_open=True, hi_open=True)
        else:
            self.check_range("rdrop_dropout", 0, 1, hi_open=True)
        self.check_range("steps", 1)
        self.check_range("lr", 0, lo_open=True)
        self.check_range("batch_size", 1)
        self.check_range("warmup_steps", 0)
        self.check_range("weight_decay", 0)
        self.check_range("grad_clip", 0)
        self.check_range("log_every", 1)
        self.check_range("max_train_examples", 1)
        self.check_range("max_eval_items", 1)
        self.check_range("threads", 1)
        self.check_range("workers", 0)
        self.check_range("validation_fraction", 0, 1, lo_open=True, hi_open=True)
        if not self.tune_seeds or len(set(self.tune_seeds)) != len(self.tune_seeds):
            self.fail("tune_seeds", "at least one seed, distinct")
        self.check_range("tune_seeds", 0)
        for name in ("sigma0_grid", "neftune_alpha_grid"):
            grid = getattr(self, name)
            if not grid or len(set(grid)) != len(grid) or min(grid) <= 0:
                self.fail(name, "distinct values > 0")
        if len(self.sigma0_grid) != len(self.neftune_alpha_grid):
            self.fail("neftune_alpha_grid", f"as many trials as sigma0_grid ({len(self.sigma0_grid)}): equal budgets")

    def check_model(self, n_layer: int) -> None:
        """Raise a ConfigError when ``k`` exceeds the model's number of decoder layers."""
        if self.k > n_layer:
            raise ConfigError(
                f"{self._path()}.k = {self.k} is out of range: the model has {n_layer} decoder layers, "
                f"so allowed 1 <= k <= {n_layer}"
            )
