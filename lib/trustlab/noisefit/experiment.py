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
    1.2) on ``decoding.sample_splits``: mean exact match / hallucination over samples
    (``s_em_*``, ``s_halluc_*``) and sample agreement (``agree_*``: mean over prompts of the
    share of the modal answer among the samples);
  - multiple choice by log-likelihood (the TruthfulQA-MC analogue): the true value against the
    record's same-attribute distractors (``mc_<split>``); for non-existent people, whether the
    abstention outscores every concrete option (``mc_abstain_nonexistent_test``).
* **Cost**: the median training-step time of every run; ``step_ratio`` = that / SFT's median
  step time for the same seed and setting, measured in the same process.
* **Claims** (``trustlab.core.stats.claim_from_seeds``, paired by seed, t 95% CI).
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

from trustlab.noisefit.config import EVAL_SPLITS, NoiseFitConfig
from trustlab.noisefit.variants import VARIANTS, get_variant

FAMILY = "noisefit"
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


def base_model_path(cfg: NoiseFitConfig, data_dir: str | Path) -> Path:
    """``noisefit.base_model`` resolved against ``data_dir`` (an absolute path stays as is)."""
    return _resolve(Path(data_dir), cfg.base_model)


def load_base(cfg: NoiseFitConfig, data_dir: str | Path, base_model_dir: str | Path | None = None, model_cfg=None):
    """-> (model, tokenizer, source) of the model to fine-tune.

    ``model_cfg`` (the ``model:`` section) with ``backend: hf``: the transformers causal LM it
    names, with its LoRA adapters and chat template (``trustlab.lm.loading``). Otherwise our GPT
    checkpoint at ``base_model_dir`` or ``noisefit.base_model``; a missing checkpoint is a
    clear error naming the ``base_model`` stage that makes it."""
    from trustlab.lm.checkpoint import CONFIG_FILE, MODEL_FILE, load_pretrained

    if model_cfg is not None and model_cfg.backend == "hf":
        from trustlab.lm.loading import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(model_cfg, data_dir)
        return model, tok, model_cfg.name_or_path
    path = Path(base_model_dir) if base_model_dir is not None else base_model_path(cfg, data_dir)
    missing = [f for f in (MODEL_FILE, CONFIG_FILE, "tokenizer.json") if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"no base model at {path} (noisefit.base_model = {cfg.base_model!r}; missing {', '.join(missing)}): "
            f"run the base_model stage first: `dvc repro base_model`, or "
            f"`python pipelines/pretrain_base.py --data-dir {data_dir} --out {path}`"
        )
    model, tok = load_pretrained(path)
    return model, tok, path


def context_length(model) -> int:
    """The longest sequence ``model`` takes: our GPT's ``config.block_size``, an HF model's
    ``context_length`` (``HFCausalLM``)."""
    n = getattr(getattr(model, "config", None), "block_size", None) or getattr(model, "context_length", None)
    if not n:
        raise ValueError(f"cannot tell the context length of {type(model).__name__}")
    return int(n)


def describe_model(model) -> str:
    """``"4 layers, d=128, 0.84M parameters"`` for our GPT or an HF model."""
    from trustlab.lm.hooks import decoder_blocks

    cfg = getattr(model, "config", None)
    d = getattr(cfg, "n_embd", None) or getattr(cfg, "hidden_size", None)
    n_params = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__}, {len(decoder_blocks(model))} layers, d={d}, {n_params / 1e6:.2f}M parameters"


