"""Plan, train and evaluate the ``entropy_attention`` stage: every architecture variant on the
code corpus, then the gamma sweep, and the cost of measuring entropy.

Protocol
--------
* **Data**: the data stage's Python-stdlib code corpus (``<data_dir>/generated/code/`` or
  ``<data_dir>/code/``), split by file. Files are taken in manifest order up to
  ``max_train_bytes`` / ``max_val_bytes``, tokenised as bytes (``ByteTokenizer``) and packed into
  windows of exactly ``block_size`` tokens (no padding).
* **Training**: every variant and seed runs ``steps`` optimizer steps of ``batch_size`` windows
  (the same token budget), with the same seeded data order for a given seed (``lm.training.fit``).
  A non-finite or blown-up loss stops the run and is recorded; it never stops the stage.
* **Entropy**: measured on a fixed probe batch (the first ``probe_windows`` validation windows)
  at step 0 and every ``log_every`` steps (eval mode, no gradient), and at the end on every
  validation window together with the validation loss.

Experiment tracking is not done here: :func:`train_run` reports to an optional ``on_run`` hook
(see :class:`RunHook`; the W&B one is ``report.wandb_run_hook``), so this module runs with
tracking off and without the plotting stack.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from trustlab.core.io import read_json, read_jsonl
from trustlab.core.paths import data_dir as default_data_dir
from trustlab.core.paths import portable
from trustlab.core.progress import progress
from trustlab.core.seeding import seed_everything
from trustlab.entropy_attention.config import EntropyAttentionConfig
from trustlab.entropy_attention.entropy import attention_entropy
from trustlab.entropy_attention.model import build_model, learned_parameters
from trustlab.entropy_attention.module import EntropyAttentionModule, EntropyMonitor
from trustlab.entropy_attention.results import Results, RunResult
from trustlab.entropy_attention.variants import get_variant
from trustlab.lm.losses import causal_lm_loss
from trustlab.lm.tokenizer import ByteTokenizer
from trustlab.lm.training import PackedTextDataset, _set_threads, fit

LN2 = math.log(2.0)


# -- data ---------------------------------------------------------------------------------------
def code_dir(data_dir: str | Path | None) -> Path:
    """The directory holding the code corpus ``files.jsonl``."""
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    for cand in (base / "generated" / "code", base / "code"):
        if (cand / "files.jsonl").exists():
            return cand
    raise FileNotFoundError(
        f"no code corpus (code/files.jsonl) under {base / 'generated'} or {base}: run the data stage first"
    )


@dataclass
class Corpus:
    train: PackedTextDataset
    val_ids: torch.Tensor  # (N, T)
    probe_ids: torch.Tensor  # (P, T), the first P validation windows
    vocab_size: int
    pad_id: int
    info: dict[str, Any] = field(default_factory=dict)


def _take(rows: list[dict], cap: int) -> list[dict]:
    """Files in manifest order until ``cap`` bytes are reached."""
    out, total = [], 0
    for r in rows:
        if total >= cap:
            break
        out.append(r)
        total += r["n_bytes"]
    return out


def load_corpus(cfg: EntropyAttentionConfig, data_dir: str | Path | None = None) -> Corpus:
    """Train windows, evaluation windows and the probe batch from the code corpus."""
    directory = code_dir(data_dir)
    rows = read_jsonl(directory / "files.jsonl")
    train_files = _take([r for r in rows if r["split"] == "train"], cfg.max_train_bytes)
    val_files = _take([r for r in rows if r["split"] == "val"], cfg.max_val_bytes)
    if not train_files or not val_files:
        raise ValueError(f"the code corpus in {directory} needs files in both splits "
                         f"(train: {len(train_files)}, val: {len(val_files)})")
    tok = ByteTokenizer()
    T = cfg.block_size
    train = PackedTextDataset(tok, [r["text"] for r in train_files], T)
    n_train = max(1, min(len(train.items), cfg.max_train_bytes // T))
    train.items = train.items[:n_train]
    val = PackedTextDataset(tok, [r["text"] for r in val_files], T)
    val_all = torch.tensor([it["input_ids"] for it in val.items if len(it["input_ids"]) == T], dtype=torch.long)
    if len(val_all) == 0:
        raise ValueError(f"the validation files hold fewer than block_size = {T} tokens")
    # evaluation windows spread over the whole validation stream
    idx = np.unique(np.linspace(0, len(val_all) - 1, min(cfg.val_windows, len(val_all))).round().astype(int))
    val_ids = val_all[torch.as_tensor(idx)]
    probe_ids = val_ids[: min(cfg.probe_windows, len(val_ids))]
    manifest = directory / "manifest.json"
    info = {
        "code_dir": portable(directory),
        "corpus_sha256": (read_json(manifest).get("source") or {}).get("corpus_sha256") if manifest.exists() else None,
        "train_files": len(train_files),
        "val_files": len(val_files),
        "train_bytes": sum(r["n_bytes"] for r in train_files),
        "val_bytes": sum(r["n_bytes"] for r in val_files),
        "train_windows": len(train.items),
        "val_windows": int(len(val_ids)),
        "probe_windows": int(len(probe_ids)),
        "tokens_per_run": cfg.steps * cfg.batch_size * T,
        "epochs_per_run": cfg.steps * cfg.batch_size / max(len(train.items), 1),
    }
    return Corpus(train=train, val_ids=val_ids, probe_ids=probe_ids, vocab_size=tok.vocab_size, pad_id=tok.pad_id,
                  info=info)


# -- one run ------------------------------------------------------------------------------------
def model_kwargs(cfg: EntropyAttentionConfig, vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "block_size": cfg.block_size,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "mlp_ratio": cfg.mlp_ratio,
        "dropout": cfg.dropout,
        "attention_kwargs": {
            "temperature_init": cfg.temperature_init,
            "selective_beta_init": cfg.selective_beta_init,
            "softplus_p": cfg.softplus_p,
            "softplus_offset": cfg.softplus_offset,
        },
    }


def divergence_loss(cfg: EntropyAttentionConfig, vocab_size: int) -> float:
    """The loss above which a run counts as diverged: ``cfg.divergence_loss`` or 2 ln(vocab)
    (twice the loss of a uniform guess)."""
    return cfg.divergence_loss if cfg.divergence_loss is not None else 2.0 * math.log(vocab_size)


def evaluate(model, ids: torch.Tensor, batch_size: int = 32) -> dict[str, Any]:
    """Validation CE (nats/token), perplexity, bits per token and the entropy statistics of
    every window (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    loss_sum = n_targets = 0.0
    mean_sum = per_query_sum = None
    max_u = float("nan")
    try:
        with torch.no_grad():
            for s in range(0, len(ids), batch_size):
                x = ids[s : s + batch_size]
                out = model(x, output_attentions=True)
                n = x.numel() - x.size(0)
                loss_sum += float(causal_lm_loss(out.logits, x)) * n
                n_targets += n
                st = attention_entropy(out.attentions)
                w = x.size(0)
                mean_sum = st.mean * w if mean_sum is None else mean_sum + st.mean * w
                per_query_sum = st.per_query * w if per_query_sum is None else per_query_sum + st.per_query * w
                max_u = st.max_uniform
    finally:
        model.train(was_training)
    loss = loss_sum / max(n_targets, 1)
    mean = mean_sum / len(ids)
    finite = math.isfinite(loss) and loss < 700
    return {
        "val_loss": loss,
        "val_ppl": math.exp(loss) if finite else float("inf") if loss == loss else float("nan"),
        "val_bpt": loss / LN2,
        "entropy": mean,
        "entropy_norm": mean / max_u,
        "per_query": per_query_sum / len(ids),
        "max_uniform": max_u,
    }


@dataclass(frozen=True)
class RunInfo:
    """Who a run is, for a tracker: ``gamma_swept`` is True when the run's gamma was set by the
    sweep rather than taken from the config."""

    variant: str
    seed: int
    gamma: float
    gamma_swept: bool
    config: dict[str, Any]
    tags: tuple[str, ...]


class RunHook(Protocol):
    """What :func:`train_run` tells a tracker while one run trains."""

    def on_entropy(self, row: dict[str, Any]) -> None: ...  # an EntropyMonitor row
    def on_train_log(self, row: dict[str, Any]) -> None: ...  # a training-curve row
    def on_result(self, result: RunResult) -> None: ...  # the finished, evaluated run


OnRun = Callable[[RunInfo], AbstractContextManager[RunHook]]


class _Silent:
    def on_entropy(self, row: dict[str, Any]) -> None:
        pass

    def on_train_log(self, row: dict[str, Any]) -> None:
        pass

    def on_result(self, result: RunResult) -> None:
        pass


def train_run(
    cfg: EntropyAttentionConfig,
    corpus: Corpus,
    variant: str,
    seed: int,
    *,
    gamma: float | None = None,
    lr: float | None = None,
    on_run: OnRun | None = None,
    tags: tuple[str, ...] = (),
) -> RunResult:
    """Train one variant from scratch with one seed and evaluate it. Divergence (or a numerical
    error in training) is recorded in the result and never raised."""
    v = get_variant(variant)
    g = cfg.gamma if gamma is None else float(gamma)
    lam = cfg.lam if v.entropy_reg else 0.0
    seed_everything(seed)
    model = build_model(v, gamma=g, theta_init=cfg.theta_init, **model_kwargs(cfg, corpus.vocab_size))
    module = EntropyAttentionModule(
        model,
        lam=lam,
        divergence_loss=divergence_loss(cfg, corpus.vocab_size),
        lr=cfg.lr if lr is None else lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    info = RunInfo(
        variant=variant, seed=seed, gamma=g, gamma_swept=not (gamma is None or gamma == cfg.gamma),
        config={**cfg.to_dict(), "variant": variant, "seed": seed, "gamma": g, "lam_effective": lam, "label": v.label,
                **{f"gpt.{k}": val for k, val in v.gpt_fields().items()}},
        tags=(variant, *tags),
    )  # fmt: skip
    tracker = on_run(info) if on_run is not None else contextlib.nullcontext(_Silent())
    with tracker as hook:
        monitor = EntropyMonitor(corpus.probe_ids, cfg.log_every, hook.on_entropy)
        status, reason, steps, tokens, seconds = "ok", None, 0, 0, 0.0
        t0 = time.perf_counter()
        try:
            res = fit(module, corpus.train, pad_id=corpus.pad_id, batch_size=cfg.batch_size, max_steps=cfg.steps,
                      seed=seed, threads=cfg.threads, grad_clip=cfg.grad_clip, callbacks=[monitor],
                      on_log=hook.on_train_log)  # fmt: skip
            steps, tokens, seconds = res.steps, res.tokens, res.seconds
        except (RuntimeError, FloatingPointError, OverflowError) as exc:  # numerical failure: record it
            status, reason = "error", f"{type(exc).__name__}: {exc}"[:300]
            steps, seconds = len(module.curve), time.perf_counter() - t0
        if module.diverged is not None:
            status, reason = "diverged", module.diverged["reason"]
        t1 = time.perf_counter()
        ev = evaluate(model, corpus.val_ids, cfg.eval_batch_size)
        if status == "ok" and not math.isfinite(ev["val_loss"]):
            status, reason = "diverged", "non-finite validation loss"
        learned = {k: (val.tolist() if val is not None else None) for k, val in learned_parameters(model).items()}
        result = RunResult(
            variant=variant, seed=seed, gamma=g, lam=lam, status=status, reason=reason,
            diverged_step=module.diverged["step"] if module.diverged else None,
            steps=int(steps), tokens=int(tokens), train_seconds=float(seconds),
            monitor_seconds=monitor.seconds, monitor_calls=monitor.calls, eval_seconds=time.perf_counter() - t1,
            val_loss=ev["val_loss"], val_ppl=ev["val_ppl"], val_bpt=ev["val_bpt"], max_uniform=ev["max_uniform"],
            entropy=ev["entropy"].tolist(), entropy_norm=ev["entropy_norm"].tolist(),
            per_query=ev["per_query"].tolist(), history=monitor.rows, curve=list(module.curve), learned=learned,
        )  # fmt: skip
        hook.on_result(result)
    return result


# -- the stage ----------------------------------------------------------------------------------
def run_stage(cfg: EntropyAttentionConfig, corpus: Corpus, *, on_run: OnRun | None = None) -> Results:
    """Every (variant, seed), then the gamma sweep (reusing runs at ``cfg.gamma``)."""
    t0 = time.perf_counter()
    jobs = [(v, s) for s in cfg.seeds for v in cfg.variants]
    runs = [train_run(cfg, corpus, v, s, on_run=on_run) for v, s in progress(jobs, desc="variants x seeds")]
    done = {(r.variant, r.seed) for r in runs}
    sweep_jobs = [
        (g, s) for g in cfg.gamma_sweep for s in cfg.gamma_sweep_seeds
        if not (g == cfg.gamma and (cfg.gamma_sweep_variant, s) in done)
    ]  # fmt: skip
    sweep = [
        train_run(cfg, corpus, cfg.gamma_sweep_variant, s, gamma=g, on_run=on_run, tags=("gamma_sweep",))
        for g, s in progress(sweep_jobs, desc="gamma sweep")
    ]
    return Results(config=cfg.to_dict(), runs=runs, sweep=sweep, seconds=time.perf_counter() - t0,
                   corpus=dict(corpus.info))  # fmt: skip


# -- the cost of measuring entropy ------------------------------------------------------------
def measure_overhead(cfg: EntropyAttentionConfig, corpus: Corpus, *, variant: str = "SM+LN+G",
                     steps: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Time three things on the same batches, interleaved (the machine is shared):

    * ``fast``: a training step on the fused-kernel path (no probabilities);
    * ``every_step``: the same step asking for the probabilities and computing the per-head
      entropy of the training batch (what measuring on every step would cost);
    * ``probe``: one :class:`EntropyMonitor` measurement (what a logging step adds).

    ``amortised_ratio`` = (log_every x fast + probe) / (log_every x fast): the cost of measuring
    only on logging steps relative to the fast path."""
    n = cfg.overhead_steps if steps is None else steps
    if n < 1:
        return {}
    _set_threads(cfg.threads)
    seed_everything(0)
    model = build_model(variant, **model_kwargs(cfg, corpus.vocab_size))
    opt = model.configure_optimizers(cfg.weight_decay, cfg.lr)
    items = corpus.train.items
    batches = [torch.tensor([items[(i * cfg.batch_size + j) % len(items)]["input_ids"] for j in range(cfg.batch_size)])
               for i in range(n + 1)]  # fmt: skip
    monitor = EntropyMonitor(corpus.probe_ids, cfg.log_every)

    def step(x, with_entropy: bool) -> float:
        t0 = time.perf_counter()
        out = model(x, output_attentions=with_entropy)
        loss = causal_lm_loss(out.logits, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if with_entropy:
            with torch.no_grad():
                attention_entropy([a.detach() for a in out.attentions]).mean.tolist()
        return time.perf_counter() - t0

    model.train()
    step(batches[0], False), step(batches[0], True)  # warm-up
    fast, every, probe = [], [], []
    for i in range(n):
        fast.append(step(batches[i + 1], False))
        every.append(step(batches[i + 1], True))
        t0 = time.perf_counter()
        monitor.measure(model, i)
        probe.append(time.perf_counter() - t0)
    f, e, p = (float(np.median(x)) for x in (fast, every, probe))
    return {
        "variant": variant,
        "steps_timed": n,
        "fast_ms": 1000 * f,
        "every_step_ms": 1000 * e,
        "every_step_ratio": e / f,
        "probe_ms": 1000 * p,
        "log_every": cfg.log_every,
        "amortised_ratio": amortised_ratio(f, p, cfg.log_every),
    }


def amortised_ratio(fast_seconds: float, probe_seconds: float, log_every: int) -> float:
    """Cost of training with one probe measurement every ``log_every`` steps, relative to the
    fast path alone."""
    return (log_every * fast_seconds + probe_seconds) / (log_every * fast_seconds)


def realised_overhead(results: Results) -> dict[str, float]:
    """Entropy monitoring's share of the stage's training time, from the runs themselves."""
    runs = results.all_runs
    train = sum(r.train_seconds for r in runs)
    mon = sum(r.monitor_seconds for r in runs)
    return {
        "train_seconds": train,
        "monitor_seconds": mon,
        "monitor_calls": sum(r.monitor_calls for r in runs),
        "ratio": train / (train - mon) if train > mon else float("nan"),
    }
