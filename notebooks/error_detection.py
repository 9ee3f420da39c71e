# %% [markdown]
# # Error detection in language-model responses
#
# Method background: [docs/methods/error_detection.md](../docs/methods/error_detection.md) (ReaLMistake, RPC,
# Lee et al.'s Mahalanobis, lm-polygraph, zero-shot statistics, SDM, AEGIS). The question: given a small GPT's answer to a
# task with an objectively checkable answer, which uncertainty scores tell right answers from
# wrong ones, at what cost?
#
# Following lm-polygraph's structure, the model runs **once** per (model, prompt set): a greedy
# response with per-token log-probabilities, full-vocabulary entropies and the hidden states of
# every layer, plus K sampled responses. These statistics are stored on disk, and every detector
# (an *estimator*: a function from statistics to an uncertainty u, higher = more likely wrong)
# runs on them without touching the model. One task per ReaLMistake error category: arithmetic
# (reasoning correctness, including out-of-distribution longer operands), questions about a
# synthetic world (parameterized knowledge, including people who do not exist), "write N words
# about T" (instruction following) and copying a value from the context (context faithfulness).
# Deterministic checkers label every greedy response. The library is `trustlab.error_detection`; this
# notebook only calls it. Detectors are compared per task and averaged over tasks (the headline);
# numbers pooled over all tasks are secondary and labelled *pooled*.

# %% tags=["parameters"]
profile = None        # e.g. "smoke" (None: the profile key in params.yaml)
params = {}           # overrides of this family's params.yaml section (the runner injects the whole section)
reports_dir = None    # default reports/<family>
data_dir = None       # default data/

# %%
import pandas as pd
from IPython.display import Markdown, display

from trustlab.core.config import load_section
from trustlab.core.progress import progress_enabled
from trustlab.core.seeding import seed_everything, set_threads
from trustlab.error_detection import claims as C
from trustlab.error_detection import figures as F
from trustlab.error_detection import report as R
from trustlab.error_detection import run as detect
from trustlab.error_detection import tables as T
from trustlab.error_detection.config import ErrorDetectionConfig
from trustlab.error_detection.estimators import describe_estimators
from trustlab.lm.model_config import ModelConfig
from trustlab.reporting.notebook import close_stage, open_stage

stage = open_stage(detect.FAMILY, ErrorDetectionConfig, params, profile=profile, data_dir=data_dir,
                   reports_dir=reports_dir)
cpu_at_start = detect.cpu_seconds()   # with stage.seconds(): the cores the stage kept busy (timing.json)
cfg, show, reports = stage.cfg, stage.show, stage.reports
model_cfg = load_section(ModelConfig, profile=profile)   # the studied model: tiny (default) or hf
seed_everything(cfg.seed)
threads = set_threads(cfg.threads)
say = print if progress_enabled() else (lambda msg: None)
# every model directory is checked before any work: a missing one names the stage that makes it
model_dirs = detect.check_models(cfg, stage.data, model_cfg)
span = cfg.spans[0]

pd.set_option("display.width", 180)
pd.set_option("display.max_colwidth", 80)
print(f"profile {stage.profile}: models {', '.join(f'{k} = {v}' for k, v in model_dirs.items())}; K = {cfg.k_samples} "
      f"samples (T = {cfg.temperature}, top-p {cfg.top_p}, top-k {cfg.top_k}); max {cfg.max_new_tokens} new tokens; "
      f"{len(cfg.detectors)} detectors x spans {cfg.spans}; {cfg.bootstrap_resamples} bootstrap resamples; "
      f"{threads} torch threads; detectors on {cfg.workers or 'all'} worker processes")
pd.DataFrame(describe_estimators())[["name", "label", "needs_fit", "supervised"]]

# %% [markdown]
# ## Prompts and the fit/test split
#
# Per task, prompts are drawn evenly from the configured data splits. The fit/test split is made
# per task on *groups* (the same prompt text; for world QA the same person and attribute, in any
# paraphrase), so no question is on both sides. Fitted detectors (Mahalanobis, probe, kNN, SDM)
# and F1 thresholds use only the fit split; every metric below is on the test split.

# %%
prompts = detect.load_prompts(cfg, stage.data)
prompts.counts()

