# %% [markdown]
# # NoiseFiT: noise fine-tuning against hallucination, with NEFTune and R-Drop baselines
#
# Method background: `docs/methods/noisefit.md` ("Noise Augmented Fine Tuning for Mitigating
# Hallucinations in Large Language Models", 2025). NoiseFiT measures a signal-to-noise ratio
# per decoder layer, picks the k layers with the largest (or lowest) SNR, and fine-tunes with
# one clean and two noisy forward passes per step:
#
# $$\mathcal{L} = \alpha\,\mathrm{CE}_{clean} + (1-\alpha)\,\tfrac12\textstyle\sum_{k=1,2}\mathrm{KL}(p_{clean}\,\|\,p_{noisy,k}) + \lambda\,\mathrm{KL}(p_{noisy,2}\,\|\,p_{noisy,1})$$
#
# with adaptive noise $h + \varepsilon\cdot\sigma_0\,\mathrm{std}(h)\cdot\mathrm{MAD}\cdot w\cdot f$
# on the selected blocks' outputs. The paper claims that this lowers hallucination against
# plain fine-tuning (SFT) and NEFTune.
#
# **Protocol** (a synthetic world). A small GPT was pretrained on biographies of fictional
# people (the `base_model` stage). Every variant fine-tunes a copy of it on the QA of the
# `qa_train` people plus the abstention answer for the `nonexistent_train` names. We then ask
# about people whose biographies were seen but whose QA was never trained (held-out: knowledge
# extraction) and about people who do not exist (the right answer is the abstention). A
# *hallucination* is a concrete wrong value for a real person, and anything but the abstention
# for a non-existent one. The `new_facts` setting also fine-tunes on facts absent from
# pretraining (the stress test of Gekhman et al. 2024), reported separately. The library code
# is in `trustlab.noisefit`; this notebook only calls it.
#
# **Validation and tuning.** Half of the held-out people and half of the non-existent test
# people (a fixed, seeded choice) are *validation* people: the noise scales are chosen on them,
# and every test metric and claim uses only the other half. NoiseFiT's `sigma0` (for Largest
# and for Lowest) and NEFTune's `alpha` get the same budget (the same number of values, from
# "no effect" to "harmful", on fewer seeds) and the same selection rule; the chosen values then
# run on every seed, so the claims compare tuned against tuned.

# %% tags=["parameters"]
profile = None        # e.g. "smoke" (None: the profile key in params.yaml)
params = {}           # overrides of this family's params.yaml section (the runner injects the whole section)
reports_dir = None    # default reports/noisefit
data_dir = None       # default data/

# %%
import pandas as pd
from IPython.display import Markdown, display

from trustlab.core.claims import RULE as CLAIM_RULE
from trustlab.core.config import load_section
from trustlab.lm.model_config import ModelConfig
from trustlab.noisefit import figures, report, tables, tuning
from trustlab.noisefit.claims import claim_rows
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.objectives import build_objective
from trustlab.noisefit.run import describe_model, load_base, run_experiment
from trustlab.noisefit.tracker import WandbTracker
from trustlab.noisefit.variants import get_variant
from trustlab.noisefit.world import SPLIT_BY_PERSON, eval_items, finetune_pairs, load_world
from trustlab.reporting.notebook import close_stage, open_stage

stage = open_stage("noisefit", NoiseFitConfig, params, profile=profile, data_dir=data_dir, reports_dir=reports_dir)
cfg, show = stage.cfg, stage.show
model_cfg = load_section(ModelConfig, profile=profile)   # tiny (default) or a transformers model
pd.set_option("display.width", 180)
pd.set_option("display.max_columns", 40)
display(pd.DataFrame([
    {"variant": v, "label": get_variant(v).label, "objective": get_variant(v).objective,
     "selection": get_variant(v).selection or "", "loss terms": get_variant(v).terms or "",
     "forward passes per step": build_objective(get_variant(v), cfg).forward_passes}
    for v in cfg.variants
]))
print(f"profile {stage.profile}: {len(cfg.variants)} variants x {len(cfg.seeds)} seeds, {cfg.steps} steps x batch "
      f"{cfg.batch_size}, lr {cfg.lr}; k={cfg.k}, noise convention {cfg.noise_scale}, alpha={cfg.alpha}, "
      f"lambda={cfg.lambda_consistency}, T={cfg.temperature}, detach_teacher={cfg.detach_teacher}; "
      f"new-facts setting: {cfg.new_facts_variants if cfg.include_new_facts else 'off'}; "
      f"sweeps: {', '.join(tuning.swept_variants(cfg)) or 'off'} ({len(cfg.sigma0_grid)} values x "
      f"{len(cfg.tune_seeds)} seeds each); workers {cfg.workers or 'all cores'}")

# %% [markdown]
# ## Base model and data
#
# The base model comes from the `base_model` stage (`<data_dir>/models/base`), or, with
# `model.backend: hf`, is the transformers causal LM the `model:` section names (with its LoRA
# adapters and chat template). The evaluation items are a fixed subset of each split, the same
# for every model; held-out and non-existent people are split into test and validation people.