def export_model(model, tokenizer, out: str | Path, metadata: dict[str, Any]) -> Path:
    """Save a fine-tuned model with its tokenizer and ``metadata`` through the shared
    ``trustlab.lm.loading.save_model_and_tokenizer``: our GPT as a trustlab checkpoint; an
    ``HFCausalLM`` with ``save_pretrained`` (LoRA: the adapters), its tokenizer and prompt format."""
    from trustlab.lm.gpt import GPT
    from trustlab.lm.loading import save_model_and_tokenizer

    if not isinstance(model, GPT) and not hasattr(getattr(model, "hf", None), "save_pretrained"):
        raise TypeError(f"cannot export a {type(model).__name__}: expected our GPT or an HFCausalLM")
    return save_model_and_tokenizer(model, tokenizer, out, metadata=metadata)


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
    trainer: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``base_model`` with ``variant`` for ``cfg.steps`` steps. ``trainer``:
    Lightning settings for ``trustlab.lm.training.fit`` (``model.trainer.fit_kwargs()``;
    default one CPU process)."""
    import torch

    from trustlab.lm.training import fit
    from trustlab.noisefit.module import NoiseFitModule

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
        **(trainer or {}),
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
        if dec.n_samples > 0 and split in dec.sample_splits:
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
        other = sum(lab == "other" for lab in labels) / n
        out[f"other_{split}"] = other
        # a well-formed answer is a value of the asked attribute or the abstention; a collapsed
        # model (the card: KL-only / consistency-only training) produces neither
        out[f"valid_{split}"] = 1.0 - other


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
    model=None,
    tokenizer=None,
    base_model_dir: str | Path | None = None,
    base_name: str | None = None,
    track: bool = True,
    log: Callable[[str], None] | None = print,
    trainer: dict[str, Any] | None = None,
) -> Results:
    """Fine-tune and evaluate every planned run; export the ``export_seed`` models of the
    default setting to ``<data_dir>/models/noisefit/<variant>/``.

    The base model is ``model`` + ``tokenizer`` when given (any model the shared LM code
    supports: our GPT, or an ``HFCausalLM`` from ``trustlab.lm.hf_backend``), otherwise the
    checkpoint at ``base_model_dir`` or ``noisefit.base_model`` (:func:`load_base`). It is
    never modified: every run fine-tunes a copy. ``base_name`` names an in-memory base model
    in the exported models' metadata. ``trainer``: Lightning settings for every fine-tune
    (:func:`finetune`)."""
    from trustlab.lm.hooks import decoder_blocks
    from trustlab.core.progress import progress
    from trustlab.core.seeding import set_threads
    from trustlab.tracking import run_name, start_run

    t_start = time.perf_counter()
    data_dir = Path(data_dir)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then the base model is loaded from disk)")
    if model is None:
        base, tok, base_dir = load_base(cfg, data_dir, base_model_dir)
        base_name = str(base_dir)
    else:
        base, tok = model, tokenizer
        base_name = base_name or f"in-memory {type(model).__name__}"
    cfg.check_model(len(decoder_blocks(base)))  # k vs depth, before any training
    try:
        set_threads(cfg.threads)
    except AttributeError:  # older torch without set_interop_threads
        pass
    world = load_world(data_dir)
    items = eval_items(world, cfg.max_eval_items)
    block = context_length(base)
    datasets = {
        "default": finetune_dataset(world, tok, block, max_examples=cfg.max_train_examples),
        "new_facts": finetune_dataset(world, tok, block, new_facts=True, max_examples=cfg.max_train_examples),
    }
    results = Results(config=cfg.to_dict())
    say = log or (lambda s: None)
    say(
        f"base model {base_name} ({describe_model(base)}); fine-tuning sets: "
        f"default {len(datasets['default'])}, new_facts {len(datasets['new_facts'])} examples"
    )

    t0 = time.perf_counter()
    base_metrics = evaluate(base, tok, items, world, cfg, seed=cfg.seeds[0])
    results.rows.append({"setting": "base", "variant": "base", "label": "base model", "seed": cfg.seeds[0],
                         "train_s": 0.0, "eval_s": time.perf_counter() - t0, **base_metrics})  # fmt: skip

    sft_step: dict[tuple[str, int], float] = {}
    for setting, variant, seed in progress(plan(cfg), desc="noisefit runs"):
        v = get_variant(variant)
        name = run_name(variant if setting == "default" else f"{variant}-{setting}", seed)
        run_cfg = {**cfg.to_dict(), "variant": variant, "seed": seed, "setting": setting}
        with start_run(FAMILY, "finetune", name, run_cfg, tags=[variant, setting]) if track else _null_run() as run:
            on_log = _wandb_logger(run, cfg.log_every) if track else None
            ft = finetune(base, tok, datasets[setting], variant, seed, cfg, on_log=on_log, trainer=trainer)
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
                run.log_table("noisefit/snr", _snr_frame(ft.selection))
            run.summary(summary)
            if cfg.export and setting == "default" and seed == cfg.export_seed:
                out = Path(data_dir) / "models" / "noisefit" / variant
                export_model(ft.model, tok, out, {"family": FAMILY, "variant": variant, "label": v.label, "seed": seed,
                                                  "base_model": base_name, "selection": ft.selection,
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
    from trustlab.noisefit.module import wandb_row

    def on_log(row: dict) -> None:
        step = int(row.get("step", 0))
        if "val_loss" not in row and (step == 1 or step % every == 0):
            run.log(wandb_row(row), step=step)

    return on_log


def _resolve(data_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else data_dir / p


def _snr_frame(selection: dict[str, Any]):
    import pandas as pd

    return pd.DataFrame(
        {
            "layer": range(len(selection["snr"])),
            "snr": selection["snr"],
            "signal": selection["signal"],
            "noise": selection["noise"],
            "selected": [i in selection["selected_layers"] for i in range(len(selection["snr"]))],
        }
    )


class _NullRun:
    def log(self, *a, **k): ...
    def summary(self, *a, **k): ...
    def log_table(self, *a, **k): ...


@contextlib.contextmanager
def _null_run():
    yield _NullRun()


# ---------------------------------------------------------------------------------------------
# tables and claims

HEADLINE_METRICS = (
    "em_qa_train", "em_qa_heldout", "halluc_qa_heldout", "halluc_nonexistent_test",
    "abstain_precision", "abstain_recall", "mc_qa_heldout", "mc_abstain_nonexistent_test", "valid_qa_heldout",
    "s_em_qa_heldout", "s_halluc_qa_heldout", "s_halluc_nonexistent_test", "agree_qa_heldout",
)  # fmt: skip

# readable names (metrics.json headline, table headers) of the metric keys of evaluate()
METRIC_NAMES = {
    "em_qa_train": "exact_match_train",
    "em_qa_heldout": "exact_match_heldout",
    "em_new_facts": "exact_match_new_facts",
    "halluc_qa_train": "hallucination_train",
    "halluc_qa_heldout": "hallucination_heldout",
    "halluc_new_facts": "hallucination_new_facts",
    "halluc_nonexistent_test": "hallucination_nonexistent",
    "abstain_precision": "abstention_precision",
    "abstain_recall": "abstention_recall",
    "mc_qa_heldout": "mc_accuracy_heldout",
    "mc_abstain_nonexistent_test": "mc_abstains_nonexistent",
    "s_em_qa_heldout": "sampled_exact_match_heldout",
    "s_halluc_qa_heldout": "sampled_hallucination_heldout",
    "s_halluc_nonexistent_test": "sampled_hallucination_nonexistent",
    "agree_qa_heldout": "sample_agreement_heldout",
    "valid_qa_heldout": "well_formed_heldout",
    "step_ratio": "step_time_vs_sft",
}
SPLIT_NAMES = {
    "qa_train": "train people",
    "qa_heldout": "held-out people",
    "new_facts": "new-facts people",
    "nonexistent_test": "non-existent people",
}


def readable(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def phrase(metric: str) -> str:
    """``"s_halluc_qa_heldout"`` -> ``"hallucination rate on held-out people (5 samples)"``."""
    sampled = metric.startswith("s_")
    m = metric[2:] if sampled else metric
    kinds = (("halluc_", "hallucination rate"), ("em_", "exact match"), ("mc_", "multiple-choice accuracy"),
             ("valid_", "well-formed answer rate"))
    for prefix, what in kinds:
        split = m[len(prefix):]
        if m.startswith(prefix) and split in SPLIT_NAMES:
            return f"{what} on {SPLIT_NAMES[split]}" + (" (5 samples)" if sampled else "")
    return readable(metric).replace("_", " ")


def results_frame(results: Results):
    import pandas as pd

    return pd.DataFrame(results.rows)


def _variant_order(df) -> list[str]:
    present = set(df.variant)
    return [v for v in ["base", *VARIANTS] if v in present]


def summary_table(
    results: Results, metrics: Sequence[str] = HEADLINE_METRICS, setting: str = "default", fmt: bool = False
):
    """Mean ± std (sample std, ddof=1) over seeds per variant, rows in the registry's order,
    the base model first; ``fmt`` gives ``"mean ± std"`` strings."""
    import pandas as pd

    from trustlab.core.stats import mean_std

    df = results_frame(results)
    if df.empty:
        return pd.DataFrame()
    df = df[df.setting.isin([setting, "base"])]
    metrics = [m for m in metrics if m in df.columns]
    out = []
    for variant in _variant_order(df):
        sub = df[df.variant == variant]
        row: dict[str, Any] = {"variant": variant, "label": sub.label.iloc[0], "n_seeds": len(sub)}
        for m in metrics:
            vals = sub[m].astype(float).dropna().to_numpy()
            mu, sd = mean_std(vals) if len(vals) else (float("nan"), float("nan"))
            if fmt:
                row[m] = f"{mu:.3f} ± {sd:.3f}" if np.isfinite(mu) else "n/a"
            else:
                row[m], row[f"{m}_std"] = mu, sd
        out.append(row)
    return pd.DataFrame(out)


def hallucination_table(results: Results, setting: str = "default", fmt: bool = False, sampled: bool = True):
    """Hallucination rate per variant and evaluation split, greedy and (``sampled``) the
    5-sample protocol: mean ± std over seeds. Columns ``halluc_<split>`` / ``s_halluc_<split>``."""
    metrics = [f"halluc_{s}" for s in EVAL_SPLITS]
    if sampled:
        metrics += [f"s_halluc_{s}" for s in EVAL_SPLITS]
    return summary_table(results, metrics, setting, fmt)


def hallucination_column(name: str) -> str:
    """``"s_halluc_qa_heldout"`` -> ``"sampled: held-out people"`` (table headers)."""
    for prefix, protocol in (("s_halluc_", "sampled"), ("halluc_", "greedy")):
        if name.startswith(prefix):
            split = name[len(prefix):]
            std = split.endswith("_std")
            split = split[:-4] if std else split
            return f"{protocol}: {SPLIT_NAMES.get(split, split)}" + (" (std)" if std else "")
    return name


def hallucination_long(results: Results):
    """Long form for the plot CSV: setting, variant, split, protocol, mean, std, n_seeds."""
    import pandas as pd

    rows = []
    for setting in SETTINGS:
        t = hallucination_table(results, setting)
        for _, r in t.iterrows():
            if setting != "default" and r.variant == "base":
                continue
            for split in EVAL_SPLITS:
                for prefix, protocol in (("", "greedy"), ("s_", "sampled")):
                    key = f"{prefix}halluc_{split}"
                    if key in t.columns and np.isfinite(r[key]):
                        rows.append({"setting": setting, "variant": r.variant, "label": r.label, "split": split,
                                     "protocol": protocol, "mean": r[key], "std": r[f"{key}_std"],
                                     "n_seeds": r.n_seeds})  # fmt: skip
    return pd.DataFrame(rows)


def step_time_table(results: Results):
    """Median training-step time and its ratio to SFT's (same seed and setting, same process)
    per (setting, variant): mean ± std over seeds, with the forward passes per step."""
    import pandas as pd

    df = results_frame(results)
    if df.empty or "step_time" not in df.columns:
        return pd.DataFrame()
    df = df[df.setting != "base"]
    g = df.groupby(["setting", "variant"], sort=False)
    out = pd.DataFrame(
        {
            "label": g.label.first(),
            "forward_passes": g.variant.first().map(lambda v: get_variant(v).forward_passes),
            "ms_per_step": g.step_time.mean() * 1e3,
            "ms_per_step_std": g.step_time.std() * 1e3,
            "ratio_to_sft": g.step_ratio.mean(),
            "ratio_to_sft_std": g.step_ratio.std(),
            "train_s": g.train_s.mean(),
            "n_seeds": g.seed.nunique(),
        }
    ).reset_index()
    return out


def _per_seed(df, variant: str, metric: str, setting: str = "default") -> dict[int, float]:
    sub = df[(df.variant == variant) & (df.setting == setting)]
    return {int(s): float(v) for s, v in zip(sub.seed, sub[metric])}


@dataclass(frozen=True)
class ClaimSpec:
    """One comparison: ``method`` [setting_m] - ``baseline`` [setting_b] on ``metric``, paired by seed.
    ``issue`` numbers the four claims the stage must report (0 = supplementary)."""

    claim: str
    paper: str
    method: str
    baseline: str
    metric: str
    expected: str
    setting_m: str = "default"
    setting_b: str = "default"
    issue: int = 0


CLAIMS = (
    # 1. NoiseFiT lowers the hallucination rate against SFT
    ClaimSpec("NoiseFiT lowers hallucination vs SFT (held-out people)", "NoiseFiT reduces hallucination vs BaseFiT",
              "noisefit_largest", "sft", "halluc_qa_heldout", "decrease", issue=1),
    ClaimSpec("NoiseFiT lowers hallucination vs SFT (non-existent people)", "NoiseFiT reduces hallucination vs BaseFiT",
              "noisefit_largest", "sft", "halluc_nonexistent_test", "decrease", issue=1),
    # 2. ... and against NEFTune
    ClaimSpec("NoiseFiT lowers hallucination vs NEFTune (held-out people)", "NoiseFiT outperforms NEFTune",
              "noisefit_largest", "neftune", "halluc_qa_heldout", "decrease", issue=2),
    ClaimSpec("NoiseFiT lowers hallucination vs NEFTune (non-existent people)", "NoiseFiT outperforms NEFTune",
              "noisefit_largest", "neftune", "halluc_nonexistent_test", "decrease", issue=2),
    # 3. Largest versus Lowest
    ClaimSpec("Largest-SNR layers hallucinate less than Lowest (held-out people)",
              "noise in high-SNR layers works best", "noisefit_largest", "noisefit_lowest", "halluc_qa_heldout",
              "decrease", issue=3),
    ClaimSpec("Largest-SNR layers hallucinate less than Lowest (non-existent people)",
              "noise in high-SNR layers works best", "noisefit_largest", "noisefit_lowest", "halluc_nonexistent_test",
              "decrease", issue=3),
    # 4. KL-only or consistency-only training degrades the model
    ClaimSpec("KL-only training degrades the model (train-QA accuracy vs NoiseFiT)", "KL-only loss collapses the model",
              "noisefit_kl_only", "noisefit_largest", "em_qa_train", "decrease", issue=4),
    ClaimSpec("Consistency-only training degrades the model (train-QA accuracy vs NoiseFiT)",
              "consistency-only loss collapses the model", "noisefit_consistency_only", "noisefit_largest",
              "em_qa_train", "decrease", issue=4),
    # collapse shows as answers that are neither a value nor the abstention; train-QA accuracy
    # alone cannot show it when fine-tuning leaves that accuracy near its floor
    ClaimSpec("KL-only training degrades the model (well-formed answers vs NoiseFiT, held-out people)",
              "KL-only loss collapses the model", "noisefit_kl_only", "noisefit_largest", "valid_qa_heldout",
              "decrease", issue=4),
    ClaimSpec("Consistency-only training degrades the model (well-formed answers vs NoiseFiT, held-out people)",
              "consistency-only loss collapses the model", "noisefit_consistency_only", "noisefit_largest",
              "valid_qa_heldout", "decrease", issue=4),
    # supplementary
    ClaimSpec("NoiseFiT raises sampled held-out accuracy vs SFT", "+7.7 pp average accuracy (5-sample protocol)",
              "noisefit_largest", "sft", "s_em_qa_heldout", "increase"),
    ClaimSpec("New facts in fine-tuning raise hallucination (SFT, held-out people)", "Gekhman et al. 2024",
              "sft", "sft", "halluc_qa_heldout", "increase", "new_facts", "default"),
    ClaimSpec("NoiseFiT lowers hallucination vs SFT with new facts (held-out people)", "NoiseFiT reduces hallucination",
              "noisefit_largest", "sft", "halluc_qa_heldout", "decrease", "new_facts", "new_facts"),
)  # fmt: skip

ISSUE_CLAIMS = {
    1: "NoiseFiT lowers the hallucination rate against SFT",
    2: "NoiseFiT lowers the hallucination rate against NEFTune",
    3: "Largest versus Lowest SNR-layer selection",
    4: "KL-only or consistency-only training degrades the model",
}


def make_claims(results: Results) -> list:
    """Claim rows (``trustlab.core.stats.Claim``) for every comparison in :data:`CLAIMS` whose runs
    exist, effect = mean over seeds of (method - baseline), paired by seed, t 95% CI."""
    from trustlab.core.stats import claim_from_seeds

    df = results_frame(results)
    claims = []
    for spec in CLAIMS:
        if df.empty or spec.metric not in df.columns:
            continue
        a = _per_seed(df, spec.method, spec.metric, spec.setting_m)
        b = _per_seed(df, spec.baseline, spec.metric, spec.setting_b)
        seeds = sorted(set(a) & set(b))
        if not seeds or (spec.method, spec.setting_m) == (spec.baseline, spec.setting_b):
            continue
        a_v, b_v = [a[s] for s in seeds], [b[s] for s in seeds]
        if any(np.isnan(a_v)) or any(np.isnan(b_v)):
            continue
        protocol = "5 samples" if spec.metric.startswith("s_") else "greedy decoding"
        note = (f"{get_variant(spec.method).label} [{spec.setting_m}] - {get_variant(spec.baseline).label} "
                f"[{spec.setting_b}], {protocol}, seeds {seeds}")  # fmt: skip
        claims.append(claim_from_seeds(FAMILY, spec.claim, spec.paper, spec.metric, a_v, b_v, spec.expected, note=note))
    return claims


def _spec(claim_text: str) -> ClaimSpec | None:
    return next((c for c in CLAIMS if c.claim == claim_text), None)


def reading(claim) -> str:
    """The verdict in words, with the effect in percentage points (the metrics are rates)."""
    spec = _spec(claim.claim)
    method = get_variant(spec.method).label if spec else "the method"
    baseline = get_variant(spec.baseline).label if spec else "the baseline"
    if spec and spec.method == spec.baseline:
        method, baseline = f"{method} [{spec.setting_m}]", f"{method} [{spec.setting_b}]"
    what = phrase(claim.metric)
    eff = f"{100 * claim.effect:+.1f} pp"
    ci = f"95% CI [{100 * claim.ci_low:+.1f}, {100 * claim.ci_high:+.1f}] pp"
    if not (np.isfinite(claim.ci_low) and np.isfinite(claim.ci_high)):
        return f"inconclusive: {method} - {baseline} = {eff} on {what}, {claim.n_seeds} seed(s), no confidence interval"
    if claim.verdict == "supported":
        return f"supported: {method} - {baseline} = {eff} on {what} ({ci}), in the expected direction"
    if claim.verdict == "not supported":
        return (f"not supported: the opposite holds here, {method} - {baseline} = {eff} on {what} ({ci}); "
                f"expected a {claim.expected}")  # fmt: skip
    return (f"inconclusive: {method} - {baseline} = {eff} on {what} ({ci}); the interval includes 0, so no "
            f"difference can be told apart from seed-to-seed variation with {claim.n_seeds} seeds")


def claims_frame(claims: list):
    """The claims table: the Claim fields plus ``issue`` (which of the stage's four claims,
    0 = supplementary) and ``reading`` (the verdict in words)."""
    import pandas as pd

    rows = []
    for c in claims:
        spec = _spec(c.claim)
        rows.append({"issue": spec.issue if spec else 0, **c.as_dict(), "reading": reading(c)})
    cols = ["issue", "claim", "metric", "expected", "effect", "ci_low", "ci_high", "n_seeds", "verdict", "reading",
            "paper", "note", "family"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def missing_issue_claims(claims: list) -> list[str]:
    """The stage's four claims that have no row (their variants were not run)."""
    have = {s.issue for c in claims if (s := _spec(c.claim)) is not None}
    return [text for i, text in ISSUE_CLAIMS.items() if i not in have]