# %% [markdown]
# ## Statistics and detectors for the base model
#
# One greedy pass (KV cache, hidden states of every layer recorded at each generated token) and
# K sampled responses per prompt; answers are extracted, labelled by the task checkers and the
# hidden states are pooled over the answer span and over the whole response. Then every detector
# runs on both spans: *answer* = the tokens the checker reads, *response* = every generated token
# including the final `<eos>`. The statistics are stored under `data/detection_stats/` (a pipeline
# output kept between runs) and reused only when the model's files, the prompts, the sampling
# settings and the code that produces them (trustlab.lm and this package's collection code) are all
# unchanged.

# %%
base_model, base_tok = detect.load_studied_model(model_dirs, stage.data, model_cfg)
stats_dir = detect.stats_root(cfg, stage.data)
base = detect.run_model(cfg, "base", base_model, base_tok, prompts, stats_dir, path=str(model_dirs["base"]), inject=True,
                    progress=say)
print(f"statistics {'reused from' if base.reused else 'computed and stored in'} {stats_dir}: greedy "
      f"{base.timing['greedy_s']:.1f} s, sampling {base.timing['sampling_s']:.1f} s, detectors "
      f"{base.timing['detectors_s']:.1f} s")
pd.DataFrame([{"detector": d.key, "status": d.status[:100]} for d in base.dets.values() if not d.ok])

# %% [markdown]
# ## Error rates
#
# Greedy responses judged wrong by the deterministic checkers, per task and source split (the
# target is roughly 30-60% on some tasks, `expected_error_rate`). For world QA the outcome classes are given
# too: a *hallucination* names a concrete wrong value (for a person who does not exist: any
# value), an *abstention* says "unknown" about a real person, *other* is off-format.

# %%
err_table = T.error_rate_table(base.stats, cfg.expected_error_rate)
display(err_table)
show(F.plot_error_rates(err_table), "error_rates")

# %% [markdown]
# ## Per task and averaged over tasks (the headline)
#
# Test AUROC of every detector on each task and its mean over the tasks with at least
# `claims_min_per_class` right and wrong test responses (macro average, also for PRR). The AUROC
# pooled over all test responses is shown last as a secondary number: pooling tasks with different
# error rates rewards a detector for recognising the task. Meta Ranking's cost is its judge calls
# per response (five comparisons with references); every other detector makes none.

# %%
table = T.detector_table(cfg, base.stats, base.dets)
headline_table = T.task_table(table, span, cfg.claims_min_per_class)
show(F.plot_task_auroc(headline_table), "auroc_by_task")
headline_table.sort_values("auroc_macro", ascending=False)

# %% [markdown]
# ## Detector table
#
# Test split, all tasks pooled (secondary). AUROC and AUPRC are threshold-free (AUPRC next to the base error
# rate, which is what a random detector scores); PRR is lm-polygraph's normalised
# prediction-rejection ratio (1 = oracle, 0 = random). F1 is the error class's, at the threshold
# maximising F1 on the fit split (out-of-fold scores for fitted detectors), next to the F1 of
# always answering "error" and of flagging at random at the fit split's base rate. Brackets:
# 95% bootstrap CIs over test responses.

# %%
display(T.display_table(table, "all"))
show(F.plot_detector_auroc(table), "detector_auroc")

# %% [markdown]
# ### Per task

# %%
for task in [t for t in table.task.unique() if t != "all"]:
    display(Markdown(f"**{task}**"))
    display(T.display_table(table, task, span=span))

# %% [markdown]
# Pooled AUROC next to its mean over tasks (tasks with at least `claims_min_per_class` right and
# wrong test responses): the tasks differ in error rate, so a detector that only recognises *which
# task* a prompt belongs to scores above chance pooled and at chance within each task
# (hidden-state detectors can learn exactly that from the fit split); and a detector whose scale
# differs between tasks can rank well within every task and badly pooled.

# %%
within_task = T.within_task_table(table, span, cfg.claims_min_per_class)
within_task

# %% [markdown]
# ## ROC, precision-recall and rejection curves
#
# The three detectors with the highest test AUROC on the primary span (chosen for display only)
# and perplexity as a reference. The rejection curve shows the accuracy of the responses that are
# kept when the most uncertain ones are rejected first; PRR is the area between it and random,
# relative to the oracle's.

# %%
keys = T.top_keys(table, span)
roc, pr, rejection = T.curve_frames(base.stats, base.dets, keys)
show(F.plot_roc_pr(roc, pr, float(base.stats.select(split="test").labels().mean())), "roc_pr")
show(F.plot_rejection(rejection), "rejection_curves")