# %%
base_model, tokenizer, base_path = load_base(cfg, stage.data, model_cfg=model_cfg)
world = load_world(stage.data)
parts = {p: eval_items(world, cfg.max_eval_items, part=p, validation_fraction=cfg.validation_fraction)
         for p in ("test", "validation")}
print(f"base model {base_path}: {describe_model(base_model)}")
pd.DataFrame(
    [{"split": s, "records": len(world.splits.get(s, [])), "test items": len(parts["test"].get(s, [])),
      "validation items": len(parts["validation"].get(s, [])),
      "test / validation people": (f"{len({r['person_id'] for r in parts['test'][s]})} / "
                                   f"{len({r['person_id'] for r in parts['validation'][s]})}"
                                   if s in SPLIT_BY_PERSON else "")}
     for s in world.splits]
    + [{"split": "fine-tuning set (default)", "records": len(finetune_pairs(world))},
       {"split": "fine-tuning set (new_facts)", "records": len(finetune_pairs(world, new_facts=True))}]
)

# %% [markdown]
# ## Tuning the noise scales, then fine-tuning every variant
#
# First the sweeps: every value of `sigma0_grid` (NoiseFiT-Largest, NoiseFiT-Lowest) and of
# `neftune_alpha_grid` (NEFTune) with every seed of `tune_seeds`, evaluated greedily on the
# validation people. Then every (variant, seed) at the chosen values. Independent runs go to
# `workers` processes (one torch thread each); every run seeds itself, so the numbers do not
# depend on `workers`.
#
# Each (variant, seed) fine-tunes a copy of the base model for the same number of steps on
# the same batches. Every run logs `noisefit/ce`,
# `noisefit/soft`, `noisefit/consistency`, `noisefit/total`, the per-layer SNR and the selected
# layers to its own W&B run (group `noisefit`). The models of seed `export_seed` are exported to
# `<data_dir>/models/noisefit/<variant>/` for the error-detection family.

# %%
results = run_experiment(cfg, stage.data, model=base_model, tokenizer=tokenizer, base_name=str(base_path),
                         tracker=WandbTracker(cfg.log_every), trainer=model_cfg.trainer.fit_kwargs())
print(f"{len(results.sweep)} sweep runs and {len(results.rows) - 1} test runs on {results.workers} worker(s); "
      f"exported: {', '.join(results.exported) or 'none'}")

# %% [markdown]
# ## The sweeps: the chosen noise scales and the dose-response
#
# One rule for every method (printed below). The x axis of the figure is not the knob but the
# noise actually given: RMS(noise) / RMS(activation) at the injection point, measured during
# training (NoiseFiT: the outputs of the selected blocks; NEFTune: the input embeddings), so the
# two methods can be read on one scale, from "no effect" to "harmful". The ringed point is the
# chosen value. Only validation people are in this section.

# %%
print("rule:", tuning.RULE)
tuned = tables.tuning_table(results)
sweep = tables.sweep_table(results)
if len(tuned):
    display(tuned)
    display(sweep.round(4))
else:
    print("tune: false — every variant runs at its params value")
show(figures.plot_dose_response(results), "dose_response")
display(Markdown("\n".join(f"- {s}" for s in report.sweep_findings(results))))

# %% [markdown]
# ## Results per variant
#
# Test people only. Mean ± std over seeds, greedy decoding unless marked *sampled* (the paper's sampling
# protocol, on the splits in `decoding.sample_splits`; its settings are printed below).
# `em` = exact match, `halluc` = hallucination rate, `abstain_precision/recall` = abstention as
# a detector of non-existent people (over held-out and non-existent people), `mc` =
# multiple-choice accuracy by log-likelihood (true value against same-attribute distractors;
# the TruthfulQA-MC analogue), `agree` = mean share of the modal answer among the samples.

# %%
dec = cfg.decoding
print(f"sampled protocol: {dec.n_samples} samples at T = {dec.temperature}, top-p {dec.top_p}, top-k {dec.top_k}, "
      f"repetition penalty {dec.repetition_penalty}, on {', '.join(dec.sample_splits) or 'no split'}")
table = tables.summary_table(results, fmt=True)
display(table.drop(columns=["label"]).rename(columns=tables.METRIC_NAMES))

# %% [markdown]
# ### With new facts in the fine-tuning set
#
# The stress test: the fine-tuning set also holds QA about people whose biographies were
# withheld from pretraining.

# %%
table_nf = tables.summary_table(results, setting="new_facts", metrics=tables.HEADLINE_METRICS + ("em_new_facts",),
                                fmt=True)
if len(table_nf[table_nf.variant != "base"]):
    display(table_nf.drop(columns=["label"]).rename(columns=tables.METRIC_NAMES))
else:
    print("the new-facts setting was not run (include_new_facts: false or no new_facts_variants)")

# %% [markdown]
# ## Hallucination rate by split and variant

