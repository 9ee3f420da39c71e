"""The ``noisefit`` stage: fine-tune the base model with every variant and seed, evaluate
hallucination, build the tables, figures and claims. The notebook calls these functions.

Protocol (method card, "What makes a faithful small-scale test here"):

* **Fine-tuning set** (setting ``default``): the ``qa_train`` QA plus abstention examples (answer
  = the abstention string) for ``nonexistent_train``. Setting ``new_facts`` adds the ``new_facts``
  QA (people whose biographies were withheld from pretraining; Gekhman et al. 2024) and is run
  for ``new_facts_variants`` only, reported separately.
* **Evaluation** on fixed item subsets (the same for every model) of ``qa_train``,
  ``qa_heldout``, ``new_facts`` and ``nonexistent_test``:

  - greedy decoding: exact match (``em_<split>``), hallucination rate (``halluc_<split>``:
    real people -> a concrete wrong value; non-existent people -> anything but the abstention),
    abstention rate, and abstention precision / recall over held-out + non-existent people;
  - the paper's sampling protocol (5 samples, T = 0.5, top-p 0.9, top-k 40, repetition penalty
    1.2): mean exact match / hallucination over samples (``s_em_*``, ``s_halluc_*``) and sample
    agreement (``agree_*``: mean share of the modal answer);
  - multiple choice by log-likelihood (the TruthfulQA-MC analogue): the true value against the
    record's same-attribute distractors (``mc_<split>``); for non-existent people, whether the
    abstention outscores every concrete option (``mc_abstain_nonexistent_test``).
* **Cost**: the median training-step time of every run; ``step_ratio`` = that / SFT's median
  step time for the same seed and setting, measured in the same process.
* **Claims** (``trustlab.stats.claim_from_seeds``, paired by seed, t 95% CI).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.variants import VARIANTS, get_variant

FAMILY = "noisefit"
EVAL_SPLITS = ("qa_train", "qa_heldout", "new_facts", "nonexistent_test")
REAL_EVAL_SPLITS = ("qa_train", "qa_heldout", "new_facts")
SETTINGS = ("default", "new_facts")


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class World:
    splits: dict[str, list[dict[str, Any]]]
    abstain: str
    closed_sets: dict[str, list[str]]


def load_world(data_dir: str | Path) -> World:
    """The synthetic world's QA splits (``data/generated/world/`` or ``<data_dir>/world``)."""
    from trustlab.data.tasks import WORLD_QA_SPLITS, load_people, load_task

    root = _world_root(Path(data_dir))
    people = load_people(root)
    splits = {s: load_task(root, "world_qa", s) for s in WORLD_QA_SPLITS}
    return World(splits=splits, abstain=people["abstain"], closed_sets=people["closed_sets"])


def _world_root(data_dir: Path) -> Path:
    """The directory whose ``world/`` holds the QA (``data_dir`` or ``data_dir/generated``)."""
    for cand in (data_dir, data_dir / "generated"):
        if (cand / "world" / "people.json").exists():
            return cand
    raise FileNotFoundError(
        f"no world/people.json under {data_dir} or {data_dir / 'generated'}: run the data stage first"
    )


