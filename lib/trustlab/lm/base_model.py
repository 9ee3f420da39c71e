"""The pretrained base model: the ``base_model`` stage (params section ``base_model:``).

One tiny GPT is pretrained from scratch and shared by the families that need a language
model. The stage is four functions, each usable on its own:

* :func:`build_mix` — the pretraining mix from the generated data (``<data>/generated``):

  ===================  ==============================================================
  component            what (``mix.<name>`` = copies per pass; 0 leaves it out)
  ===================  ==============================================================
  ``bios``             biographies of the ``qa_train`` and ``qa_heldout`` people
  ``qa_train``         QA pairs of ``qa_train`` people (mixed training: it is what lets a
                       small model answer questions about people it only read about)
  ``arithmetic``       ``arithmetic/train``
  ``instructions``     ``instructions/train``
  ``context_copy``     ``context_copy/train``
  ``nonexistent_train``  abstention examples (default 0: the base model is *not* taught to
                       abstain, so its answers about non-existent people are the
                       hallucination baseline that fine-tuning starts from)
  ``code``             a slice of the code corpus (``code_max_chars`` characters)
  ===================  ==============================================================

  Every text or example is one segment (``<bos> ... <eos>``); the segments of all components
  are shuffled (seeded) and packed into rows of ``block_size`` tokens (:func:`pack_segments`:
  texts may continue in the next row, examples never do), so no step is spent on padding.

  Never in the mix, by construction (there is no key for them): the biographies of
  ``new_facts`` people, and the QA of ``qa_heldout`` (held-out knowledge extraction),
  ``new_facts`` and ``nonexistent_test``. Prompt/answer components are trained on the answer
  only (``<bos> prompt <sep> answer <eos>``, loss on answer + eos); text is trained on every
  token. A fractional copy count takes a seeded subset for the last copy. The copies are
  relative weights: training runs ``steps`` batches, cycling over the mix as often as that takes.

* :func:`fit_tokenizer` — a word-level tokenizer fit on every generated prompt, answer and
  biography (so every split decodes exactly), with ``answer_space=True``: an answer is encoded
  as ``" " + answer``, so that the answer ``Zurich`` is the same token as `` Zurich`` in the
  biographies. Without this, the knowledge read from the biographies sits on a token the
  answer never uses, and held-out extraction fails.

* :func:`pretrain` — ``trustlab.lm.training.fit`` with AdamW, linear warmup and cosine decay.

* :func:`evaluate` — greedy generation (``trustlab.lm.generation.generate``) on every
  task/split (at most ``max_eval_items`` seeded items each), scored by the task's checker
  (``trustlab.data.checkers``). Per split: ``accuracy = (1/n) Σ_i 1[checker(record_i,
  response_i)]``, ``error_rate = 1 - accuracy`` and a 95% Wilson interval; QA responses are
  also sorted into ``correct | abstain | hallucination | other`` (``classify_qa``).

* :func:`save_base_model` — the model directory, written to a temporary sibling and renamed
  into place: ``model.safetensors``, ``config.json``, ``tokenizer.json``, ``metrics.json``
  (``headline`` + per-split table + mix + timing), ``curve.csv`` (training curve),
  ``eval_summary.csv`` (per task/split), ``eval_items.jsonl`` (every evaluated response) and
  ``mix.json``.

:func:`run_stage` chains them (what ``pipelines/pretrain_base.py`` calls).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.core.config import ConfigError, Section, digest
from trustlab.data import tasks as T

MIX_COMPONENTS = ("bios", "qa_train", "arithmetic", "instructions", "context_copy", "nonexistent_train", "code")
# components made of (prompt, answer) records: name -> (task, split)
PAIR_COMPONENTS: dict[str, tuple[str, str]] = {
    "qa_train": ("world_qa", "qa_train"),
    "arithmetic": ("arithmetic", "train"),
    "instructions": ("instructions", "train"),
    "context_copy": ("context_copy", "train"),
    "nonexistent_train": ("world_qa", "nonexistent_train"),
}
# every (task, split) the checkers can score
EVAL_SPLITS: tuple[tuple[str, str], ...] = tuple(
    (task, split) for task in T.CHECKED_TASKS for split in T.task_splits(task)
)

DEFAULT_MIX = {
    "bios": 4.0,
    "qa_train": 2.0,
    "arithmetic": 1.0,
    "instructions": 0.5,
    "context_copy": 1.0,
    "nonexistent_train": 0.0,
    "code": 0.0,
}

MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json")


@dataclass(frozen=True)
class BaseModelConfig(Section):
    """``base_model:`` — architecture, pretraining mix, optimisation and evaluation."""

    SECTION = "base_model"

    seed: int = 0
    threads: int | None = 1  # torch intra-op threads (None: all cores, capped at 8)
    # architecture (trustlab.lm.gpt.GPTConfig)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64  # context; also the packing window of the text components
    dropout: float = 0.0
    # tokenizer
    min_freq: int = 1
    answer_space: bool = True  # answers encoded as " " + answer (same token as in the bios); false = ablation
    packing: bool = True  # pack segments into full rows (see build_mix)
    # pretraining mix: copies of each component per pass (see the module docstring)
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    code_max_chars: int = 200000  # characters of code-corpus text used when mix.code > 0
    # optimisation
    steps: int = 1000
    batch_size: int = 32
    lr: float = 0.003
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # evaluation
    max_eval_items: int = 300  # per task/split (seeded subset)
    max_new_tokens: int = 16
    eval_batch_size: int = 128

    def __post_init__(self):
        # a partial mix (``mix: {bios: 2}``) means the defaults for the other components; spell
        # them out so that the saved config says exactly what was trained on
        object.__setattr__(
            self,
            "mix",
            {
                **DEFAULT_MIX,
                **{
                    k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                    for k, v in self.mix.items()
                },
            },
        )

    def validate(self) -> None:
        if self.seed < 0:
            self.fail("seed", "a non-negative integer")
        if self.threads is not None:
            self.check_range("threads", 1, 64)
        for key in ("n_layer", "n_head", "n_embd"):
            self.check_range(key, 1, 4096)
        if self.n_embd % self.n_head:
            self.fail("n_embd", f"a multiple of n_head = {self.n_head}")
        self.check_range("block_size", 16, 4096)
        self.check_range("dropout", 0.0, 1.0, hi_open=True)
        self.check_range("min_freq", 1)
        unknown = sorted(set(self.mix) - set(MIX_COMPONENTS))
        if unknown:
            raise ConfigError(
                f"{self._path()}.mix: unknown component{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; allowed components are {', '.join(MIX_COMPONENTS)} "
                "(qa_heldout, new_facts and nonexistent_test are never trained on)"
            )
        for name, copies in self.mix.items():
            if isinstance(copies, bool) or not (
                isinstance(copies, (int, float)) and math.isfinite(copies) and 0 <= copies <= 1000
            ):
                raise ConfigError(
                    f"{self._path()}.mix.{name} = {copies!r} is out of range: allowed 0 <= copies <= 1000"
                )
        if not any(
            self.mix_copies(n) > 0 for n in ("bios", "qa_train", "arithmetic", "instructions", "context_copy", "code")
        ):
            raise ConfigError(
                f"{self._path()}.mix = {dict(self.mix)!r} trains on nothing: give some component copies > 0"
            )
        self.check_range("code_max_chars", 0)
        self.check_range("steps", 1, 10_000_000)
        self.check_range("batch_size", 1, 65536)
        self.check_range("lr", 0.0, 1.0, lo_open=True)
        self.check_range("warmup_steps", 0)
        self.check_range("min_lr_ratio", 0.0, 1.0)
        self.check_range("weight_decay", 0.0)
        self.check_range("grad_clip", 0.0, lo_open=True)
        self.check_range("max_eval_items", 1)
        self.check_range("max_new_tokens", 1, self.block_size - 4)
        self.check_range("eval_batch_size", 1, 65536)

    def mix_copies(self, name: str) -> float:
        """Copies of a component (absent from ``mix`` = the default)."""
        return float(self.mix.get(name, DEFAULT_MIX[name]))

    def gpt_config(self, vocab_size: int):
        from trustlab.lm.gpt import GPTConfig

        return GPTConfig(
            vocab_size=vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
        )


# ---------------------------------------------------------------------------------------------
# data


def generated_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/generated`` when it exists, else ``data_dir`` itself (already the generated dir)."""
    d = Path(data_dir)
    return d / "generated" if (d / "generated").is_dir() else d


