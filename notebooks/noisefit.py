# %% [markdown]
# # NoiseFiT: noise fine-tuning against hallucination, with NEFTune and R-Drop baselines
#
# Method card: `shared/methods/noisefit.md` ("Noise Augmented Fine Tuning for Mitigating
# Hallucinations in Large Language Models", 2025; the public v1 code). NoiseFiT measures a
# signal-to-noise ratio per decoder layer, picks the k layers with the largest (or lowest) SNR,
# and fine-tunes with one clean and two noisy forward passes per step:
#
# $$\mathcal{L} = \alpha\,\mathrm{CE}_{clean} + (1-\alpha)\,\tfrac12\textstyle\sum_{k=1,2}\mathrm{KL}(p_{clean}\,\|\,p_{noisy,k}) + \lambda\,\mathrm{KL}(p_{noisy,2}\,\|\,p_{noisy,1})$$
#
# with adaptive noise $h + \varepsilon\cdot\sigma_0\,\mathrm{std}(h)\cdot\mathrm{MAD}\cdot w\cdot f$
# on the selected blocks' outputs. The paper claims that this lowers hallucination against
# plain fine-tuning (SFT) and NEFTune.
#
# **Protocol** (the card's synthetic world). A small GPT was pretrained on biographies of
# fictional people (the `base_model` stage). Every variant fine-tunes a copy of it on the QA of
# the `qa_train` people plus the abstention answer for the `nonexistent_train` names. We then ask
# about people whose biographies were seen but whose QA was never trained (held-out: knowledge
# extraction) and about people who do not exist (the right answer is the abstention). A
# *hallucination* is a concrete wrong value for a real person, and anything but the abstention
# for a non-existent one. The `new_facts` setting also fine-tunes on facts absent from
# pretraining (the stress test of Gekhman et al. 2024), reported separately. The library code
# is in `trustlab.noisefit`; this notebook only calls it.

# %% tags=["parameters"]
profile = None        # e.g. "smoke" (None: the profile key in params.yaml)
params = {}           # overrides of this family's params.yaml section (the runner injects the whole section)
reports_dir = None    # default reports/noisefit
data_dir = None       # default data/

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from trustlab.core.config import load_params, load_section
from trustlab.lm.model_config import ModelConfig
from trustlab.noisefit import experiment as ex
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.variants import get_variant
from trustlab.core.paths import data_dir as default_data_dir
from trustlab.core.paths import reports_dir as default_reports_dir
from trustlab.reporting.plotting import NotebookFigures
from trustlab.reporting.html import write_summary_html

stage_t0 = time.perf_counter()
cfg = load_section(NoiseFitConfig, params, profile=profile)
model_cfg = load_section(ModelConfig, profile=profile)   # tiny (default) or a transformers model
profile_name = profile or load_params()["profile"]
data = Path(data_dir) if data_dir else default_data_dir()
reports = Path(reports_dir) if reports_dir else default_reports_dir(ex.FAMILY)
figures = NotebookFigures(reports / "figures")   # show(fig, name): saved, kept for W&B, shown
show = figures.show



pd.set_option("display.precision", 3)
pd.set_option("display.width", 180)
pd.set_option("display.max_columns", 40)
display(pd.DataFrame([
    {"variant": v, "label": get_variant(v).label, "kind": get_variant(v).kind,
     "selection": get_variant(v).selection or "", "loss terms": get_variant(v).terms or "",
     "forward passes per step": get_variant(v).forward_passes}
    for v in cfg.variants
]))
print(f"profile {profile_name}: {len(cfg.variants)} variants x {len(cfg.seeds)} seeds, {cfg.steps} steps x batch "
      f"{cfg.batch_size}, lr {cfg.lr}; k={cfg.k}, sigma0={cfg.sigma0} ({cfg.noise_scale}), alpha={cfg.alpha}, "
      f"lambda={cfg.lambda_consistency}, T={cfg.temperature}, detach_teacher={cfg.detach_teacher}; "
      f"new-facts setting: {cfg.new_facts_variants if cfg.include_new_facts else 'off'}")

# %% [markdown]
# ## Base model and data
#
# The base model comes from the `base_model` stage (`<data_dir>/models/base`), or, with
# `model.backend: hf`, is the transformers causal LM the `model:` section names (with its LoRA
# adapters and chat template). The evaluation items are a fixed subset of each split, the same
# for every model.