# ---------------------------------------------------------------------------------------------
# outputs

HEADLINE_KEYS = ("halluc_qa_heldout", "halluc_nonexistent_test", "em_qa_train", "em_qa_heldout", "s_em_qa_heldout",
                 "abstain_recall", "mc_qa_heldout", "valid_qa_heldout")  # fmt: skip


def headline(results: Results, claims: list, stage_seconds: float | None = None) -> dict[str, Any]:
    """Flat, readable numbers: ``<variant>/<metric>`` (means over seeds, default setting),
    ``<variant>/new_facts/<metric>``, ``<variant>/step_time_vs_sft``, timing, claim counts."""
    h: dict[str, Any] = {}
    table = summary_table(results, HEADLINE_KEYS)
    for _, r in table.iterrows():
        for m in HEADLINE_KEYS:
            if m in table.columns and np.isfinite(r[m]):
                h[f"{r.variant}/{readable(m)}"] = float(r[m])
    nf = summary_table(results, ("halluc_qa_heldout", "em_qa_heldout", "em_new_facts"), setting="new_facts")
    for _, r in nf.iterrows():
        if r.variant == "base":
            continue
        for m in ("halluc_qa_heldout", "em_qa_heldout", "em_new_facts"):
            if m in nf.columns and np.isfinite(r[m]):
                h[f"{r.variant}/new_facts/{readable(m)}"] = float(r[m])
    steps = step_time_table(results)
    for _, r in steps.iterrows():
        key = f"{r.variant}/step_time_vs_sft" if r.setting == "default" else f"{r.variant}/new_facts/step_time_vs_sft"
        h[key] = float(r.ratio_to_sft)
    h["runs"] = sum(r["setting"] != "base" for r in results.rows)
    h["training_seconds"] = results.seconds
    h["stage_seconds"] = stage_seconds if stage_seconds is not None else results.seconds
    h["claims_supported"] = sum(c.verdict == "supported" for c in claims)
    h["claims_not_supported"] = sum(c.verdict == "not supported" for c in claims)
    h["claims_inconclusive"] = sum(c.verdict == "inconclusive" for c in claims)
    return h


