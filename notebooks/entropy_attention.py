# %% [markdown]
# # Entropy-guided attention: entropic overload, the entropy regularizer and nonlinearity-reduced LMs
#
# Method background: `docs/methods/entropy_attention.md`
# (Jha & Reagen 2025, arXiv 2501.03489). The claim: removing LayerNorm and the FFN
# nonlinearity from a decoder-only LM drives the early layers' attention heads towards uniform
# attention (*entropic overload*) and deeper ones towards one-hot attention (*entropy
# collapse*); an entropy regularizer with learnable per-head thresholds, plus learnable
# attention temperatures, recovers part of the lost perplexity.
#
# We train every architecture variant from scratch on byte-level Python source (the data
# stage's stdlib code corpus, split by file) with the same token budget and seeds, and measure
# per-head attention entropy: raw, and normalised by the uniform-causal maximum
# $\frac{1}{T}\sum_{i=1}^{T}\log i$ (3.878 nats at $T = 128$, not $\log T$). The library code is
# in `trustlab.entropy_attention`; this notebook only calls it.

# %% tags=["parameters"]
profile = None        # e.g. "smoke" (None: the profile key in params.yaml)
params = {}           # overrides of this family's params.yaml section (the runner injects the whole section)
reports_dir = None    # default reports/<family>
data_dir = None       # default data/

# %%
import pandas as pd
from IPython.display import Markdown, display

from trustlab.entropy_attention import figures as fig
from trustlab.entropy_attention import report, run, tables
from trustlab.entropy_attention.claims import FAMILY, claim_rows
from trustlab.entropy_attention.config import EntropyAttentionConfig
from trustlab.entropy_attention.variants import get_variant
from trustlab.reporting.notebook import close_stage, open_stage

stage = open_stage(FAMILY, EntropyAttentionConfig, params, profile=profile, data_dir=data_dir,
                   reports_dir=reports_dir)
cfg, show = stage.cfg, stage.show
pd.set_option("display.width", 160)
display(pd.DataFrame(
    [{"variant": v, "description": get_variant(v).label, **get_variant(v).gpt_fields(), "entropy_reg": get_variant(v).entropy_reg}
     for v in cfg.variants]
).drop(columns=["attention_kwargs"]))
print(f"profile {stage.profile}: {len(cfg.variants)} variants x {len(cfg.seeds)} seeds, {cfg.steps} steps x batch "
      f"{cfg.batch_size} x T {cfg.block_size}; model L={cfg.n_layer} H={cfg.n_head} d={cfg.n_embd}; "
      f"gamma={cfg.gamma}, lambda from {cfg.lam_sweep or [cfg.lam]} (mean penalty), theta_init={cfg.theta_init}; "
      f"workers={cfg.workers}")

# %% [markdown]
# ## Data
#
# Train and validation files come from the corpus's file-level split; they are packed into
# windows of exactly $T$ bytes. Every run draws the same batches for a given seed. The
# validation files are split again, alternately file by file, into *tuning* windows (choosing
# λ, and the validation curves) and *test* windows (every metric of the claims), so the claims
# are measured on windows that no choice has seen.

# %%
corpus = run.load_corpus(cfg, stage.data)
pd.Series(corpus.info).to_frame("value")

# %% [markdown]
# ## Tuning λ, then training every variant
#
# First the regularised variant is trained at every λ of `lam_sweep` on the `tune_seeds`
# (fewer than, and different from, the test seeds); the λ with the lowest mean perplexity on the
# tuning windows is kept (λ = 0, the regularizer off, is a candidate). No other knob of any
# variant is tuned: learning rate, schedule and steps are the same for all. Then each
# (variant, seed) is trained from scratch, the regularised variants at the chosen λ; entropy
# and the loss are measured on a fixed probe batch of tuning windows at step 0 and every
# `log_every` steps, and on all tuning and test windows at the end. A non-finite or blown-up
# loss stops that run and is recorded (see *Divergence*). Runs go to `workers` processes side
# by side; one W&B run per trained model holds its entropy over training and its heatmaps.

# %%
results = run.run_stage(cfg, corpus, on_run=report.wandb_run_hook(cfg))
timing = tables.timing_table(results)
print(f"{len(timing)} runs in {results.seconds:.0f} s on {results.workers} worker(s), "
      f"{results.cpu_seconds / max(results.seconds, 1e-9):.2f} cores busy on average; "
      f"median {timing.train_s.median():.1f} s of training per run")
timing.groupby("variant", sort=False)[["steps", "train_s", "ms_per_step", "monitor_s", "eval_s"]].mean()

# %% [markdown]
# ## The λ sweep (dose-response)
#
# Each λ of the sweep against the perplexity and the share of overloaded heads, both on the
# tuning windows, for every tuning seed; the ringed point is the chosen λ.

# %%
lam_sweep = tables.lam_sweep_table(results)
display(lam_sweep)
if len(lam_sweep):
    show(fig.plot_lam_sweep(lam_sweep), "lam_sweep")
print(f"chosen lambda: {results.chosen_lam:g}")

# %% [markdown]
# ## Has training flattened?
#
# Validation perplexity of the probe batch (tuning windows) over training. The flatness measure
# is the relative change of that perplexity over the last 20% of the steps (near 0: flat;
# negative: still improving).

# %%
flatness = tables.flatness_table(results)
display(flatness)
show(fig.plot_validation_curves(results), "validation_curves")

# %% [markdown]
# ## Entropy-measurement overhead
#
# Measured on the baseline, same batches, interleaved (the machine is shared): a training step
# on the fused fast path; the same step asking for the attention probabilities and computing
# every head's entropy (what measuring on *every* step would cost); and one probe measurement.
# The stage measures only on logging steps; the realised cost comes from the runs themselves.
# (The regularised variants need the probabilities on every step anyway: their cost per step
# is in the timing table above.) These timings go to `timing.json`, not to the metrics.