def finetune_pairs(world: World, *, new_facts: bool = False) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: qa_train QA + abstention for nonexistent_train (+ new_facts QA)."""
    splits = ["qa_train", "nonexistent_train"] + (["new_facts"] if new_facts else [])
    return [(r["prompt"], r["answer"]) for s in splits for r in world.splits[s]]


def finetune_dataset(
    world: World, tokenizer, block_size: int, *, new_facts: bool = False, max_examples: int | None = None, seed: int = 0
):
    """``PairDataset`` of :func:`finetune_pairs`, optionally a seeded subset of ``max_examples``."""
    from trustlab.lm.training import PairDataset

    pairs = finetune_pairs(world, new_facts=new_facts)
    if max_examples is not None and len(pairs) > max_examples:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_examples, replace=False))
        pairs = [pairs[i] for i in keep]
    return PairDataset(tokenizer, pairs, block_size)


def eval_items(world: World, max_items: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """A fixed subset (at most ``max_items``) of every evaluation split, the same for every model."""
    out = {}
    for i, split in enumerate(EVAL_SPLITS):
        rows = world.splits.get(split, [])
        if len(rows) > max_items:
            idx = np.sort(np.random.default_rng([seed, i]).choice(len(rows), max_items, replace=False))
            rows = [rows[j] for j in idx]
        out[split] = rows
    return out


# ---------------------------------------------------------------------------------------------
# fine-tuning


@dataclass
class FinetuneResult:
    model: Any
    module: Any
    seconds: float
    steps: int
    curve: list[dict[str, Any]]
    step_times: list[float]
    selection: dict[str, Any]

    @property
    def step_time(self) -> float:
        """Median step time, the first two steps (warm-up) excluded when there are more."""
        t = self.step_times[2:] if len(self.step_times) > 4 else self.step_times
        return float(np.median(t)) if t else float("nan")


def finetune(
    base_model,
    tokenizer,
    train_data,
    variant: str,
    seed: int,
    cfg: NoiseFitConfig,
    *,
    on_log: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``base_model`` with ``variant`` for ``cfg.steps`` steps."""
    import torch

    from trustlab.lm.training import fit
    from trustlab.noisefit.training import NoiseFitModule

    model = copy.deepcopy(base_model)
    module = NoiseFitModule(
        model, variant, cfg, pad_id=tokenizer.pad_id, snr_generator=torch.Generator().manual_seed(int(seed))
    )
    res = fit(
        module,
        train_data,
        pad_id=tokenizer.pad_id,
        batch_size=cfg.batch_size,
        max_steps=cfg.steps,
        seed=int(seed),
        threads=cfg.threads,
        grad_clip=cfg.grad_clip or None,
        on_log=on_log,
    )
    model.eval()
    return FinetuneResult(
        model, module, res.seconds, res.steps, list(module.curve), list(module.step_times), module.selection_info()
    )


# ---------------------------------------------------------------------------------------------
# evaluation


def classify(text: str, record: dict[str, Any]) -> str:
    """The shared checker's label (``trustlab.data.checkers.classify_qa``):
    ``correct | abstain | hallucination | other``; for a non-existent person ``correct`` means
    it abstained."""
    from trustlab.data.checkers import classify_qa

    return classify_qa(record, text)


def abstained(label: str, record: dict[str, Any]) -> bool:
    return label == "abstain" or (not record.get("exists", True) and label == "correct")


def is_hallucination(label: str, record: dict[str, Any]) -> bool:
    """Real person: asserts a concrete wrong value of the asked attribute. Non-existent
    person: anything but the abstention."""
    if record.get("exists", True):
        return label == "hallucination"
    return label != "correct"


def evaluate(
    model, tokenizer, items: dict[str, list[dict]], world: World, cfg: NoiseFitConfig, seed: int = 0
) -> dict[str, float]:
    """Every metric of one model on the evaluation items -> a flat dict (see the module doc)."""
    from trustlab.data.checkers import normalize
    from trustlab.lm.generation import generate

    dec = cfg.decoding
    out: dict[str, float] = {}
    greedy_outcomes: dict[str, list[str]] = {}
    for split, rows in items.items():
        if not rows:
            continue
        prompts = [r["prompt"] for r in rows]
        if dec.greedy:
            g = generate(model, tokenizer, prompts, max_new_tokens=dec.max_new_tokens, batch_size=dec.batch_size)
            outcomes = [classify(t, r) for t, r in zip(g.texts, rows)]
            greedy_outcomes[split] = list(zip(outcomes, rows))
            _rates(out, "", split, outcomes, rows)
        if dec.n_samples > 0:
            s = generate(
                model, tokenizer, prompts, max_new_tokens=dec.max_new_tokens, do_sample=True,
                temperature=dec.temperature, top_p=dec.top_p, top_k=dec.top_k,
                repetition_penalty=dec.repetition_penalty, num_return_sequences=dec.n_samples,
                seed=int(seed), batch_size=dec.batch_size,
            )  # fmt: skip
            n = dec.n_samples
            outcomes = [classify(t, rows[pi]) for t, pi in zip(s.texts, s.prompt_index)]
            _rates(out, "s_", split, outcomes, [rows[pi] for pi in s.prompt_index])
            agree = []
            for i in range(len(rows)):
                answers = [normalize(t) for t in s.texts[i * n : (i + 1) * n]]  # checkers.normalize
                agree.append(Counter(answers).most_common(1)[0][1] / n)
            out[f"agree_{split}"] = float(np.mean(agree))
        out.update(multiple_choice(model, tokenizer, split, rows, world, dec.batch_size))
    if "qa_heldout" in greedy_outcomes and "nonexistent_test" in greedy_outcomes:
        p, r = abstention_pr(greedy_outcomes["qa_heldout"], greedy_outcomes["nonexistent_test"])
        out["abstain_precision"], out["abstain_recall"] = p, r
    return out