def write_outputs(
    results: Results,
    reports_dir: str | Path,
    claims: list | None = None,
    *,
    profile: str | None = None,
    stage_seconds: float | None = None,
) -> dict[str, Any]:
    """``metrics.json`` (headline, claims, tables, timing, run info, provenance) and the plot
    data under ``plots/`` (runs, curves, snr, step_time, hallucination, claims)."""
    import pandas as pd

    from trustlab.core.provenance import provenance
    from trustlab.tracking import write_metrics, write_plot

    claims = make_claims(results) if claims is None else claims
    steps = step_time_table(results)
    metrics = {
        "headline": headline(results, claims, stage_seconds),
        "claims": [c.as_dict() for c in claims],
        "claims_reading": {c.claim: reading(c) for c in claims},
        "table": summary_table(results).to_dict(orient="records"),
        "table_new_facts": summary_table(results, setting="new_facts").to_dict(orient="records"),
        "hallucination": hallucination_table(results).to_dict(orient="records"),
        "step_time": steps.to_dict(orient="records"),
        "exported": results.exported,
        "config": results.config,
        "run": {"profile": profile, "stage_seconds": stage_seconds if stage_seconds is not None else results.seconds,
                "training_seconds": results.seconds},
        "provenance": provenance(),
    }
    write_metrics(FAMILY, metrics, reports_dir)
    for name, rows in (("runs", results.rows), ("curves", results.curves), ("snr", results.snr)):
        write_plot(FAMILY, name, pd.DataFrame(rows), reports_dir)  # rows differ in keys: union of columns
    write_plot(FAMILY, "step_time", steps, reports_dir)
    write_plot(FAMILY, "hallucination", hallucination_long(results), reports_dir)
    write_plot(FAMILY, "claims", claims_frame(claims), reports_dir)
    return metrics


