# %% [markdown]
# # The pretrained base model
#
# The `base_model` stage (`pipelines/pretrain_base.py`) pretrains a tiny GPT from scratch on
# the synthetic world's biographies (people in `qa_train` and `qa_heldout`), the `qa_train`
# questions (mixed training), and the arithmetic, instruction-following and context-copy
# tasks, then answers every task/split greedily and scores the answers with the data
# checkers. The hallucination, error-detection and calibration families start from this
# model. This report reads the saved model directory (`<data_dir>/models/base`): the training
# curve, accuracy per task and split, sample generations and where the model is wrong. The
# library code is in `trustlab.lm.base_model`; this notebook only calls it.

# %% tags=["parameters"]
profile = None        # e.g. "smoke" (None: the profile key in params.yaml)
params = {}           # overrides of the base_model section (the runner injects the whole section)
reports_dir = None    # default reports/01_base_model
data_dir = None       # default data/

# %%
import pandas as pd
from IPython.display import Markdown, display

from trustlab.lm.base_model import (BaseModelConfig, data_fingerprint, generated_dir, load_curve, load_eval_items,
                                    load_metrics)
from trustlab.lm.base_model import figures as fg
from trustlab.lm.base_model import report, tables
from trustlab.lm.checkpoint import load_pretrained
from trustlab.reporting.notebook import close_stage, open_stage

stage = open_stage(report.REPORT_STAGE, BaseModelConfig, params, profile=profile, data_dir=data_dir,
                   reports_dir=reports_dir)
cfg, show = stage.cfg, stage.show
gen_dir = generated_dir(stage.data)
model_dir = stage.data / "models" / "base"
pd.set_option("display.width", 160)
pd.set_option("display.max_colwidth", 80)

metrics = load_metrics(model_dir)
curve = load_curve(model_dir)
items = load_eval_items(model_dir)
model, tok = load_pretrained(model_dir)
pretraining = report.pretraining_timing(stage.reports)  # reports/base_model/timing.json, when there is one
h = metrics["headline"]
print(f"profile {stage.profile}; model {model_dir}")
print(f"GPT L={model.config.n_layer} H={model.config.n_head} d={model.config.n_embd} T={model.config.block_size}, "
      f"{h['n_params'] / 1e6:.2f}M parameters, vocabulary {tok.vocab_size} word pieces "
      f"(answers spaced: {tok.answer_space})")
print(f"trained {h['steps']} steps x batch {metrics['config']['batch_size']}"
      + (f" in {pretraining['train_seconds']} s ({pretraining['tokens_per_s']:.0f} tokens/s); "
         f"whole stage {pretraining['stage_seconds']} s" if pretraining else ""))
if "train_share_of_peak" in pretraining:
    print(f"training used {pretraining['train_share_of_peak']:.1%} of the measured matmul peak at "
          f"{pretraining['train_threads']} thread(s)"
          + (f" ({pretraining['train_share_of_1thread_peak']:.1%} of one thread's peak)"
             if pretraining.get("train_threads", 1) > 1 and "train_share_of_1thread_peak" in pretraining else "")
          + f"; the stage used {pretraining['cores']} cores on average")
if metrics.get("config") != cfg.to_dict():
    display(Markdown("**Note:** the saved model was trained with other `base_model` params than the current ones; "
                     "run `dvc repro base_model` (or `pipelines/pretrain_base.py`) to rebuild it."))

# %% [markdown]
# ## Training data
#
# Copies of each component per pass over the mix, its segments (texts or prompt/answer
# examples) and tokens. Examples are trained on the answer only; texts on every token. The
# segments are shuffled and packed into rows of the context length. Never in the mix: the
# `qa_heldout` questions, and everything about `new_facts` and non-existent people.

# %%
display(pd.DataFrame(metrics["mix"]))
print("trained prompt/answer splits:", ", ".join(f"{t}/{s}" for t, s in metrics["trained_splits"]))
print("biographies of:", ", ".join(metrics["bio_splits"]))
fp = metrics.get("data_fingerprint")
try:
    current = data_fingerprint(gen_dir)
except (OSError, KeyError):  # the report still renders without the data directory
    current = None
same = "same" if fp == current else "DIFFERENT"
print(f"data fingerprint {str(fp)[:16]} (current data: {str(current)[:16]}; {same})")

# %% [markdown]
# ## Training curve
#
# Cross-entropy per trained token at every step (light) and its moving average; the
# learning-rate schedule on the right.

# %%
show(fg.plot_curve(curve), "loss_curve")

# %% [markdown]
# ## Accuracy per task and split
#
# Greedy answers (at most `max_eval_items` per split, a seeded subset), scored by the task's
# checker; 95% Wilson intervals. `trained` marks the splits whose examples are in the mix.
# World-QA responses are also sorted into correct / abstain / hallucination (a concrete value
# of the closed sets, but the wrong one) / other.

# %%
summary = tables.summary_frame(metrics)
display(summary)
show(fg.plot_accuracy(summary), "accuracy")

# %%
show(fg.plot_qa_outcomes(summary), "qa_outcomes")

# %% [markdown]
# ## Error rates for the later families
#
# The error-detection family needs errors to be frequent but not universal (roughly 30-60% on
# some splits, see docs/methods/error_detection.md); the hallucination family needs held-out and
# non-existent people on which the model can be wrong. The task sizes are matched to the model:
# 1-2 digit additions are learnt in part within the pretraining budget (3-digit ones are the
# out-of-distribution split), and the scratchpad's column additions (2-3 digit operands) leave
# some trajectories with a wrong step for step-level error localisation.

# %%
error_range = tables.error_range_table(summary)
display(error_range)

# %% [markdown]
# ## Sample generations
#
# Up to two correct and two wrong responses per task/split, as recorded by the stage. Then a
# check that the saved model reproduces the recorded greedy responses.

# %%
samples = tables.sample_table(items, per_split=2)
display(samples)

# %%
regen = tables.regeneration_check(model, tok, items, BaseModelConfig.from_dict(metrics["config"]))
print(f"saved model reproduces {int(regen.same.sum())} of {len(regen)} recorded greedy responses")
display(regen[~regen.same] if (~regen.same).any() else regen.head(4))

# %% [markdown]
# ## Where the model is wrong
#
# Accuracy by attribute (QA), by operation and operand size (arithmetic), by number of
# variables (context copy; *copied_other_variable* = the wrong answer is another variable's
# value from the prompt) and by requested length (instructions, with the kind of failure).

# %%
breakdown = tables.error_breakdown(items, gen_dir)
for name, df in breakdown.items():
    display(Markdown(f"**{name}**"))
    display(df)

# %% [markdown]
# ## Findings
#
# Generated from the numbers above.

# %%
display(Markdown(report.findings(summary, metrics)))

# %% [markdown]
# ## Outputs
#
# `metrics.json` (headline numbers, the evaluation table, the error-range verdicts), plot data
# under `plots/` (the training curve and accuracies, for `dvc plots`), figures under
# `figures/`, wall times in `timing.json`, and a W&B run with the curve, tables and figures.

# %%
outputs = report.stage_outputs(metrics, summary, error_range, curve, model.config.to_dict(), pretraining)
close_stage(stage, outputs, log_summary=lambda html: report.log_run(
    cfg, stage.profile, curve, outputs.headline,
    {"accuracy": summary, "error_range": error_range, "samples": samples, **breakdown}, stage.figures))
display(pd.Series(outputs.headline).to_frame("value"))