# %% [markdown]
# ## Which layer knows best
#
# The probe and the Lee et al. Mahalanobis detector fitted on one layer's pooled hidden state at a
# time (layer 0 = embeddings), test AUROC per layer.

# %%
layer_table = T.per_layer_table(cfg, base.stats)
by_layer = layer_table.pivot_table(index="layer", columns=["method", "span"], values="auroc") if len(layer_table) else None
if by_layer is not None and len(by_layer):
    display(by_layer)
else:
    print("no per-layer AUROC: too few wrong or right test responses to fit a detector per layer")
show(F.plot_per_layer(layer_table), "per_layer_auroc")

# %% [markdown]
# ## Cost
#
# Seconds per 1000 responses per detector, generation included: logit detectors need only the
# greedy pass, hidden-state detectors the greedy pass recording hidden states, sampling detectors
# the greedy pass plus K samples. Fitted detectors also pay a one-off fit on the fit split,
# amortised here over this stage's test responses. Wall-clock on a shared CPU.

# %%
cost = T.cost_table(base.stats, base.dets, base.timing)
display(cost[cost.span == span].sort_values("total_s_per_1k"))
show(F.plot_cost(cost, span), "cost")

# %% [markdown]
# ## Injected errors (AEGIS-style)
#
# Correct test responses are corrupted in their answer span (a wrong digit, a swapped attribute
# value, a wrong word count, another variable's value) and scored by teacher forcing, together with
# the unmodified originals. Each detector, fitted on *natural* errors only, then has to tell the
# originals from their corruptions. Sampling-based detectors only apply as *verifiers* here: their
# K samples are the model's own and do not depend on the injected response, so they measure how
# much of the model's sample mass supports the injected answer, not the model's self-agreement.
#
# Two properties of the statistics matter when reading this table. The entropy $H_t$ at an answer
# token is that of the distribution the token is drawn from, so it does not depend on which token
# stands there: for a one-token answer the answer-span entropy of an original and of its corruption
# are equal (AUROC 0.5 by construction). And the hidden state pooled for token $y_t$ is the state
# that *predicts* $y_t$ (lm-polygraph's convention), so answer-span states never contain the last
# answer token itself; the response span, whose last state (predicting `<eos>`) has read the whole
# answer, can see the corruption.

# %%
inj_table = T.injected_table(cfg, base.stats, base.dets, base.injected)
print(f"injections: {base.injected.counts}")
if len(inj_table):
    display(T.injection_examples(base.injected))
    display(inj_table[inj_table.span == span])
else:
    print("no injected errors: no correct test response to corrupt")
show(F.plot_injected(inj_table, span), "injected_vs_natural")

# %% [markdown]
# ## Where did it go wrong? Step-level localisation (CORRECT, adaptation)
#
# The scratchpad task writes column addition step by step (`7+5+0=12; 4+8+1=13; answer 132`), so a
# wrong response has a *first wrong step*: the first step that differs from the right step of its
# column (the ground truth; trajectories without a wrong step are not localised). For scratchpad
# prompts from a fit part and a test part, the base model's greedy trajectory is split into steps,
# and each step is described by its tokens' statistics (min and mean log-probability, max entropy,
# the log-probabilities of the operand, carry and sum digits) and its operation (column, true
# carry-in, whether the column overflows). A localiser points at one step per trajectory:
# *first low-probability step* (the first step whose min token probability is below a threshold
# fitted on the fit split), *max-entropy step*, the *position prior* (the fit split's most common
# first-wrong position: what position alone gives, a reference) and the **CORRECT schema cache**:
# each diagnosed failure of the fit split becomes a schema (its step kind and the standardised
# statistics of its first wrong step); a step scores high when its nearest cached schemata are
# closer than its nearest right steps of the same kind, and the earliest step over a fitted
# threshold is chosen. After each test trajectory is localised its diagnosis is added, so the
# cache grows over the test stream. **Injected errors** (AEGIS-style): a wrong sum digit or a
# dropped carry at a known step of the reference answer, teacher-forced, every earlier step being
# one the model wrote itself. Exact = the chosen step is the first wrong step; within 1 = at most
# one step off. Brackets: 95% bootstrap CIs over trajectories.

# %%
correct_run = detect.run_correct(cfg, base_model, base_tok, stage.data, progress=say)
localisation = T.localisation_table(cfg, correct_run)
growth = T.cache_growth_table(correct_run)
if correct_run is None:
    print("error_detection.correct.enabled is false: step localisation skipped")