def _rates(out: dict, prefix: str, split: str, labels: Sequence[str], rows: Sequence[dict]) -> None:
    n = max(len(labels), 1)
    exists = rows[0].get("exists", True) if rows else True
    if exists:
        out[f"{prefix}em_{split}"] = sum(lab == "correct" for lab in labels) / n
    out[f"{prefix}halluc_{split}"] = sum(is_hallucination(lab, r) for lab, r in zip(labels, rows)) / n
    out[f"{prefix}abstain_{split}"] = sum(abstained(lab, r) for lab, r in zip(labels, rows)) / n
    if not prefix:
        out[f"other_{split}"] = sum(lab == "other" for lab in labels) / n


def abstention_pr(real: Sequence[tuple[str, dict]], nonexistent: Sequence[tuple[str, dict]]) -> tuple[float, float]:
    """Abstention as a detector of "this person does not exist", over (label, record) pairs of
    held-out real people and non-existent people: precision = right abstentions / all
    abstentions (nan if none), recall = right abstentions / non-existent people."""
    tp = sum(abstained(lab, r) for lab, r in nonexistent)
    fp = sum(abstained(lab, r) for lab, r in real)
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / len(nonexistent) if nonexistent else float("nan")
    return precision, recall


def multiple_choice(
    model, tokenizer, split: str, rows: Sequence[dict], world: World, batch_size: int = 128
) -> dict[str, float]:
    """Log-likelihood multiple choice over each record's ``choices``. Real people: the true value
    vs the same-attribute distractors (the abstention option left out) -> ``mc_<split>``.
    Non-existent people: the abstention vs every concrete option -> ``mc_abstain_<split>``."""
    from trustlab.lm.generation import score_continuations

    prompts, conts, owner = [], [], []
    for i, r in enumerate(rows):
        choices = r.get("choices") or []
        if r.get("exists", True):
            choices = [c for c in choices if c != world.abstain]
        for c in choices:
            prompts.append(r["prompt"])
            conts.append(c)
            owner.append(i)
    if not prompts:
        return {}
    scores = score_continuations(model, tokenizer, prompts, conts, batch_size=batch_size).sum_logprobs
    best: dict[int, tuple[float, str]] = {}
    for i, c, s in zip(owner, conts, scores):
        if i not in best or s > best[i][0]:
            best[i] = (float(s), c)
    target = [(r["value"] if r.get("exists", True) else world.abstain) for r in rows]
    acc = float(np.mean([best[i][1] == target[i] for i in best]))
    key = f"mc_{split}" if rows[0].get("exists", True) else f"mc_abstain_{split}"
    return {key: acc}


# ---------------------------------------------------------------------------------------------
# the whole stage


@dataclass
class Results:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (setting, variant, seed) + the base model
    curves: list[dict[str, Any]] = field(default_factory=list)  # training-curve rows with variant/seed/setting
    snr: list[dict[str, Any]] = field(default_factory=list)  # per (variant, seed, layer)
    exported: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)


def plan(cfg: NoiseFitConfig) -> list[tuple[str, str, int]]:
    """(setting, variant, seed) in run order: seed-major so that every seed's SFT runs first
    (the step-time reference), then the ``new_facts`` stress test."""
    def sft_first(variants):
        return ["sft"] * ("sft" in variants) + [v for v in variants if v != "sft"]

    runs = []
    order = sft_first(cfg.variants)
    for seed in cfg.seeds:
        runs += [("default", v, seed) for v in order]
    if cfg.include_new_facts and cfg.new_facts_variants:
        nf = sft_first(cfg.new_facts_variants)
        for seed in cfg.seeds:
            runs += [("new_facts", v, seed) for v in nf]
    return runs