def corpus_texts(gen_dir: str | os.PathLike, code_max_chars: int = 0, answer_space: bool = True) -> list[str]:
    """Every text the tokenizer must cover: all biographies, all prompts and answers of every
    task split (so that evaluation never meets an unknown piece), and the code slice."""
    gen_dir = Path(gen_dir)
    answer_prefix = " " if answer_space else ""
    texts = [b["text"] for b in T.load_bios(gen_dir)]
    for task in T.CHECKED_TASKS:
        for split in T.task_splits(task):
            for r in T.load_task(gen_dir, task, split):
                texts.append(r["prompt"])
                texts.append(answer_prefix + r["answer"])  # as encode_answer will see it
    texts.extend(code_texts(gen_dir, code_max_chars))
    return texts


def code_texts(gen_dir: str | os.PathLike, max_chars: int) -> list[str]:
    """The first ``max_chars`` characters of the code corpus's train split, whole files in
    file order (the last one cut)."""
    if max_chars <= 0:
        return []
    out, used = [], 0
    for r in T.load_code(gen_dir, "train"):
        if used >= max_chars:
            break
        text = r["text"][: max_chars - used]
        out.append(text)
        used += len(text)
    return out


def fit_tokenizer(gen_dir: str | os.PathLike, cfg: BaseModelConfig):
    from trustlab.lm.tokenizer import WordTokenizer

    code_chars = cfg.code_max_chars if cfg.mix_copies("code") > 0 else 0
    return WordTokenizer.fit(
        corpus_texts(gen_dir, code_chars, cfg.answer_space), min_freq=cfg.min_freq, answer_space=cfg.answer_space
    )


