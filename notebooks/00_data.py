# %% [markdown]
# # The generated data
#
# The `data` stage (`pipelines/generate_data.py`) writes every data set the families use,
# deterministically from the `data:` section of `params.yaml`. This report shows what is
# there: counts per task and split, what each split of the synthetic world is for, the
# attribute distributions, examples of every task, the fingerprints that identify this exact
# data, and token statistics under the base model's tokenizer. The library code is in
# `trustlab.data` (`trustlab.data.describe` for these tables); this notebook only calls it.

# %% tags=["parameters"]
profile = None        # e.g. "smoke" (None: the profile key in params.yaml)
params = {}           # overrides of the data section (the runner injects the whole section)
reports_dir = None    # default reports/00_data
data_dir = None       # default data/

# %%
import pandas as pd
from IPython.display import display

from trustlab.data import describe as dr
from trustlab.data.config import DataConfig
from trustlab.lm.base_model import BaseModelConfig, fit_tokenizer
from trustlab.reporting.notebook import close_stage, open_stage
from trustlab.reporting.outputs import StageOutputs
from trustlab.tracking import start_run

stage = open_stage(dr.STAGE, DataConfig, params, profile=profile, data_dir=data_dir, reports_dir=reports_dir)
cfg, show = stage.cfg, stage.show
gen_dir = dr.generated_dir(stage.data)
pd.set_option("display.width", 160)
pd.set_option("display.max_colwidth", 120)
print(f"profile {stage.profile}; data in {gen_dir}")

# %% [markdown]
# ## Counts per task and split

# %%
counts = dr.counts_frame(gen_dir)
display(counts)
show(dr.plot_counts(counts), "counts")

# %% [markdown]
# ## Splits of the synthetic world
#
# Fictional people with closed-set attributes. The splits decide what the models see:
# biographies of `qa_train` and `qa_heldout` people are pretraining text; only `qa_train`
# questions are trained; `new_facts` people appear only in fine-tuning; `nonexistent` people
# belong to nobody, and the right answer about them is the abstention.

# %%
display(dr.role_frame(gen_dir))

# %% [markdown]
# ## Attribute distributions
#
# Values are drawn from closed sets. The majority share is the accuracy of always answering
# the most common value, a floor for QA accuracy; a normalised entropy near 1 means the values
# are close to uniform.

# %%
dist = dr.attribute_distribution(gen_dir)
display(dr.attribute_summary(gen_dir))
show(dr.plot_attributes(dist), "attributes")

# %% [markdown]
# ## Examples of every task
#
# One person's biographies (paraphrased templates in shuffled orders), then the first records
# of every task and split.

# %%
display(dr.bio_examples(gen_dir, n_people=1))

# %%
display(dr.examples(gen_dir, per_split=2))

# %% [markdown]
# ## Step-level ground truth: the scratchpad task
#
# Column addition written out one column at a time (`x+y+c=s`: the column's digits, the carry
# into it and their sum, whose tens digit is the next carry), then the result. Every step of a
# model's response can be compared with the reference: `trustlab.data.checkers.parse_steps`
# reads the steps and `first_wrong_step` gives the first one that differs (a missing step is
# wrong). Below, the first test records step by step next to a corrupted trajectory (one
# column sum off by one, the rest carried on from it) and the step where it first goes wrong.

# %%
display(dr.scratchpad_steps(gen_dir, n=3))

# %% [markdown]
# ## Fingerprints
#
# The sha256 over every generated file identifies this data exactly (the base model records
# the fingerprint it was trained on). The code corpus is the running interpreter's standard
# library, sorted and deduplicated; its text hash and size are below. *Modified files* lists
# files whose sha256 no longer matches the manifest (it should be empty).

# %%
info = dr.fingerprints(gen_dir)
display(dr.fingerprint_frame(info))
print("modified files:", info["modified_files"] or "none")
if "code_corpus" in info:
    print("code corpus: skipped files by reason", info["code_corpus"]["skipped"])

# %% [markdown]
# ## Token statistics
#
# Under the base model's word-level tokenizer (fit on all generated text, so no token is
# unknown): tokens per example (`<bos> prompt <sep> answer <eos>`) and per biography. The
# dashed line is the base model's default context length.

# %%
base = BaseModelConfig.from_dict({"mix": {"code": 0.0}})  # the base model's defaults, no code corpus
tok = fit_tokenizer(gen_dir, base)
stats = dr.token_stats(gen_dir, tok)
totals = dr.corpus_token_totals(gen_dir, tok)
display(stats)
display(pd.Series(totals).to_frame("value"))
show(dr.plot_token_lengths(stats, base.block_size), "token_lengths")

# %% [markdown]
# ## Outputs
#
# `metrics.json` (headline counts, fingerprints), plot data under `plots/`, figures under
# `figures/`, the stage's wall time in `timing.json`, and a W&B run with the tables and figures.

# %%
head = dr.headline(counts, info, totals, stats)
outputs = StageOutputs(
    stage=dr.STAGE,
    headline=head,
    tables={"counts": counts.astype(object).where(counts.notna(), None)},
    extra={"fingerprints": info, "token_totals": totals, "params": cfg.to_dict()},
    plots={"counts": counts, "token_stats": stats, "attributes": dist},
)


def log_run(html_path):
    with start_run(family="data", job_type="report", name="data-report",
                   config={**cfg.to_dict(), "profile": stage.profile}) as run:
        run.summary(head)
        for name, df in {"counts": counts, "token_stats": stats, "fingerprints": dr.fingerprint_frame(info)}.items():
            run.log_table(name, df)
        for name, fig in stage.figures.items():
            run.log_image(name, fig)


close_stage(stage, outputs, log_summary=log_run)
display(pd.Series(head).to_frame("value"))