# %%
halluc = tables.hallucination_table(results, fmt=True)
display(halluc.drop(columns=["variant"]).rename(columns=tables.hallucination_column))
show(figures.plot_hallucination(results), "hallucination_by_split")
if cfg.decoding.n_samples:
    show(figures.plot_hallucination(results, prefix="s_"), "hallucination_by_split_sampled")

# %% [markdown]
# ## Per-layer SNR and the selected layers
#
# The SNR is measured once per run, on the first fine-tuning batch, before any update (eval
# mode, no gradient): $\mathrm{mean}|h_l| / \mathrm{mean}|\mathrm{noise}(h_l)|$ over
# `snr_draws` noise draws. It is a property of the base model and the seed's noise draws, so
# every noise-injecting variant of a seed measures the same numbers: the table shows them once
# per seed, with the variants that share them. NoiseFiT-Largest noises the k highest-SNR
# blocks, NoiseFiT-Lowest the k lowest. This SNR is measured on each layer's own hidden state,
# not on noise propagated through the network.

# %%
snr = tables.snr_table(results)
if len(snr):
    display(snr.round(2))
    display(tables.selected_layers_table(results))
show(figures.plot_snr(results), "snr_layers")

# %% [markdown]
# ## Loss components over training
#
# `noisefit/ce` is the clean-pass cross-entropy (for the baselines their own CE, for
# *noise + CE only* the noisy pass's), `noisefit/soft` the mean KL from the clean teacher to
# the two noisy passes, `noisefit/consistency` the KL between the two noisy passes (for R-Drop:
# its symmetric KL between the two dropout passes), `noisefit/total` the optimised loss.

# %%
show(figures.plot_curves(results), "loss_components")

# %% [markdown]
# ## Training cost relative to SFT
#
# The median step time (forward, backward, optimizer step; the first two steps excluded) of
# every run divided by SFT's for the same seed, measured in this run, next to the forward
# passes each objective makes per step. NoiseFiT backpropagates through its clean and both
# noisy passes. The step times in seconds are in `timing.json`.

# %%
steps = tables.step_time_table(results)
display(steps)
show(figures.plot_step_time(results), "step_time_ratio")

# %% [markdown]
# ## Claims
#
# Each row compares a method with a baseline on one metric, paired by seed: the effect
# (method − baseline) with its confidence interval over seeds and the test's p-value; *not
# evaluated* when the runs the claim needs were not made (or its metric is undefined). The
# verdict rule is `trustlab.core.claims`'s, the same for every family (printed below).

# %%
print(CLAIM_RULE)
claims = claim_rows(results.rows, results.tuning)
claims_df = report.claims_table(claims)
display(claims_df[["id", "claim", "metric", "expected", "effect", "ci_low", "ci_high", "n", "p_value", "verdict"]])
display(Markdown("\n".join(f"- **{r.claim}** — {r.reading}" for r in claims_df.itertuples())))

# %% [markdown]
# ## Discussion
#
# What the numbers of this run show (generated from the results):

# %%
display(Markdown(report.findings(results, claims)))

# %% [markdown]
# **Scale and honesty.** These are tiny word-level GPTs on a synthetic world, fine-tuned for a
# few hundred steps on a CPU, not billion-parameter models with LoRA judged by an external LLM.
# Exact match works here because every value comes from a closed set, so "hallucination" is
# counted exactly rather than judged. The noise scales were chosen on validation people with the
# same budget and rule for NoiseFiT and NEFTune, and the claims use the other people only; `k`
# among the base model's few layers is our choice for this scale. A tuned value at the bottom
# of its grid means the best noise found is (almost) no noise.
# A *not supported* or *inconclusive* verdict here does not refute the paper; it says that at
# this scale, with these seeds, NoiseFiT's effect could not be told apart from plain
# fine-tuning, or went the other way.

# %% [markdown]
# ## Outputs
#
# `metrics.json` (headline numbers with readable names, claims, tables, provenance),
# `timing.json` (wall times, step times, CPU time of the workers and the cores used), plot data under `plots/`, figures under
# `figures/`, a summary page `summary.html`, and the W&B summary run with the tables, figures
# and that page.

# %%
findings = report.findings(results, claims)
metrics = close_stage(
    stage,
    report.stage_outputs(results, claims),
    summary=[
        ("Results per variant (mean ± std over seeds)", table.drop(columns=["label"])),
        ("Hallucination rate by split", halluc.drop(columns=["variant"])),
        ("Chosen noise scales (validation people)", tuned),
        ("Noise-scale sweeps (validation people)", sweep),
        ("Per-layer SNR", snr),
        ("Step time relative to SFT", steps),
        ("Claims", claims_df.drop(columns=["family"])),
        ("Findings", findings),
    ],
    summary_title="NoiseFiT summary",
    log_summary=lambda html: report.log_summary(results, claims, dict(stage.figures.items()), html_path=html,
                                                config={**cfg.to_dict(), "profile": stage.profile}),
)
pd.Series(metrics["headline"]).to_frame("value")