@dataclass
class Mix:
    """The pretraining dataset and what it is made of."""

    dataset: Any  # an ExampleDataset of rows (packed) or a ConcatDataset of per-component datasets
    components: dict[str, dict[str, Any]]  # name -> {copies, source_items, segments, tokens, trained_tokens}
    trained_splits: list[tuple[str, str]]  # (task, split) whose prompt/answer pairs are trained on
    bio_splits: list[str]  # person splits whose biographies are trained on

    @property
    def n_items(self) -> int:
        return len(self.dataset)

    def table(self) -> list[dict[str, Any]]:
        return [{"component": k, **v} for k, v in self.components.items()]


@dataclass(frozen=True)
class Segment:
    """One training document: ``input_ids`` with its ``loss_mask``. A text (``splittable``) may
    be cut across rows; a prompt/answer example never is (its answer needs its prompt)."""

    input_ids: list[int]
    loss_mask: list[int]
    splittable: bool
    component: str


def _copies(items: list, copies: float, seed: int, name: str) -> list:
    """``copies`` copies of ``items``; the fractional part is a seeded subset."""
    whole, frac = int(copies), copies - int(copies)
    out = [x for _ in range(whole) for x in items]
    if frac > 0 and items:
        k = round(frac * len(items))
        pick = np.sort(np.random.default_rng(T.sub_seed(seed, "mix", name)).choice(len(items), k, replace=False))
        out += [items[i] for i in pick]
    return out


def pack_segments(segments: Sequence[Segment], block_size: int) -> list[dict[str, Any]]:
    """Greedy packing, in order, into rows of at most ``block_size`` tokens: texts fill the
    room left in a row and continue in the next one; an example that does not fit in the
    room left starts a new row (the short row is padded by ``collate``). Attention crosses
    segment boundaries within a row, as in nanoGPT; every segment starts with ``<bos>``."""
    rows: list[dict[str, Any]] = []
    ids: list[int] = []
    mask: list[int] = []

    def flush():
        nonlocal ids, mask
        if len(ids) >= 2:
            rows.append({"input_ids": ids, "loss_mask": mask})
        ids, mask = [], []

    for seg in segments:
        if len(seg.input_ids) > block_size and not seg.splittable:
            raise ValueError(
                f"a {seg.component} example of {len(seg.input_ids)} tokens does not fit block_size = {block_size}"
            )
        if not seg.splittable and len(ids) + len(seg.input_ids) > block_size:
            flush()
        pos = 0
        while pos < len(seg.input_ids):
            room = block_size - len(ids)
            ids = ids + seg.input_ids[pos : pos + room]
            mask = mask + seg.loss_mask[pos : pos + room]
            pos += room
            if len(ids) == block_size:
                flush()
    flush()
    return rows


def component_segments(
    gen_dir: str | os.PathLike, tokenizer, cfg: BaseModelConfig, name: str
) -> tuple[list[Segment], int]:
    """The segments of one mix component (its copies included) and its number of source items."""
    if name in ("bios", "code"):
        source = T.pretraining_texts(gen_dir) if name == "bios" else code_texts(gen_dir, cfg.code_max_chars)
        segs = []
        for text in source:
            ids, mask = tokenizer.encode_text(text)
            segs.append(Segment(ids, mask, True, name))
    else:
        task, split = PAIR_COMPONENTS[name]
        source = T.load_task(gen_dir, task, split)
        segs = []
        for r in source:
            ids, mask = tokenizer.encode_example(r["prompt"], r["answer"])
            if len(ids) > cfg.block_size:
                raise ConfigError(
                    f"base_model.block_size = {cfg.block_size} is too small: the {task}/{split} example "
                    f"{r['id']} has {len(ids)} tokens; raise block_size"
                )
            segs.append(Segment(ids, mask, False, name))
    return _copies(segs, cfg.mix_copies(name), cfg.seed, name), len(source)