# %%
base_model, tokenizer, base_path = ex.load_base(cfg, data, model_cfg=model_cfg)
world = ex.load_world(data)
items = ex.eval_items(world, cfg.max_eval_items)
print(f"base model {base_path}: {ex.describe_model(base_model)}")
pd.DataFrame(
    [{"split": s, "records": len(world.splits.get(s, [])), "evaluated": len(items.get(s, []))} for s in world.splits]
    + [{"split": "fine-tuning set (default)", "records": len(ex.finetune_pairs(world))},
       {"split": "fine-tuning set (new_facts)", "records": len(ex.finetune_pairs(world, new_facts=True))}]
)

# %% [markdown]
# ## Fine-tuning every variant
#
# Each (variant, seed) fine-tunes a copy of the base model for the same number of steps on
# the same batches; the seeds run in turn, SFT first, so that every step-time ratio compares
# runs measured in the same process, close in time. Every run logs `noisefit/ce`,
# `noisefit/soft`, `noisefit/consistency`, `noisefit/total`, the per-layer SNR and the selected
# layers to its own W&B run (group `noisefit`). The models of seed `export_seed` are exported to
# `<data_dir>/models/noisefit/<variant>/` for the error-detection family.

# %%
results = ex.run_experiment(cfg, data, model=base_model, tokenizer=tokenizer, base_name=str(base_path),
                            trainer=model_cfg.trainer.fit_kwargs())
print(f"{len(results.rows) - 1} runs in {results.seconds:.0f} s; exported: {', '.join(results.exported) or 'none'}")

# %% [markdown]
# ## Results per variant
#
# Mean ± std over seeds (greedy decoding unless marked *sampled*: the paper's protocol of 5
# samples at T = 0.5, top-p 0.9, top-k 40, repetition penalty 1.2, run on the splits in
# `decoding.sample_splits`). `em` = exact match,
# `halluc` = hallucination rate, `abstain_precision/recall` = abstention as a detector of
# non-existent people (over held-out and non-existent people), `mc` = multiple-choice accuracy
# by log-likelihood (true value against same-attribute distractors; the TruthfulQA-MC analogue),
# `agree` = mean share of the modal answer among the 5 samples.

# %%
table = ex.summary_table(results, fmt=True)
display(table.drop(columns=["label"]).rename(columns=ex.METRIC_NAMES))

# %% [markdown]
# ### With new facts in the fine-tuning set
#
# The stress test: the fine-tuning set also holds QA about people whose biographies were
# withheld from pretraining.

# %%
table_nf = ex.summary_table(results, setting="new_facts", metrics=ex.HEADLINE_METRICS + ("em_new_facts",), fmt=True)
if len(table_nf[table_nf.variant != "base"]):
    display(table_nf.drop(columns=["label"]).rename(columns=ex.METRIC_NAMES))
else:
    print("the new-facts setting was not run (include_new_facts: false or no new_facts_variants)")

# %% [markdown]
# ## Hallucination rate by split and variant

# %%
halluc = ex.hallucination_table(results, fmt=True)
display(halluc.drop(columns=["variant"]).rename(columns=ex.hallucination_column))
show(ex.plot_hallucination(results), "hallucination_by_split")
if cfg.decoding.n_samples:
    show(ex.plot_hallucination(results, prefix="s_"), "hallucination_by_split_sampled")

# %% [markdown]
# ## Per-layer SNR and the selected layers
#
# The SNR is measured once per run, on the first fine-tuning batch, before any update (eval
# mode, no gradient): $\mathrm{mean}|h_l| / \mathrm{mean}|\mathrm{noise}(h_l)|$ over 10 draws.
# NoiseFiT-Largest noises the k highest-SNR blocks, NoiseFiT-Lowest the k lowest. As the card
# warns, this SNR is measured on each layer's own hidden state, not on noise propagated
# through the network.

# %%
if results.snr:
    snr = pd.DataFrame(results.snr)
    snr = snr[snr.setting == "default"]
    display(snr.pivot_table(index=["variant", "seed"], columns="layer", values="snr").round(2))
    display(snr[snr.selected].groupby(["variant", "seed"]).layer.apply(sorted).rename("selected layers").to_frame())