# %%
overhead = run.measure_overhead(cfg, corpus)
display(tables.overhead_table(overhead, run.realised_overhead(results), cfg.log_every))

# %% [markdown]
# ## Validation perplexity
#
# Perplexity per byte-level token on the test windows (mean ± std over the seeds that did not
# diverge); bits per token ≈ bits per byte.

# %%
ppl = tables.perplexity_table(results)
display(ppl[["variant", "label", "val_ppl", "bits_per_token", "seeds_ok", "seeds_diverged"]])
show(fig.plot_perplexity(ppl), "perplexity")

# %% [markdown]
# ## Entropy heatmaps
#
# Layer × head mean attention entropy on the test windows (eval mode), averaged over
# the seeds that did not diverge: raw (nats; colour scale up to the uniform-causal maximum) and normalised by it.

# %%
show(fig.plot_heatmaps(results, normalised=False), "entropy_heatmaps_raw")

# %%
show(fig.plot_heatmaps(results, normalised=True), "entropy_heatmaps_normalised")

# %% [markdown]
# ## Per-layer entropy over training
#
# Mean normalised entropy of each layer on the probe batch. At initialisation every head is
# close to uniform (normalised entropy ≈ 1); what matters is which layers stay there.

# %%
show(fig.plot_entropy_curves(results, normalised=True), "entropy_over_training")

# %% [markdown]
# ## Head-entropy bins, overload and collapse
#
# Fraction of heads in each quartile of the normalised entropy, overloaded heads (above
# `overload_threshold` of the uniform-causal maximum) and collapsed heads (below
# `collapse_threshold` nats), mean over seeds. The paper reports about 90% of the baseline's
# heads in the middle bins and 58% of SM+G's heads in the top bin.

# %%
bins = tables.head_bin_table(results)
display(bins)
show(fig.plot_head_bins(bins), "head_bins")

# %% [markdown]
# ## Divergence
#
# Runs stopped by a non-finite loss or a loss above the divergence threshold (2 ln V unless
# configured), and runs with a numerical error. Their final model is that of an early, broken
# run, so they are left out of every other table and figure (perplexity, entropies, bins, θ and
# temperatures) and of the claims' seed pairs.

# %%
div_summary, div_runs = tables.divergence_table(results)
display(div_summary)
if len(div_runs):
    display(div_runs)
else:
    print("no run diverged")

# %% [markdown]
# ## γ sweep
#
# A diagnostic, not tuning (empty by default, to keep the stage in budget): the regularised
# variant at each tolerance γ (fraction of $E_{max} = \log T$ inside which no penalty applies)
# at the chosen λ, against perplexity, the top-bin fraction and early-layer entropy.

# %%
sweep = tables.gamma_sweep_table(results)
display(sweep)
if len(sweep):
    show(fig.plot_gamma_sweep(sweep), "gamma_sweep")

# %% [markdown]
# ## Learned θ and temperatures
#
# θ (layer × head) of the regularised variants, initialised to `theta_init`; the paper's learned
# values lie around 0.2-0.5. Temperatures (head × position per layer) of the SM(t) variants,
# initialised to 1 (identity; white). The penalty compares every query's entropy with the same
# θ·log T although a query at position i can reach at most log i, so it pushes early positions'
# entropy up (t > 1) and late positions' down (t < 1) — a property of the paper's formula.

# %%
show(fig.plot_theta(results), "theta")

# %%
show(fig.plot_temperature(results), "temperature")

# %% [markdown]
# ## Claims
#
# Each row compares two variants on one metric, paired by seed: the effect (method − baseline)
# with its 95% interval, the test, and the verdict by the project's one rule
# (`trustlab.core.claims`): *supported* / *not supported* when the two-sided test gives
# p < 0.05 in / against the expected direction, *inconclusive* otherwise, *not evaluated* when
# fewer than two seeds have both runs finished or a variant was not run. Shares (entropy
# normalised by its maximum, overloaded heads) have their intervals clipped to the feasible
# range of a difference of two shares.

# %%
claims = claim_rows(results)
claims_df = pd.DataFrame(claims)
display(claims_df[["id", "claim", "metric", "expected", "n", "effect", "ci_low", "ci_high", "test", "p_value",
                   "verdict", "note"]])

# %% [markdown]
# ## Discussion
#
# What the numbers of this run show (generated from the results):

# %%
display(Markdown(report.findings(results, claims, overhead)))

# %% [markdown]
# **Scale.** These are tiny models trained for the token budget printed above, not GPT-2 on
# 2.1B CodeParrot tokens, and their validation perplexity is still falling when training stops
# (see the flatness table): the effects are those of a short, fixed training budget. With few seeds the interval is wide,
# so *inconclusive* means the effect could not be separated from seed noise; a *not supported*
# verdict at this scale does not refute the paper.

# %% [markdown]
# ## Outputs
#
# `metrics.json` (headline numbers, claims, tables), `timing.json` (wall times and the
# entropy-measurement overhead), plot data under `plots/`, figures under `figures/`, and a W&B
# summary run with the tables and figures.

# %%
outputs = report.stage_outputs(results, claims, overhead)
metrics = close_stage(
    stage,
    outputs,
    log_summary=lambda _html: report.log_summary(
        results,
        {"perplexity": ppl.drop(columns=["label"]), "head_bins": bins, "claims": claims_df, "gamma_sweep": sweep,
         "lam_sweep": lam_sweep, "flatness": flatness, "divergence": div_summary, "timing": timing},
        stage.figures,
        config={**cfg.to_dict(), "profile": stage.profile},
    ),
)
pd.Series(metrics["headline"]).to_frame("value")