def findings(results: Results, claims: list) -> str:
    """What the numbers of this run show, as markdown bullets (generated from the results, so
    they stay true when the params change)."""
    c = results.config
    t = summary_table(results).set_index("variant") if results.rows else None
    out = [
        f"{sum(r['setting'] != 'base' for r in results.rows)} fine-tuning runs: {len(c['variants'])} variants x "
        f"{len(c['seeds'])} seed(s) of {c['steps']} steps x batch {c['batch_size']}"
        + (f", plus the new-facts setting for {', '.join(c['new_facts_variants'])}" if c["include_new_facts"] else "")
        + f"; k = {c['k']}, sigma0 = {c['sigma0']} ({c['noise_scale']} convention), alpha = {c['alpha']}, "
        f"lambda = {c['lambda_consistency']}."
    ]

    def val(v, m):
        return t.loc[v, m] if t is not None and v in t.index and m in t.columns else float("nan")

    if t is not None and "base" in t.index:
        out.append(f"Base model (greedy): exact match {val('base', 'em_qa_train'):.0%} on train people, "
                   f"{val('base', 'em_qa_heldout'):.0%} on held-out people; hallucination "
                   f"{val('base', 'halluc_qa_heldout'):.0%} on held-out and "
                   f"{val('base', 'halluc_nonexistent_test'):.0%} "
                   "on non-existent people (it has never been taught to abstain).")  # fmt: skip
    for v in ("sft", "neftune", "rdrop", "noisefit_largest", "noisefit_lowest"):
        if t is not None and v in t.index:
            out.append(f"{get_variant(v).label}: hallucination {val(v, 'halluc_qa_heldout'):.1%} (held-out) / "
                       f"{val(v, 'halluc_nonexistent_test'):.1%} (non-existent), exact match held-out "
                       f"{val(v, 'em_qa_heldout'):.1%}, abstention recall {val(v, 'abstain_recall'):.1%}.")  # fmt: skip
    for v in ("noisefit_kl_only", "noisefit_consistency_only"):
        if t is not None and v in t.index:
            out.append(f"{get_variant(v).label}: exact match on train people {val(v, 'em_qa_train'):.1%}, "
                       f"well-formed answers on held-out people {val(v, 'valid_qa_heldout'):.1%} (NoiseFiT-Largest "
                       f"{val('noisefit_largest', 'em_qa_train'):.1%} and "
                       f"{val('noisefit_largest', 'valid_qa_heldout'):.1%}).")
    steps = step_time_table(results)
    if len(steps):
        d = steps[steps.setting == "default"]
        out.append("Step time relative to SFT (same run): " + ", ".join(
            f"{r.label} x{r.ratio_to_sft:.2f} ({r.forward_passes} fwd)" for _, r in d.iterrows()) + ".")
    for cl in claims:
        out.append(f"{cl.claim}: {reading(cl)}.")
    missing = missing_issue_claims(claims)
    if missing:
        out.append("Not evaluated (their variants were not run): " + "; ".join(missing) + ".")
    n = {v: sum(cl.verdict == v for cl in claims) for v in ("supported", "not supported", "inconclusive")}
    out.append(f"Claim verdicts: {n['supported']} supported, {n['not supported']} not supported, "
               f"{n['inconclusive']} inconclusive.")
    return "\n".join(f"- {s}" for s in out)