show(ex.plot_snr(results), "snr_layers")

# %% [markdown]
# ## Loss components over training
#
# `noisefit/ce` is the clean-pass cross-entropy (for the baselines their own CE, for
# *noise + CE only* the noisy pass's), `noisefit/soft` the mean KL from the clean teacher to
# the two noisy passes, `noisefit/consistency` the KL between the two noisy passes (for R-Drop:
# its symmetric KL between the two dropout passes), `noisefit/total` the optimised loss.

# %%
show(ex.plot_curves(results), "loss_components")

# %% [markdown]
# ## Training cost relative to SFT
#
# The median step time (forward, backward, optimizer step; the first two steps excluded) of
# every run divided by SFT's for the same seed, measured in this run. NoiseFiT does three forward
# passes per step (one clean, two noisy) and backpropagates through all three, so a ratio near 3
# is expected; R-Drop does two.

# %%
steps = ex.step_time_table(results)
display(steps)
show(ex.plot_step_time(results), "step_time_ratio")

# %% [markdown]
# ## Claims
#
# Each row: the effect (method − baseline on the metric, paired by seed) with a Student-t 95%
# CI over seeds. *supported* / *not supported*: the CI excludes 0 in / against the expected
# direction; *inconclusive*: it includes 0. Rows with `issue` 1-4 are the four claims this stage
# tests (1: NoiseFiT vs SFT, 2: NoiseFiT vs NEFTune, 3: Largest vs Lowest, 4: KL-only or
# consistency-only degrades the model); `issue` 0 rows are supplementary.

# %%
claims = ex.make_claims(results)
claims_df = ex.claims_frame(claims)
display(claims_df[["issue", "claim", "metric", "expected", "effect", "ci_low", "ci_high", "n_seeds", "verdict"]])
display(Markdown("\n".join(f"- **{r.claim}** — {r.reading}" for r in claims_df.itertuples())))
for missing in ex.missing_issue_claims(claims):
    print(f"not evaluated (variants not run): {missing}")

# %% [markdown]
# ## Discussion
#
# What the numbers of this run show (generated from the results):

# %%
display(Markdown(ex.findings(results, claims)))

# %% [markdown]
# **Scale and honesty.** These are tiny word-level GPTs on a synthetic world, fine-tuned for a
# few hundred steps on a CPU, not 1B-7B models with LoRA over 1000 steps judged by an external
# LLM. Exact match works here because every value comes from a closed set, so "hallucination"
# is counted exactly rather than judged. The noise scale (sigma0 = 0.01 with one consistent
# convention, the effective training noise of the public v1 code) and k = 2 of the base model's
# few layers are our choices for this scale; they were not tuned towards any result. A
# *not supported* or *inconclusive* verdict here does not refute the paper; it says that at
# this scale, with these seeds, NoiseFiT's effect could not be told apart from plain
# fine-tuning, or went the other way.

# %% [markdown]
# ## Outputs
#
# `metrics.json` (headline numbers with readable names, claims, tables, timing, provenance),
# plot data under `plots/`, figures under `figures/`, a summary page `summary.html`, and the
# W&B summary run with the tables, figures and that page.

# %%
stage_seconds = time.perf_counter() - stage_t0
metrics = ex.write_outputs(results, reports, claims, profile=profile_name, stage_seconds=stage_seconds)
html_path = write_summary_html(reports / "summary.html", "NoiseFiT summary", [
    ("Results per variant (mean ± std over seeds)", table.drop(columns=["label"])),
    ("Hallucination rate by split", halluc.drop(columns=["variant"])),
    ("Step time relative to SFT", steps),
    ("Claims", claims_df.drop(columns=["family"])),
    ("Findings", ex.findings(results, claims)),
    *[(name, fig) for name, fig in figures.items()],
])
ex.log_summary(results, claims, figures, html_path=html_path, config={**cfg.to_dict(), "profile": profile_name},
               stage_seconds=stage_seconds)
print(f"stage time {stage_seconds:.0f} s (fine-tuning and evaluation {results.seconds:.0f} s); "
      f"wrote {reports / 'metrics.json'}")
pd.Series(metrics["headline"]).to_frame("value")