def build_mix(gen_dir: str | os.PathLike, tokenizer, cfg: BaseModelConfig) -> Mix:
    """The pretraining mix (see the module docstring); deterministic given ``cfg.seed``.

    ``packing`` (default): all segments in one seeded random order, packed into rows of
    ``block_size`` tokens (:func:`pack_segments`) — no compute is spent on padding. Without
    packing: one row per example, texts cut into ``block_size`` windows."""
    from torch.utils.data import ConcatDataset

    from trustlab.lm.training import ExampleDataset

    gen_dir = Path(gen_dir)
    components, trained, bio_splits = {}, [], []
    all_segments: list[Segment] = []
    per_component: dict[str, list[Segment]] = {}
    for name in MIX_COMPONENTS:
        if cfg.mix_copies(name) <= 0:
            continue
        segs, n_source = component_segments(gen_dir, tokenizer, cfg, name)
        if not segs:
            continue
        if name == "bios":
            bio_splits = list(T.PRETRAIN_SPLITS)
        elif name in PAIR_COMPONENTS:
            trained.append(PAIR_COMPONENTS[name])
        per_component[name] = segs
        all_segments.extend(segs)
        components[name] = {
            "copies": cfg.mix_copies(name),
            "source_items": n_source,
            "segments": len(segs),
            "tokens": sum(len(x.input_ids) for x in segs),
            "trained_tokens": sum(sum(x.loss_mask) for x in segs),
        }
    if not all_segments:
        raise ConfigError("base_model.mix selects no training data (every selected component is empty)")
    total = sum(c["tokens"] for c in components.values())
    for c in components.values():
        c["token_share"] = round(c["tokens"] / total, 4)
    if cfg.packing:
        order = np.random.default_rng(T.sub_seed(cfg.seed, "pack")).permutation(len(all_segments))
        dataset = ExampleDataset(pack_segments([all_segments[i] for i in order], cfg.block_size))
    else:
        parts = []
        for segs in per_component.values():
            rows = []
            for seg in segs:
                if seg.splittable:
                    rows += pack_segments([seg], cfg.block_size)
                else:
                    rows.append({"input_ids": seg.input_ids, "loss_mask": seg.loss_mask})
            parts.append(ExampleDataset(rows))
        dataset = ConcatDataset(parts)
    return Mix(dataset, components, trained, bio_splits)


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class PretrainResult:
    model: Any
    tokenizer: Any
    mix: Mix
    curve: list[dict[str, float]]
    seconds: float
    steps: int
    tokens: int
    tokens_per_s: float


def pretrain(gen_dir: str | os.PathLike, cfg: BaseModelConfig, *, progress: bool | None = None) -> PretrainResult:
    """Fit the tokenizer, build the mix and pretrain a GPT from scratch (seeded)."""
    import torch

    from trustlab.lm.gpt import GPT
    from trustlab.lm.training import CausalLMModule, fit
    from trustlab.core.seeding import seed_everything

    tok = fit_tokenizer(gen_dir, cfg)
    mix = build_mix(gen_dir, tok, cfg)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model = GPT(cfg.gpt_config(tok.vocab_size))
    module = CausalLMModule(
        model, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio
    )
    res = fit(
        module,
        mix.dataset,
        pad_id=tok.pad_id,
        batch_size=cfg.batch_size,
        max_steps=cfg.steps,
        seed=cfg.seed,
        threads=cfg.threads,
        grad_clip=cfg.grad_clip,
        progress=progress,
    )
    model.eval()
    return PretrainResult(model, tok, mix, list(res.curve), res.seconds, res.steps, res.tokens, res.tokens_per_s)


# ---------------------------------------------------------------------------------------------
# evaluation