def log_summary(
    results: Results,
    claims: list,
    figures: dict[str, Any] | None = None,
    *,
    html_path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    stage_seconds: float | None = None,
) -> None:
    """The W&B summary run of the stage (group ``noisefit``): the results, hallucination,
    step-time and claims tables as ``wandb.Table``, the figures, the headline as summary and
    the HTML summary page."""
    from trustlab.tracking import start_run

    with start_run(FAMILY, "summary", "noisefit-summary", config or results.config, tags=["summary"]) as run:
        run.log_table("results", summary_table(results, fmt=True))
        run.log_table("results_new_facts", summary_table(results, setting="new_facts", fmt=True))
        run.log_table("hallucination", hallucination_table(results, fmt=True))
        run.log_table("step_time", step_time_table(results))
        run.log_table("claims", claims_frame(claims))
        if results.snr:
            import pandas as pd

            run.log_table("snr", pd.DataFrame(results.snr))
        for name, fig in (figures or {}).items():
            run.log_image(name, fig)
        run.summary(headline(results, claims, stage_seconds))
        if html_path is not None and Path(html_path).exists():
            run.log_html("summary_html", html_path)


# ---------------------------------------------------------------------------------------------
# figures


def plot_snr(results: Results, setting: str = "default"):
    """Per-layer SNR (mean ± std over seeds) with the layers each selection picked: marker
    size = the share of seeds that picked the layer."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(results.snr)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if df.empty:
        ax.set_title("per-layer SNR: no NoiseFiT variant was run")
        return fig
    df = df[df.setting == setting]
    base = df.groupby("layer").snr.agg(["mean", "std"]).reset_index()
    ax.bar(base.layer, base["mean"], yerr=base["std"].fillna(0), color="0.75", label="SNR (mean over seeds)")
    top = base.set_index("layer")["mean"]
    for variant, marker, color in (("noisefit_largest", "^", "tab:blue"), ("noisefit_lowest", "v", "tab:red")):
        sub = df[df.variant == variant]
        sel = sub[sub.selected]
        if not sel.empty:
            share = sel.groupby("layer").size() / sub.seed.nunique()
            ax.scatter(share.index, [top[i] * 1.08 for i in share.index], marker=marker, s=80 * share.values,
                       color=color, label=f"{get_variant(variant).label} picks", zorder=3)  # fmt: skip
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("SNR = mean|h| / mean|noise|")
    ax.set_xticks(sorted(df.layer.unique()))
    ax.legend(fontsize=8)
    ax.set_title("per-layer SNR and selected layers")
    fig.tight_layout()
    return fig


def plot_curves(results: Results, seed: int | None = None, setting: str = "default"):
    """Loss components over training steps, one panel per component, one line per variant."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(results.curves)
    comps = [c for c in ("ce", "soft", "consistency", "total") if c in df.columns]
    fig, axes = plt.subplots(1, max(len(comps), 1), figsize=(3.2 * max(len(comps), 1), 3), squeeze=False)
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