else:
    print(f"natural trajectories: fit {correct_run.counts['natural_fit']}, test {correct_run.counts['natural_test']}; "
          f"injected: {correct_run.counts.get('injection_kinds')}; baseline chosen on the fit split: "
          f"{correct_run.baseline}")
    display(T.localisation_display(localisation))
    display(T.localisation_seconds(correct_run))

# %% [markdown]
# ### Cache growth
#
# After the first c test trajectories of the stream have been diagnosed into the cache, the cache
# is frozen and the rest of the stream is localised; the localisers without a cache are scored on
# the same remaining trajectories, so each point compares like with like (the set shrinks as c
# grows, so later points are noisier).

# %%
if len(growth):
    display(growth.pivot_table(index="added", columns="label", values="exact", sort=False))
show(F.plot_cache_growth(growth), "cache_growth")

# %% [markdown]
# ## Fine-tuned models (NoiseFiT exports)
#
# The same prompts, split and detectors on the models listed in `error_detection.models`
# (exported by the `noisefit` stage), on the primary span. Does noise fine-tuning change how
# detectable the remaining errors are? AUROC and PRR per model side by side; for later models,
# the AUROC difference to the first listed model on the same prompts (paired bootstrap over
# prompts). A model that makes fewer errors leaves a different, smaller set of errors to detect,
# so compare AUROC and PRR (threshold-free, normalised by the base rate) rather than F1.

# %%
runs = [base]
if not cfg.models:
    print("error_detection.models is empty: no fine-tuned models to compare (part 4 skipped).")
for name, path in list(model_dirs.items())[1:]:
    m, tok = detect.load_model_dir(path)
    runs.append(detect.run_model(cfg, name, m, tok, prompts, stats_dir, path=str(path), spans=[span], progress=say))
    del m
models_table = T.model_table(cfg, runs)
if len(runs) > 1:
    shown = [c for c in ("auroc", "auroc_task_mean", "prr") if c in models_table]
    display(models_table.pivot_table(index="label", columns="model", values=shown, sort=False))
    display(pd.DataFrame([{"model": r.name, "error_rate": float(r.stats.select(split="test").labels().mean()),
                           "generation_s": r.timing["greedy_s"] + r.timing["sampling_s"]} for r in runs]))
show(F.plot_models(models_table), "models")

# %% [markdown]
# ## Two newer detectors: SPC-UQ and Meta Ranking
#
# **SPC-UQ** (adaptation): at each answer token the classes are the greedy token (probability
# $p_t$) and the rest of the vocabulary. A small residual head, fitted on the fit split, predicts
# the mean absolute residual $\mathrm{mar}_t = E|1\{\text{right}\} - p_t|$ from the token's statistics and
# the pooled hidden state; a calibrated model has $\mathrm{mar}_t = 2p_t(1-p_t)$, so
# $u = \mathrm{mean}_t \sum_c |\mathrm{mar}_c - 2p_c(1-p_c)|$ measures how far the probabilities are from
# describing how often the answer is right. **Meta Ranking** (adaptation): five references
# (query, response, correct?) from the fit split; a learned pairwise comparator (not an LM judge)
# says how likely the target is more reliable than each; votes count for the target when it beats
# a correct reference and against it when it loses to a wrong one. Both appear in every table
# above; their claims below compare them with MSP.

# %%
T.task_table(table, span, cfg.claims_min_per_class).query("detector in ['msp', 'spc_uq', 'meta_ranking']")

# %% [markdown]
# ## Claims
#
# Each claim compares two detectors' test AUROC on this one model: the effect is method minus
# baseline, with a 95% paired bootstrap interval over test responses and the bootstrap's two-sided
# p-value; the verdict follows the project's one rule (`trustlab.core.claims`): *supported* when
# p < 0.05 in the expected direction, *not supported* when p < 0.05 the other way, *inconclusive*
# otherwise, *not evaluated* (with the reason) when a detector did not run or there are too few
# resamples. The interval covers response sampling only, not training-seed variation. AUROC is
# averaged over the tasks that have enough right and wrong test responses (`claims_aggregate:
# task_mean`, as per-benchmark papers report it); each note also gives the pooled value. "The best
# of a group" is always chosen on the fit split, never by test labels. The last claim compares
# exact-step accuracy instead: the CORRECT schema cache against the better no-cache baseline (first
# low-probability step or max-entropy step, chosen by fit-split accuracy), paired over the natural
# test trajectories with a written first wrong step.