def wilson_ci(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n:
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` (NaN for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # at k = 0 (k = n) the bound is exactly 0 (1); rounding would leave ~1e-18
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def eval_records(gen_dir: str | os.PathLike, task: str, split: str, max_items: int, seed: int) -> list[dict[str, Any]]:
    """At most ``max_items`` records of a split: a seeded subset in file order."""
    rows = T.load_task(gen_dir, task, split)
    if len(rows) > max_items:
        keep = np.sort(
            np.random.default_rng(T.sub_seed(seed, "eval", task, split)).choice(len(rows), max_items, replace=False)
        )
        rows = [rows[i] for i in keep]
    return rows


@dataclass
class Evaluation:
    summary: list[dict[str, Any]]  # one row per task/split
    items: list[dict[str, Any]]  # one row per evaluated record

    def headline(self) -> dict[str, float]:
        """Flat readable numbers: ``<split>_accuracy`` for QA, ``<task>_<split>_accuracy`` otherwise,
        plus QA hallucination rates and the overall error-rate range."""
        out: dict[str, float] = {}
        for r in self.summary:
            key = r["split"] if r["task"] == "world_qa" else f"{r['task']}_{r['split']}"
            out[f"{key}_accuracy"] = round(r["accuracy"], 4)
            if r["task"] == "world_qa":
                out[f"{key}_hallucination_rate"] = round(r["hallucination"], 4)
        return out


def evaluate(
    model,
    tokenizer,
    gen_dir: str | os.PathLike,
    cfg: BaseModelConfig,
    splits: Sequence[tuple[str, str]] = EVAL_SPLITS,
    trained_splits: Sequence[tuple[str, str]] = (),
) -> Evaluation:
    """Greedy answers on every task/split, scored by the checkers (see the module docstring)."""
    from trustlab.data.checkers import classify_qa, is_correct
    from trustlab.lm.generation import generate

    summary, items = [], []
    trained = {tuple(x) for x in trained_splits}
    for task, split in splits:
        records = eval_records(gen_dir, task, split, cfg.max_eval_items, cfg.seed)
        if not records:
            continue
        res = generate(
            model,
            tokenizer,
            [r["prompt"] for r in records],
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            batch_size=cfg.eval_batch_size,
        )
        labels = {k: 0 for k in ("correct", "abstain", "hallucination", "other")}
        n_correct = 0
        for r, text, reason, lp in zip(records, res.texts, res.finish_reasons, res.token_logprobs):
            ok = bool(is_correct(r, text))
            label = classify_qa(r, text) if task == "world_qa" else ("correct" if ok else "wrong")
            if task == "world_qa":
                labels[label] += 1
            n_correct += ok
            items.append(
                {
                    "task": task,
                    "split": split,
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "answer": r["answer"],
                    "response": text,
                    "correct": ok,
                    "label": label,
                    "finish_reason": reason,
                    "mean_logprob": float(np.mean(lp)) if len(lp) else float("nan"),
                }
            )
        n = len(records)
        lo, hi = wilson_ci(n_correct, n)
        row = {
            "task": task,
            "split": split,
            "trained": (task, split) in trained,
            "n": n,
            "accuracy": n_correct / n,
            "error_rate": 1 - n_correct / n,
            "ci_low": lo,
            "ci_high": hi,
        }
        if task == "world_qa":
            row.update({k: v / n for k, v in labels.items()})
        summary.append(row)
    return Evaluation(summary, items)


# ---------------------------------------------------------------------------------------------
# saving


def data_fingerprint(gen_dir: str | os.PathLike) -> str | None:
    try:
        return T.load_manifest(gen_dir).get("fingerprint")
    except FileNotFoundError:
        return None


def stage_metrics(cfg: BaseModelConfig, result: PretrainResult, evaluation: Evaluation, gen_dir, wall_s: float) -> dict:
    """``metrics.json`` of the model directory (also read by the 01_base_model notebook)."""
    curve = result.curve
    tail = [r["loss"] for r in curve[-max(1, len(curve) // 20) :]]
    headline = {
        **evaluation.headline(),
        "final_train_loss": round(float(np.mean(tail)), 4) if tail else float("nan"),
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "stage_seconds": round(wall_s, 1),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "n_params": int(sum(p.numel() for p in result.model.parameters())),
        "vocab_size": result.tokenizer.vocab_size,
    }
    return {
        "headline": headline,
        "eval": evaluation.summary,
        "mix": result.mix.table(),
        "trained_splits": [list(x) for x in result.mix.trained_splits],
        "bio_splits": result.mix.bio_splits,
        "config": cfg.to_dict(),
        "config_digest": digest(cfg.to_dict()),
        "data_fingerprint": data_fingerprint(gen_dir),
    }


def save_base_model(
    out: str | os.PathLike, result: PretrainResult, evaluation: Evaluation, metrics: Mapping[str, Any]
) -> Path:
    """Write the model directory atomically: everything goes to a temporary sibling that is
    renamed into place (an interrupted stage leaves the previous model, or nothing)."""
    from trustlab.core.io import write_csv, write_json, write_jsonl
    from trustlab.lm.checkpoint import save_model

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model directory is an ordinary output
    try:
        meta = {
            "stage": "base_model",
            "config": metrics.get("config"),
            "data_fingerprint": metrics.get("data_fingerprint"),
            "steps": result.steps,
        }
        save_model(result.model, tmp, result.tokenizer, metadata=meta)
        write_json(tmp / "metrics.json", metrics)
        write_csv(tmp / "curve.csv", [{k: r[k] for k in ("step", "loss", "lr", "tokens")} for r in result.curve])
        write_csv(tmp / "eval_summary.csv", evaluation.summary)
        write_jsonl(tmp / "eval_items.jsonl", evaluation.items)
        write_json(
            tmp / "mix.json",
            {
                "components": result.mix.table(),
                "trained_splits": metrics.get("trained_splits"),
                "bio_splits": result.mix.bio_splits,
            },
        )
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_metrics(model_dir: str | os.PathLike) -> dict[str, Any]:
    from trustlab.core.io import read_json

    return read_json(Path(model_dir) / "metrics.json")


def load_curve(model_dir: str | os.PathLike) -> list[dict[str, float]]:
    import csv

    with open(Path(model_dir) / "curve.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def load_eval_items(model_dir: str | os.PathLike) -> list[dict[str, Any]]:
    from trustlab.core.io import read_jsonl

    return read_jsonl(Path(model_dir) / "eval_items.jsonl")


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class StageResult:
    out: Path
    metrics: dict[str, Any]
    result: PretrainResult
    evaluation: Evaluation
    seconds: float


def run_stage(
    cfg: BaseModelConfig, data_dir: str | os.PathLike, out: str | os.PathLike, *, progress: bool | None = None
) -> StageResult:
    """Pretrain, evaluate and save: the whole ``base_model`` stage."""
    t0 = time.perf_counter()
    gen_dir = generated_dir(data_dir)
    if not (gen_dir / "world" / "bios.jsonl").exists():
        raise FileNotFoundError(f"{gen_dir} holds no generated data: run pipelines/generate_data.py first")
    result = pretrain(gen_dir, cfg, progress=progress)
    evaluation = evaluate(result.model, result.tokenizer, gen_dir, cfg, trained_splits=result.mix.trained_splits)
    wall = time.perf_counter() - t0
    metrics = stage_metrics(cfg, result, evaluation, gen_dir, wall)
    path = save_base_model(out, result, evaluation, metrics)
    return StageResult(path, metrics, result, evaluation, time.perf_counter() - t0)


def config_from(cfg: BaseModelConfig | Mapping[str, Any] | None) -> BaseModelConfig:
    if isinstance(cfg, BaseModelConfig):
        return cfg
    return BaseModelConfig.from_dict(cfg or {})


__all__ = [
    "BaseModelConfig",
    "DEFAULT_MIX",
    "EVAL_SPLITS",
    "MIX_COMPONENTS",
    "Evaluation",
    "Mix",
    "PretrainResult",
    "build_mix",
    "evaluate",
    "fit_tokenizer",
    "load_curve",
    "load_eval_items",
    "load_metrics",
    "pretrain",
    "run_stage",
    "save_base_model",
    "stage_metrics",
    "wilson_ci",
]


# ---------------------------------------------------------------------------------------------
# the 01_base_model report (tables and figures from a saved model directory)

REPORT_STAGE = "01_base_model"
# the error-detection method card's target range for the share of wrong answers
TARGET_ERROR_RANGE = (0.3, 0.6)


def summary_frame(metrics: Mapping[str, Any]):
    """The per task/split evaluation table of a model's ``metrics.json`` as a DataFrame."""
    import pandas as pd

    df = pd.DataFrame(metrics["eval"])
    order = ["task", "split", "trained", "n", "accuracy", "ci_low", "ci_high", "error_rate"]
    extra = [c for c in ("correct", "abstain", "hallucination", "other") if c in df]
    return df[order + extra]


def error_range_table(summary, lo: float = TARGET_ERROR_RANGE[0], hi: float = TARGET_ERROR_RANGE[1]):
    """Per task/split: the error rate and whether it lies in ``[lo, hi]`` (the range the
    error-detection family needs) — too low leaves few errors to detect, too high few correct."""
    df = summary[["task", "split", "trained", "n", "error_rate"]].copy()
    df["in_target_range"] = (df.error_rate >= lo) & (df.error_rate <= hi)
    df["note"] = [
        "in range" if ok else ("too few errors" if e < lo else "too few correct answers")
        for ok, e in zip(df.in_target_range, df.error_rate)
    ]
    return df


def _join_records(items: Sequence[Mapping[str, Any]], gen_dir: str | os.PathLike) -> list[dict[str, Any]]:
    cache: dict[tuple[str, str], dict[str, dict]] = {}
    out = []
    for it in items:
        key = (it["task"], it["split"])
        if key not in cache:
            cache[key] = {r["id"]: r for r in T.load_task(gen_dir, *key)}
        out.append({**cache[key][it["id"]], **it})
    return out


def error_breakdown(items: Sequence[Mapping[str, Any]], gen_dir: str | os.PathLike) -> dict[str, Any]:
    """Where the model is wrong, joined with the data records:

    * ``world_qa``: accuracy and hallucination share per split × attribute;
    * ``arithmetic``: accuracy per split × operation × operand digits;
    * ``context_copy``: accuracy per split × number of variables, and how often a wrong
      answer is another variable's value from the prompt (a copy from the wrong place);
    * ``instructions``: accuracy per split × requested words, and the failure kind
      (wrong word count / off-topic word / both).
    """
    import pandas as pd

    from trustlab.data.checkers import _words, on_topic_fraction

    rows = _join_records(items, gen_dir)
    out: dict[str, Any] = {}
    qa = [r for r in rows if r["task"] == "world_qa"]
    if qa:
        df = pd.DataFrame(
            {
                "split": r["split"],
                "attribute": r["attribute"],
                "correct": r["correct"],
                "hallucination": r["label"] == "hallucination",
            }
            for r in qa
        )
        out["world_qa"] = (
            df.groupby(["split", "attribute"], sort=False)
            .agg(n=("correct", "size"), accuracy=("correct", "mean"), hallucination=("hallucination", "mean"))
            .reset_index()
        )
    ar = [r for r in rows if r["task"] == "arithmetic"]
    if ar:
        df = pd.DataFrame(
            {
                "split": r["split"],
                "op": r["op"],
                "digits": f"{r['digits'][0]}x{r['digits'][1]}",
                "correct": r["correct"],
            }
            for r in ar
        )
        out["arithmetic"] = (
            df.groupby(["split", "op", "digits"], sort=True)
            .agg(n=("correct", "size"), accuracy=("correct", "mean"))
            .reset_index()
        )
    cc = [r for r in rows if r["task"] == "context_copy"]
    if cc:

        def wrong_var(r):
            from trustlab.data.checkers import extract_answer

            got = extract_answer("context_copy", r["response"])
            return (not r["correct"]) and got in {str(v) for k, v in r["vars"].items() if k != r["query"]}

        df = pd.DataFrame(
            {"split": r["split"], "n_vars": r["n_vars"], "correct": r["correct"], "other_variable": wrong_var(r)}
            for r in cc
        )
        out["context_copy"] = (
            df.groupby(["split", "n_vars"])
            .agg(n=("correct", "size"), accuracy=("correct", "mean"), copied_other_variable=("other_variable", "mean"))
            .reset_index()
        )
    ins = [r for r in rows if r["task"] == "instructions"]
    if ins:

        def kind(r):
            if r["correct"]:
                return "correct"
            count_ok = len(_words(r["response"])) == int(r["n_words"])
            topic_ok = on_topic_fraction(r, r["response"]) >= 1.0 - 1e-12
            return "wrong count" if topic_ok else ("off topic" if count_ok else "wrong count and off topic")

        df = pd.DataFrame(
            {"split": r["split"], "n_words": r["n_words"], "correct": r["correct"], "kind": kind(r)} for r in ins
        )
        out["instructions"] = (
            df.groupby(["split", "n_words"]).agg(n=("correct", "size"), accuracy=("correct", "mean")).reset_index()
        )
        out["instructions_failures"] = df.groupby(["split", "kind"]).size().rename("n").reset_index()
    return out


def sample_table(items: Sequence[Mapping[str, Any]], per_split: int = 2):
    """Up to ``per_split`` correct and ``per_split`` wrong responses of every task/split (in
    evaluation order, so the same rows every time)."""
    import pandas as pd

    rows, seen = [], {}
    for it in items:
        key = (it["task"], it["split"], bool(it["correct"]))
        if seen.get(key, 0) >= per_split:
            continue
        seen[key] = seen.get(key, 0) + 1
        rows.append({k: it[k] for k in ("task", "split", "prompt", "answer", "response", "correct", "label")})
    return pd.DataFrame(rows).sort_values(["task", "split", "correct"], kind="stable").reset_index(drop=True)


def regeneration_check(model, tokenizer, items: Sequence[Mapping[str, Any]], cfg: BaseModelConfig, per_split: int = 4):
    """Generate again, from the *saved* model, the first ``per_split`` prompts of every
    task/split and compare with the responses recorded by the stage (greedy decoding is
    deterministic, so every row should match). ``cfg`` must be the config the model was
    trained and evaluated with (``BaseModelConfig.from_dict(metrics["config"])``)."""
    import pandas as pd

    from trustlab.lm.generation import generate

    picked, seen = [], {}
    for it in items:
        key = (it["task"], it["split"])
        if seen.get(key, 0) < per_split:
            seen[key] = seen.get(key, 0) + 1
            picked.append(it)
    res = generate(
        model,
        tokenizer,
        [it["prompt"] for it in picked],
        max_new_tokens=cfg.max_new_tokens,
        do_sample=False,
        batch_size=cfg.eval_batch_size,
    )
    return pd.DataFrame(
        {
            "task": it["task"],
            "split": it["split"],
            "prompt": it["prompt"],
            "recorded": it["response"],
            "now": text,
            "same": it["response"] == text,
        }
        for it, text in zip(picked, res.texts)
    )


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_curve(curve: Sequence[Mapping[str, float]], window: int | None = None):
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in curve]
    loss = [r["loss"] for r in curve]
    window = window or max(1, len(curve) // 50)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="per step")
    ax.plot(steps, smooth(loss, window), color="tab:blue", lw=1.8, label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / trained token)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("Pretraining loss")
    ax2.plot(steps, [r["lr"] for r in curve], color="tab:gray")
    ax2.set_xlabel("step")
    ax2.set_ylabel("learning rate")
    ax2.set_title("Schedule: linear warmup, cosine decay")
    fig.tight_layout()
    return fig


def plot_accuracy(summary, target: tuple[float, float] = TARGET_ERROR_RANGE):
    """Accuracy per task/split with the 95% Wilson interval; trained splits hatched; the band
    is the accuracy range that gives the target error rates."""
    import matplotlib.pyplot as plt

    labels = [f"{t}/{s}" for t, s in zip(summary.task, summary.split)]
    acc = summary.accuracy.to_numpy()
    err = np.clip(np.vstack([acc - summary.ci_low.to_numpy(), summary.ci_high.to_numpy() - acc]), 0.0, None)
    colors = {
        "world_qa": "tab:blue",
        "arithmetic": "tab:orange",
        "instructions": "tab:green",
        "context_copy": "tab:purple",
    }
    fig, ax = plt.subplots(figsize=(9, 4.2))
    bars = ax.barh(labels, acc, xerr=err, color=[colors.get(t, "tab:gray") for t in summary.task], capsize=3)
    for b, trained in zip(bars, summary.trained):
        if trained:
            b.set_hatch("//")
    ax.axvspan(1 - target[1], 1 - target[0], color="k", alpha=0.07, label=f"error rate {target[0]:.0%}-{target[1]:.0%}")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (greedy, checker), 95% Wilson CI; hatched = split trained on")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_qa_outcomes(summary):
    """World-QA responses per split: correct / abstain / hallucination / other."""
    import matplotlib.pyplot as plt

    qa = summary[summary.task == "world_qa"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    left = np.zeros(len(qa))
    for label, color in (
        ("correct", "tab:green"),
        ("abstain", "tab:blue"),
        ("hallucination", "tab:red"),
        ("other", "tab:gray"),
    ):
        vals = qa[label].to_numpy()
        ax.barh(qa.split, vals, left=left, color=color, label=label)
        left += vals
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of responses (non-existent people: correct = abstains)")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    return fig


def report_headline(metrics: Mapping[str, Any], summary) -> dict[str, Any]:
    """The notebook's headline: the model's headline plus the error-range verdicts."""
    h = dict(metrics["headline"])
    rng = error_range_table(summary)
    h["splits_in_target_error_range"] = int(rng.in_target_range.sum())
    h["target_error_range_splits"] = ", ".join(
        f"{t}/{s}" for t, s in zip(rng.task[rng.in_target_range], rng.split[rng.in_target_range])
    )
    return h


def findings(summary, metrics: Mapping[str, Any]) -> str:
    """A few sentences generated from the numbers (no hand-written results)."""
    get = {(r.task, r.split): r for r in summary.itertuples()}
    lines = []

    def acc(task, split):
        r = get.get((task, split))
        return None if r is None else r

    tr, ho, nf = acc("world_qa", "qa_train"), acc("world_qa", "qa_heldout"), acc("world_qa", "new_facts")
    if tr is not None and ho is not None:
        lines.append(
            f"- QA exact match: **{tr.accuracy:.1%}** on `qa_train` (trained) and "
            f"**{ho.accuracy:.1%}** on `qa_heldout` "
            f"(95% CI {ho.ci_low:.1%}-{ho.ci_high:.1%}), whose questions were never trained: knowledge read from the "
            "biographies alone"
            + (
                " is extracted."
                if ho.accuracy > (nf.accuracy if nf is not None else 0) + 0.1
                else " is barely extracted at this budget."
            )
        )
    if nf is not None:
        lines.append(
            f"- `new_facts` people (never seen): {nf.accuracy:.1%} correct, "
            f"{nf.hallucination:.1%} hallucinated values — "
            "what guessing from the closed sets gives."
        )
    for split in ("nonexistent_test", "nonexistent_train"):
        r = acc("world_qa", split)
        if r is not None:
            lines.append(
                f"- `{split}`: abstains on {r.accuracy:.1%}, names a concrete value on {r.hallucination:.1%} "
                "(the base model was not taught to abstain: this is the hallucination baseline)."
                if metrics.get("config", {}).get("mix", {}).get("nonexistent_train", 0) == 0
                else f"- `{split}`: abstains on {r.accuracy:.1%}, hallucinates on {r.hallucination:.1%}."
            )
            break
    rng = error_range_table(summary)
    inside = [
        f"{t}/{s} ({e:.0%})" for t, s, e, ok in zip(rng.task, rng.split, rng.error_rate, rng.in_target_range) if ok
    ]
    lines.append(
        f"- Error rate within {TARGET_ERROR_RANGE[0]:.0%}-{TARGET_ERROR_RANGE[1]:.0%} on: "
        + (", ".join(inside) if inside else "**no split** (the error-detection family will flag this)")
        + "."
    )
    for task in ("arithmetic", "instructions", "context_copy"):
        rows = summary[summary.task == task]
        if len(rows):
            lines.append(f"- {task}: " + ", ".join(f"{s} {a:.1%}" for s, a in zip(rows.split, rows.accuracy)) + ".")
    return "\n".join(lines)