def run_experiment(
    cfg: NoiseFitConfig,
    data_dir: str | Path,
    *,
    track: bool = True,
    base_model_dir: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> Results:
    """Fine-tune and evaluate every planned run; export the ``export_seed`` models of the
    default setting to ``<data_dir>/models/noisefit/<variant>/``."""
    from trustlab.lm.checkpoint import load_pretrained, save_model
    from trustlab.lm.hooks import decoder_blocks
    from trustlab.progress import progress
    from trustlab.seeding import set_threads
    from trustlab.tracking import start_run

    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    base_dir = Path(base_model_dir) if base_model_dir is not None else _resolve(data_dir, cfg.base_model)
    base, tok = load_pretrained(base_dir)
    cfg.check_model(len(decoder_blocks(base)))  # k vs depth, before any training
    try:
        set_threads(cfg.threads)
    except AttributeError:  # older torch without set_interop_threads
        pass
    world = load_world(data_dir)
    items = eval_items(world, cfg.max_eval_items)
    block = base.config.block_size
    datasets = {
        "default": finetune_dataset(world, tok, block, max_examples=cfg.max_train_examples),
        "new_facts": finetune_dataset(world, tok, block, new_facts=True, max_examples=cfg.max_train_examples),
    }
    results = Results(config=cfg.to_dict())
    say = log or (lambda s: None)
    say(
        f"base model {base_dir}: {base.config.n_layer} layers, d={base.config.n_embd}; fine-tuning sets: "
        f"default {len(datasets['default'])}, new_facts {len(datasets['new_facts'])} examples"
    )

    t0 = time.perf_counter()
    base_metrics = evaluate(base, tok, items, world, cfg, seed=cfg.seeds[0])
    results.rows.append({"setting": "base", "variant": "base", "label": "base model", "seed": cfg.seeds[0],
                         "train_s": 0.0, "eval_s": time.perf_counter() - t0, **base_metrics})  # fmt: skip

    sft_step: dict[tuple[str, int], float] = {}
    for setting, variant, seed in progress(plan(cfg), desc="noisefit runs"):
        v = get_variant(variant)
        name = f"{variant}-s{seed}" + ("" if setting == "default" else f"-{setting}")
        run_cfg = {**cfg.to_dict(), "variant": variant, "seed": seed, "setting": setting}
        with start_run(FAMILY, "finetune", name, run_cfg, tags=[variant, setting]) if track else _null_run() as run:
            on_log = _wandb_logger(run, cfg.log_every) if track else None
            ft = finetune(base, tok, datasets[setting], variant, seed, cfg, on_log=on_log)
            t0 = time.perf_counter()
            metrics = evaluate(ft.model, tok, items, world, cfg, seed=seed)
            eval_s = time.perf_counter() - t0
            if variant == "sft":
                sft_step[(setting, seed)] = ft.step_time
            ref = sft_step.get((setting, seed), sft_step.get(("default", seed), float("nan")))
            row = {"setting": setting, "variant": variant, "label": v.label, "seed": seed, "train_s": ft.seconds,
                   "eval_s": eval_s, "steps": ft.steps, "step_time": ft.step_time, "step_ratio": ft.step_time / ref,
                   "final_loss": ft.curve[-1]["loss"] if ft.curve else float("nan"), **metrics}  # fmt: skip
            if ft.selection:
                row["selected_layers"] = " ".join(map(str, ft.selection["selected_layers"]))
                for layer, value in enumerate(ft.selection["snr"]):
                    results.snr.append({"setting": setting, "variant": variant, "seed": seed, "layer": layer,
                                        "snr": value, "signal": ft.selection["signal"][layer],
                                        "noise": ft.selection["noise"][layer],
                                        "selected": layer in ft.selection["selected_layers"]})  # fmt: skip
            results.rows.append(row)
            for c in ft.curve:
                results.curves.append({"setting": setting, "variant": variant, "seed": seed, **c})
            summary = {f"eval/{k}": val for k, val in metrics.items()}
            summary.update(
                {"noisefit/step_time": ft.step_time, "noisefit/step_ratio": row["step_ratio"], "train_s": ft.seconds}
            )
            if ft.selection:
                summary["noisefit/selected_layers"] = ft.selection["selected_layers"]
                summary.update({f"noisefit/snr/layer_{i}": s for i, s in enumerate(ft.selection["snr"])})
            run.summary(summary)
            if cfg.export and setting == "default" and seed == cfg.export_seed:
                out = Path(data_dir) / "models" / "noisefit" / variant
                save_model(ft.model, out, tok, metadata={"family": FAMILY, "variant": variant, "seed": seed,
                                                          "base_model": str(base_dir), "selection": ft.selection,
                                                          "noisefit": cfg.to_dict()})  # fmt: skip
                results.exported[variant] = str(out)
            say(f"{name:36s} train {ft.seconds:5.1f}s ({ft.step_time * 1e3:5.1f} ms/step, "
                f"x{row['step_ratio']:.2f} SFT) "
                f"eval {eval_s:4.1f}s  em_heldout {metrics.get('em_qa_heldout', float('nan')):.3f} "
                f"halluc_heldout {metrics.get('halluc_qa_heldout', float('nan')):.3f} "
                f"halluc_nonexist {metrics.get('halluc_nonexistent_test', float('nan')):.3f}")  # fmt: skip
        del ft
    results.seconds = time.perf_counter() - t_start
    return results


def _wandb_logger(run, every: int) -> Callable[[dict], None]:
    from trustlab.noisefit.training import wandb_row

    def on_log(row: dict) -> None:
        step = int(row.get("step", 0))
        if "val_loss" not in row and (step == 1 or step % every == 0):
            run.log(wandb_row(row), step=step)

    return on_log


def _resolve(data_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else data_dir / p


class _NullRun:
    def log(self, *a, **k): ...
    def summary(self, *a, **k): ...


@contextlib.contextmanager
def _null_run():
    yield _NullRun()


# ---------------------------------------------------------------------------------------------
# tables and claims

HEADLINE_METRICS = (
    "em_qa_train", "em_qa_heldout", "halluc_qa_heldout", "halluc_nonexistent_test",
    "abstain_precision", "abstain_recall", "mc_qa_heldout", "s_em_qa_heldout", "s_halluc_qa_heldout",
    "s_halluc_nonexistent_test", "agree_qa_heldout",
)  # fmt: skip


def results_frame(results: Results):
    import pandas as pd

    return pd.DataFrame(results.rows)


def summary_table(
    results: Results, metrics: Sequence[str] = HEADLINE_METRICS, setting: str = "default", fmt: bool = False
):
    """Mean ± std over seeds per variant (rows in the configured order); ``fmt`` gives strings."""
    import pandas as pd

    from trustlab.stats import mean_std

    df = results_frame(results)
    df = df[df.setting.isin([setting, "base"])]
    metrics = [m for m in metrics if m in df.columns]
    out = []
    for variant in ["base", *[v for v in VARIANTS if v in set(df.variant)]]:
        sub = df[df.variant == variant]
        if sub.empty:
            continue
        row: dict[str, Any] = {"variant": variant, "label": sub.label.iloc[0], "n_seeds": len(sub)}
        for m in metrics:
            vals = sub[m].astype(float).dropna().to_numpy()
            mu, sd = mean_std(vals) if len(vals) else (float("nan"), float("nan"))
            if fmt:
                row[m] = f"{mu:.3f} ± {sd:.3f}"
            else:
                row[m], row[f"{m}_std"] = mu, sd
        out.append(row)
    return pd.DataFrame(out)


def step_time_table(results: Results):
    """Median step time and ratio to SFT per (setting, variant): mean ± std over seeds."""
    import pandas as pd

    df = results_frame(results)
    df = df[df.setting != "base"]
    g = df.groupby(["setting", "variant"], sort=False)
    return pd.DataFrame(
        {
            "ms_per_step": g.step_time.mean() * 1e3,
            "ms_per_step_std": g.step_time.std() * 1e3,
            "ratio_to_sft": g.step_ratio.mean(),
            "ratio_to_sft_std": g.step_ratio.std(),
            "train_s": g.train_s.mean(),
        }
    ).reset_index()


def _per_seed(df, variant: str, metric: str, setting: str = "default") -> dict[int, float]:
    sub = df[(df.variant == variant) & (df.setting == setting)]
    return {int(s): float(v) for s, v in zip(sub.seed, sub[metric])}


CLAIMS = (
    # (claim, paper statement, method, baseline, metric, expected, setting of method, setting of baseline)
    ("NoiseFiT lowers hallucination vs SFT (held-out people)", "NoiseFiT reduces hallucination vs BaseFiT",
     "noisefit_largest", "sft", "halluc_qa_heldout", "decrease", "default", "default"),
    ("NoiseFiT lowers hallucination vs SFT (non-existent people)", "NoiseFiT reduces hallucination vs BaseFiT",
     "noisefit_largest", "sft", "halluc_nonexistent_test", "decrease", "default", "default"),
    ("NoiseFiT raises sampled held-out accuracy vs SFT", "+7.7 pp average accuracy (5-sample protocol)",
     "noisefit_largest", "sft", "s_em_qa_heldout", "increase", "default", "default"),
    ("NoiseFiT lowers hallucination vs NEFTune (held-out people)", "NoiseFiT outperforms NEFTune",
     "noisefit_largest", "neftune", "halluc_qa_heldout", "decrease", "default", "default"),
    ("NoiseFiT lowers hallucination vs NEFTune (non-existent people)", "NoiseFiT outperforms NEFTune",
     "noisefit_largest", "neftune", "halluc_nonexistent_test", "decrease", "default", "default"),
    ("Largest-SNR layers hallucinate less than Lowest (held-out people)", "noise in high-SNR layers works best",
     "noisefit_largest", "noisefit_lowest", "halluc_qa_heldout", "decrease", "default", "default"),
    ("KL-only training degrades the model (train-QA accuracy vs NoiseFiT)", "KL-only loss collapses the model",
     "noisefit_kl_only", "noisefit_largest", "em_qa_train", "decrease", "default", "default"),
    ("Consistency-only training degrades the model (train-QA accuracy vs NoiseFiT)",
     "consistency-only loss collapses the model",
     "noisefit_consistency_only", "noisefit_largest", "em_qa_train", "decrease", "default", "default"),
    ("New facts in fine-tuning raise hallucination (SFT, held-out people)", "Gekhman et al. 2024",
     "sft", "sft", "halluc_qa_heldout", "increase", "new_facts", "default"),
    ("NoiseFiT lowers hallucination vs SFT with new facts (held-out people)", "NoiseFiT reduces hallucination",
     "noisefit_largest", "sft", "halluc_qa_heldout", "decrease", "new_facts", "new_facts"),
)  # fmt: skip


def make_claims(results: Results) -> list:
    """Claim rows for every comparison whose runs exist (paired by seed)."""
    from trustlab.stats import claim_from_seeds

    df = results_frame(results)
    claims = []
    for text, paper, method, baseline, metric, expected, s_m, s_b in CLAIMS:
        if metric not in df.columns:
            continue
        a, b = _per_seed(df, method, metric, s_m), _per_seed(df, baseline, metric, s_b)
        seeds = sorted(set(a) & set(b))
        if not seeds or (method, s_m) == (baseline, s_b):
            continue
        a_v, b_v = [a[s] for s in seeds], [b[s] for s in seeds]
        if any(np.isnan(a_v)) or any(np.isnan(b_v)):
            continue
        protocol = "5 samples" if metric.startswith("s_") else "greedy decoding"
        note = f"{get_variant(method).label} [{s_m}] - {get_variant(baseline).label} [{s_b}], {protocol}"
        claims.append(claim_from_seeds(FAMILY, text, paper, metric, a_v, b_v, expected, note=note))
    return claims


# ---------------------------------------------------------------------------------------------
# outputs


def write_outputs(results: Results, reports_dir: str | Path, claims: list | None = None) -> dict[str, Any]:
    """``metrics.json`` (headline, claims, tables, timing) and the plot data under ``plots/``."""
    from trustlab.tracking import write_metrics, write_plot

    claims = make_claims(results) if claims is None else claims
    table = summary_table(results)
    steps = step_time_table(results)
    headline = {}
    for _, r in table.iterrows():
        for m in ("halluc_qa_heldout", "halluc_nonexistent_test", "em_qa_heldout", "s_em_qa_heldout"):
            if m in table.columns:
                headline[f"{r.variant}/{m}"] = r[m]
    for _, r in steps[steps.setting == "default"].iterrows():
        headline[f"{r.variant}/step_ratio"] = r.ratio_to_sft
    headline["stage_seconds"] = results.seconds
    metrics = {
        "headline": headline,
        "claims": [c.as_dict() for c in claims],
        "table": table.to_dict(orient="records"),
        "table_new_facts": summary_table(results, setting="new_facts").to_dict(orient="records"),
        "step_time": steps.to_dict(orient="records"),
        "exported": results.exported,
        "config": results.config,
    }
    write_metrics(FAMILY, metrics, reports_dir)
    import pandas as pd

    for name, rows in (("runs", results.rows), ("curves", results.curves), ("snr", results.snr)):
        write_plot(FAMILY, name, pd.DataFrame(rows), reports_dir)  # rows differ in keys: union of columns
    write_plot(FAMILY, "step_time", steps, reports_dir)
    return metrics


def plot_snr(results: Results):
    """Per-layer SNR (mean over seeds) with the Largest / Lowest selections marked."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(results.snr)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if df.empty:
        return fig
    base = df[(df.setting == "default")].groupby("layer").snr.agg(["mean", "std"]).reset_index()
    ax.bar(base.layer, base["mean"], yerr=base["std"].fillna(0), color="0.75", label="SNR (mean over seeds)")
    for variant, marker, color in (("noisefit_largest", "^", "tab:blue"), ("noisefit_lowest", "v", "tab:red")):
        sel = df[(df.variant == variant) & df.selected & (df.setting == "default")]
        if not sel.empty:
            share = sel.groupby("layer").size() / df[(df.variant == variant) & (df.setting == "default")].seed.nunique()
            ax.scatter(share.index, [base.set_index("layer")["mean"][i] * 1.05 for i in share.index], marker=marker,
                       s=60 * share.values, color=color, label=f"{get_variant(variant).label} picks")  # fmt: skip
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("SNR")
    ax.set_xticks(sorted(df.layer.unique()))
    ax.legend(fontsize=8)
    ax.set_title("per-layer SNR and selected layers")
    return fig


def plot_curves(results: Results, seed: int | None = None, setting: str = "default"):
    """Loss components over training steps, one panel per component, one line per variant."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(results.curves)
    comps = [c for c in ("ce", "soft", "consistency", "total") if c in df.columns]
    fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps), 3), squeeze=False)
    if df.empty:
        return fig
    df = df[df.setting == setting]
    seed = df.seed.min() if seed is None else seed
    df = df[df.seed == seed]
    for ax, comp in zip(axes[0], comps):
        for variant, sub in df.groupby("variant", sort=False):
            if sub[comp].notna().any():
                ax.plot(sub.step, sub[comp], label=get_variant(variant).label, lw=1)
        ax.set_title(f"noisefit/{comp}")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"loss components (seed {seed}, setting {setting})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_hallucination(results: Results, setting: str = "default"):
    """Hallucination rate by split and variant (greedy; mean ± std over seeds)."""
    import matplotlib.pyplot as plt

    table = summary_table(results, metrics=[f"halluc_{s}" for s in EVAL_SPLITS], setting=setting)
    splits = [s for s in EVAL_SPLITS if f"halluc_{s}" in table.columns]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table)), 3.4))
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(table))
    for j, s in enumerate(splits):
        ax.bar(x + j * width, table[f"halluc_{s}"], width, yerr=table[f"halluc_{s}_std"].fillna(0), label=s)
    ax.set_xticks(x + width * (len(splits) - 1) / 2)
    ax.set_xticklabels(table.label, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("hallucination rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"hallucination rate by split (setting {setting}, greedy)")
    fig.tight_layout()
    return fig


def log_summary(results: Results, claims: list, figures: dict[str, Any] | None = None) -> None:
    """The W&B summary run of the stage (group ``noisefit``): tables, claims, figures, headline."""
    import pandas as pd

    from trustlab.tracking import start_run

    with start_run(FAMILY, "summary", "noisefit-summary", results.config, tags=["summary"]) as run:
        run.log_table("results", summary_table(results, fmt=True))
        run.log_table("results_new_facts", summary_table(results, setting="new_facts", fmt=True))
        run.log_table("step_time", step_time_table(results))
        run.log_table("claims", pd.DataFrame([c.as_dict() for c in claims]))
        if results.snr:
            run.log_table("snr", pd.DataFrame(results.snr))
        for name, fig in (figures or {}).items():
            run.log_image(name, fig)
        run.summary({"stage_seconds": results.seconds, "n_runs": sum(r["setting"] != "base" for r in results.rows)})