# %%
results = detect.Results(cfg, runs, model_dirs, correct=correct_run)
claims = C.claim_rows(cfg, base.stats, base.dets) + C.correct_claim_rows(cfg, correct_run)
claims_df = T.claims_frame(claims)
claims_df[["id", "claim", "metric", "effect", "ci_low", "ci_high", "p_value", "verdict", "reason", "note"]]

# %% [markdown]
# ## F1 at the base rate (a check, not a claim)
#
# ReaLMistake's observation: when most responses are wrong, answering "error" always gets a high
# F1, so F1 can rank a trivial baseline above an informative detector. The detector with the best
# fit-split AUROC is thresholded on the fit split; its test F1 minus the always-error F1 is shown
# with a bootstrap interval next to its AUROC interval. *misleading*: the AUROC interval lies above
# 0.5 while the F1 gain's reaches 0; *credits*: the F1 gain's interval lies above 0; *undecided*
# otherwise.

# %%
f1_check = T.f1_base_rate_check(cfg, base.stats, base.dets)
f1_check

# %% [markdown]
# ## Discussion
#
# What the numbers of this run show (generated from the results):

# %%
findings = R.findings(cfg, base, table, claims, err_table, inj_table, models_table, f1_check, localisation)
display(Markdown(findings))

# %% [markdown]
# **Scale and honesty.** The model is a tiny GPT (about 1M parameters) trained from scratch on the
# generated tasks, so its errors are those of an under-trained model on short answers; a response is
# a handful of tokens, which makes the answer and response spans nearly the same (they differ mostly
# by the final `<eos>`). The zero-shot z statistic tests provenance, not correctness, and is reused
# here as a signal; the SDM-style detector is an adaptation (its exact formula is unverified) and
# Lee et al.'s input perturbation is not applied (it needs the model, not stored statistics).
# Hidden-state detectors are supervised: they learn from the fit split's labels, which the
# logit and sampling detectors never see, so "hidden beats logit" compares a trained detector with
# zero-shot ones. With one model and one seed the CIs are over responses only; they do not cover
# the variation between training runs. The CORRECT schema cache is an adaptation: its schemata are
# vectors of the model's token statistics retrieved by nearest neighbours, not the paper's
# LLM-written schemata read by an LLM; the scratchpad steps are short and of four kinds, and a
# symbolic checker would localise them exactly from the prompt (the localisers never compare a
# step with its right value: they read only the model's statistics and the step's operation).

# %% [markdown]
# ## Outputs
#
# `metrics.json` (headline numbers, claims, tables, the F1 base-rate check), `headline.json`, plot
# data under `plots/`, wall times and the cost table in `timing.json`, figures under `figures/`,
# the stored statistics under `data/detection_stats/`, and one W&B run per model (group `error_detection`) with
# the detector table, the curves and the HTML summary.

# %%
results.usage = {"wall_s": stage.seconds(), "cpu_s": detect.cpu_seconds() - cpu_at_start}
results.usage["cores_used"] = results.usage["cpu_s"] / max(results.usage["wall_s"], 1e-9)
tables = {"detectors": table, "by_task": headline_table, "within_task": within_task, "error_rates": err_table, "cost": cost,
          "per_layer": layer_table, "injected": inj_table, "models": models_table, "claims": claims_df,
          "roc": roc, "pr": pr, "rejection": rejection, "localisation": localisation, "cache_growth": growth}
outputs = R.stage_outputs(results, tables, claims, f1_check,
                          notes={"models": "none listed" if not cfg.models else list(model_dirs)[1:]})
metrics = close_stage(
    stage, outputs, summary_title="error detection: summary",
    summary=[("Claims", claims_df), ("Per task and averaged over tasks", headline_table),
             ("F1 at the base rate (check)", f1_check),
             ("Detectors (test, all tasks)", T.display_table(table, "all")),
             ("Pooled vs within-task AUROC", within_task), ("Error rates", err_table),
             ("Cost", cost[cost.span == span]), ("Injected errors", inj_table),
             ("Step localisation (CORRECT, adaptation)", T.localisation_display(localisation)),
             ("Models", models_table),
             ("Findings", findings)],
    log_summary=lambda html: R.log_runs(results, {**tables, "f1_base_rate_check": f1_check}, stage.figures, claims,
                                        profile=stage.profile, html_path=html, summary=outputs.headline),
)
pd.Series(metrics["headline"]).to_frame("value").head(60)
