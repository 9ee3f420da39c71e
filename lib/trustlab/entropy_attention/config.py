"""The ``entropy_attention:`` section of ``params.yaml`` (no torch import: validation is cheap).

Defaults: a CPU-sized setup (byte tokens on Python stdlib source, L = 4, H = 4,
d = 64, T = 64, batch 16, 600 steps), so that the whole default stage fits in about 8 minutes
on a 2-core CPU. The validation perplexity is still falling at the end of a run (the stage
reports by how much; see ``steps``). Regularizer: gamma = 0.2 (paper); lambda is chosen from ``lam_sweep`` on the tuning
half of the validation files (``lam`` is used when the sweep is empty: 0.16, the paper's summed
1e-5 at batch 128 x T 128 as a per-element mean, ``lam = lambda_sum * B * T``); theta
initialised to 0.5 (unpublished), temperatures to 1 (identity; the paper's 1e-2 / 1e-1 use an
unpublished parametrisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trustlab.entropy_attention.variants import DEFAULT_VARIANTS, get_variant, is_variant, unknown_variant_message
from trustlab.core.config import ConfigError, Section


@dataclass(frozen=True)
class EntropyAttentionConfig(Section):
    SECTION = "entropy_attention"

    # what to run
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    """Architecture variants (``trustlab.entropy_attention.variants``; ``-noFLN`` removes the final LN)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Every variant is trained once per seed (same data order and token budget per seed); the
    claims pair the variants by seed, so five seeds or more."""
    workers: int = 0
    """Processes training (variant, seed) runs side by side: 0 = all cores, 1 = serial in this
    process. Results are identical for any value (every run seeds itself)."""

    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 64
    """Context length T (training windows are exactly T bytes)."""
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    # training (identical for every variant)
    steps: int = 600
    """Optimizer steps per run (~35 ms/step on one core at the default size). The stage reports
    the validation perplexity's relative change over the last 20% of steps: at 600 it still falls
    by 2-6%, and ``pipelines/entropy_flatness.py`` measures it at other lengths."""
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    threads: int | None = 1
    """torch intra-op threads. 1 by default: on a shared 2-core machine two threads per process
    oversubscribe the cores and were measured up to 10x slower per step; None = all cores."""

    # entropy regularizer and temperatures
    gamma: float = 0.2
    """Tolerance as a fraction of Emax = log T; in [0, 1)."""
    lam: float = 0.16
    """Coefficient of the per-element *mean* penalty (paper's summed lambda x B x T); used only
    when ``lam_sweep`` is empty, otherwise the sweep chooses it."""
    theta_init: float = 0.5
    temperature_init: float = 1.0
    selective_beta_init: float = 1.5
    softplus_p: float = 15.0
    softplus_offset: float = 1.0

    # lambda tuning: the regularised variant at each lambda, on tuning seeds, scored on the tuning
    # half of the validation files (the test half, which the claims use, is never seen)
    lam_sweep: list[float] = field(default_factory=lambda: [0.0, 0.04, 0.16, 0.64])
    """Candidate lambdas (0 = the regularizer off: 'no effect' can win). Empty: use ``lam``."""
    lam_sweep_variant: str = "EReg(SM(t)+ScFuFFN)"
    tune_seeds: list[int] = field(default_factory=lambda: [100, 101])
    """Seeds of the tuning runs: fewer than the test seeds, and different from them."""

    # gamma sweep (a diagnostic, not tuning: the regularised variant at each gamma at the chosen
    # lambda, scored on the test windows; empty by default to keep the stage in budget)
    gamma_sweep: list[float] = field(default_factory=list)
    gamma_sweep_variant: str = "EReg(SM(t)+ScFuFFN)"
    gamma_sweep_seeds: list[int] = field(default_factory=lambda: [0])

    # measurement
    log_every: int = 25
    """Entropy and the validation loss are measured on a fixed probe batch (tuning windows) every
    ``log_every`` steps (and at step 0): the validation curves."""
    probe_windows: int = 32
    val_windows: int = 96
    """Test windows (the test half of the validation files): the claims' metrics."""
    tune_windows: int = 64
    """Tuning windows (the other half of the validation files): lambda selection and curves."""
    eval_batch_size: int = 32
    overload_threshold: float = 0.95
    """A head is overloaded when its mean entropy > this x the uniform-causal maximum."""
    collapse_threshold: float = 0.1
    """A head has collapsed when its mean entropy < this many nats."""
    divergence_loss: float | None = None
    """A training loss above this (or non-finite) stops the run as diverged; None = 2 ln(vocab)."""
    overhead_steps: int = 8
    """Steps timed per path when measuring the entropy-measurement overhead (0 = skip)."""
    wandb_images: bool = True

    # corpus slice (the data stage's code corpus, split by file)
    max_train_bytes: int = 2_000_000
    max_val_bytes: int = 400_000

    def validate(self) -> None:
        self._check_variants("variants", self.variants)
        self.check_range("seeds", 0)
        if not self.seeds:
            self.fail("seeds", "at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            self.fail("seeds", "each seed at most once")
        self.check_range("workers", 0)
        for key in ("n_layer", "n_head", "n_embd", "block_size", "steps", "batch_size", "log_every",
                    "probe_windows", "val_windows", "tune_windows", "eval_batch_size", "max_train_bytes", "max_val_bytes"):
            self.check_range(key, 1)
        self.check_range("block_size", 2)
        if self.n_embd % self.n_head:
            self.fail("n_embd", f"a multiple of n_head = {self.n_head}")
        self.check_range("mlp_ratio", 0, lo_open=True)
        self.check_range("dropout", 0, 1, hi_open=True)
        self.check_range("lr", 0, lo_open=True)
        self.check_range("warmup_steps", 0)
        self.check_range("min_lr_ratio", 0, 1)
        self.check_range("weight_decay", 0)
        self.check_range("grad_clip", 0, lo_open=True)
        self.check_range("threads", 1)
        self.check_range("gamma", 0, 1, hi_open=True)
        self.check_range("gamma_sweep", 0, 1, hi_open=True)
        self.check_range("lam", 0)
        self.check_range("lam_sweep", 0)
        if len(set(self.lam_sweep)) != len(self.lam_sweep):
            self.fail("lam_sweep", "each lambda at most once")
        self.check_range("tune_seeds", 0)
        if self.lam_sweep:
            self._check_variants("lam_sweep_variant", [self.lam_sweep_variant])
            if not get_variant(self.lam_sweep_variant).entropy_reg:
                self.fail("lam_sweep_variant", "a variant with the entropy regularizer (EReg(...))")
            if not self.tune_seeds or len(set(self.tune_seeds)) != len(self.tune_seeds):
                self.fail("tune_seeds", "at least one seed, each at most once, when lam_sweep is not empty")
        self.check_range("theta_init", 0, 1)
        self.check_range("temperature_init", 0, lo_open=True)
        self.check_range("softplus_p", 0, lo_open=True)
        self.check_range("softplus_offset", 0)
        self.check_range("overload_threshold", 0, 1, lo_open=True)
        self.check_range("collapse_threshold", 0, lo_open=True)
        self.check_range("divergence_loss", 0, lo_open=True)
        self.check_range("overhead_steps", 0)
        self.check_range("gamma_sweep_seeds", 0)
        if self.gamma_sweep:
            self._check_variants("gamma_sweep_variant", [self.gamma_sweep_variant])
            if not get_variant(self.gamma_sweep_variant).entropy_reg:
                self.fail("gamma_sweep_variant", "a variant with the entropy regularizer (EReg(...))")
            if not self.gamma_sweep_seeds:
                self.fail("gamma_sweep_seeds", "at least one seed when gamma_sweep is not empty")

    def _check_variants(self, key: str, names: list[str]) -> None:
        bad = [n for n in names if not is_variant(n)]
        if bad:
            raise ConfigError(f"{self._path()}.{key}: {unknown_variant_message(bad[0])}")
        if key == "variants":
            if not names:
                self.fail(key, "at least one variant")
            if len(set(names)) != len(names):
                self.fail(key, "each variant at most once")

    @property
    def early_layers(self) -> list[int]:
        """The 'early' layers of the overload claim: the first half (at least one)."""
        return list(range(max(1, self.n_layer // 2)))
