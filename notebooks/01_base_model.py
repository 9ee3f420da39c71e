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
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from trustlab.core.config import load_params, load_section
from trustlab.lm import base_model as bm
from trustlab.lm.checkpoint import load_pretrained
from trustlab.core.paths import data_dir as default_data_dir
from trustlab.core.paths import reports_dir as default_reports_dir
from trustlab.reporting.plotting import NotebookFigures
from trustlab.tracking import start_run, write_metrics, write_plot

stage_t0 = time.perf_counter()
cfg = load_section(bm.BaseModelConfig, params, profile=profile)
profile_name = profile or load_params()["profile"]
reports = Path(reports_dir) if reports_dir else default_reports_dir(bm.REPORT_STAGE)
data = Path(data_dir) if data_dir else default_data_dir()
gen_dir = bm.generated_dir(data)
model_dir = data / "models" / "base"
figures = NotebookFigures(reports / "figures")   # show(fig, name): saved, kept for W&B, shown
show = figures.show



pd.set_option("display.precision", 3)
pd.set_option("display.width", 160)
pd.set_option("display.max_colwidth", 80)

metrics = bm.load_metrics(model_dir)
curve = bm.load_curve(model_dir)
items = bm.load_eval_items(model_dir)
model, tok = load_pretrained(model_dir)
h = metrics["headline"]
print(f"profile {profile_name}; model {model_dir}")
print(f"GPT L={model.config.n_layer} H={model.config.n_head} d={model.config.n_embd} T={model.config.block_size}, "
      f"{h['n_params'] / 1e6:.2f}M parameters, vocabulary {tok.vocab_size} word pieces "
      f"(answers spaced: {tok.answer_space})")
print(f"trained {h['steps']} steps x batch {metrics['config']['batch_size']} in {h['train_seconds']} s "
      f"({h['tokens_per_s']:.0f} tokens/s); whole stage {h['stage_seconds']} s")
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
    current = bm.data_fingerprint(gen_dir)
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
show(bm.plot_curve(curve), "loss_curve")

# %% [markdown]
# ## Accuracy per task and split
#
# Greedy answers (at most `max_eval_items` per split, a seeded subset), scored by the task's
# checker; 95% Wilson intervals. `trained` marks the splits whose examples are in the mix.
# World-QA responses are also sorted into correct / abstain / hallucination (a concrete value
# of the closed sets, but the wrong one) / other.

# %%
summary = bm.summary_frame(metrics)
display(summary)
show(bm.plot_accuracy(summary), "accuracy")

# %%
show(bm.plot_qa_outcomes(summary), "qa_outcomes")

# %% [markdown]
# ## Error rates for the later families
#
# The error-detection family needs errors to be frequent but not universal (its method card
# asks for roughly 30-60% on some splits); the hallucination family needs held-out and
# non-existent people on which the model can be wrong.

# %%
error_range = bm.error_range_table(summary)
display(error_range)

# %% [markdown]
# ## Sample generations
#
# Up to two correct and two wrong responses per task/split, as recorded by the stage. Then a
# check that the saved model reproduces the recorded greedy responses.

# %%
samples = bm.sample_table(items, per_split=2)
display(samples)

# %%
regen = bm.regeneration_check(model, tok, items, bm.BaseModelConfig.from_dict(metrics["config"]))
print(f"saved model reproduces {int(regen.same.sum())} of {len(regen)} recorded greedy responses")
display(regen[~regen.same] if (~regen.same).any() else regen.head(4))

# %% [markdown]
# ## Where the model is wrong
#
# Accuracy by attribute (QA), by operation and operand size (arithmetic), by number of
# variables (context copy; *copied_other_variable* = the wrong answer is another variable's
# value from the prompt) and by requested length (instructions, with the kind of failure).

# %%
breakdown = bm.error_breakdown(items, gen_dir)
for name, df in breakdown.items():
    display(Markdown(f"**{name}**"))
    display(df)

# %% [markdown]
# ## Findings
#
# Generated from the numbers above.

# %%
display(Markdown(bm.findings(summary, metrics)))

# %% [markdown]
# ## Outputs
#
# `metrics.json` (headline numbers, the evaluation table, the error-range verdicts), plot data
# under `plots/` (the training curve and accuracies, for `dvc plots`), figures under
# `figures/`, and a W&B run with the curve, tables and figures.

# %%
stage_seconds = time.perf_counter() - stage_t0
head = bm.report_headline(metrics, summary)
report = {
    "headline": head,
    "claims": [],
    "eval": metrics["eval"],
    "error_range": error_range.to_dict(orient="records"),
    "mix": metrics["mix"],
    "model": {"config": model.config.to_dict(), "data_fingerprint": fp, "config_digest": metrics.get("config_digest")},
    "run": {"profile": profile_name, "report_seconds": round(stage_seconds, 1)},
}
write_metrics(bm.REPORT_STAGE, report, reports)
write_plot(bm.REPORT_STAGE, "loss_curve", [{k: r[k] for k in ("step", "loss", "lr")} for r in curve], reports)
write_plot(bm.REPORT_STAGE, "accuracy", summary, reports)
with start_run(family="base_model", job_type="report", name=f"base-seed{cfg.seed}",
               config={**cfg.to_dict(), "profile": profile_name}) as run:
    for r in curve[:: max(1, len(curve) // 500)]:
        run.log({"train/loss": r["loss"], "train/lr": r["lr"]}, step=int(r["step"]))
    run.summary(head)
    for name, df in {"accuracy": summary, "error_range": error_range, "samples": samples, **breakdown}.items():
        run.log_table(name, df)
    for name, fig in figures.items():
        run.log_image(name, fig)
print(f"wrote {reports / 'metrics.json'} in {stage_seconds:.1f} s")
pd.Series(head).to_frame("value")