def plot_hallucination(results: Results, setting: str = "default", prefix: str = ""):
    """Hallucination rate by split and variant (mean ± std over seeds); ``prefix="s_"`` for the
    5-sample protocol."""
    import matplotlib.pyplot as plt

    table = hallucination_table(results, setting=setting)
    splits = [s for s in EVAL_SPLITS if f"{prefix}halluc_{s}" in table.columns]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table)), 3.4))
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(table))
    for j, s in enumerate(splits):
        ax.bar(x + j * width, table[f"{prefix}halluc_{s}"], width, yerr=table[f"{prefix}halluc_{s}_std"].fillna(0),
               label=SPLIT_NAMES.get(s, s))  # fmt: skip
    ax.set_xticks(x + width * (len(splits) - 1) / 2)
    ax.set_xticklabels(table.label if len(table) else [], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("hallucination rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    protocol = "5 samples" if prefix == "s_" else "greedy"
    ax.set_title(f"hallucination rate by split (setting {setting}, {protocol})")
    fig.tight_layout()
    return fig


def plot_step_time(results: Results):
    """Training-step time relative to SFT per variant (mean ± std over seeds), default setting."""
    import matplotlib.pyplot as plt

    steps = step_time_table(results)
    fig, ax = plt.subplots(figsize=(6, 3))
    if steps.empty:
        return fig
    d = steps[steps.setting == "default"]
    ax.bar(range(len(d)), d.ratio_to_sft, yerr=d.ratio_to_sft_std.fillna(0), color="tab:gray")
    ax.scatter(range(len(d)), d.forward_passes, marker="_", s=300, color="tab:red", label="forward passes per step")
    ax.set_xticks(range(len(d)))
    ax.set_xticklabels(d.label, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("step time / SFT step time")
    ax.axhline(1, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title("training cost relative to SFT (same run)")
    fig.tight_layout()
    return fig
