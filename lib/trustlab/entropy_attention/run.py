"""Plan, train and evaluate the ``entropy_attention`` stage: the lambda sweep on tuning seeds,
every architecture variant on the code corpus at the chosen lambda, the optional gamma sweep,
and the cost of measuring entropy.

Protocol
--------
* **Data**: the data stage's Python-stdlib code corpus (``<data_dir>/generated/code/`` or
  ``<data_dir>/code/``), split by file. Files are taken in manifest order up to
  ``max_train_bytes`` / ``max_val_bytes``, tokenised as bytes (``ByteTokenizer``) and packed into
  windows of exactly ``block_size`` tokens (no padding). The validation files are split in two,
  file by file (alternately): *tuning* windows (lambda selection, the validation curves) and
  *test* windows (every metric of the claims), so tuning never sees the test windows.
* **Tuning**: the regularised variant at every lambda of ``lam_sweep`` on the ``tune_seeds``;
  the lambda with the lowest mean tuning perplexity is used by every regularised variant of the
  main runs (lambda = 0, the regularizer off, is a candidate).
* **Training**: every variant and seed runs ``steps`` optimizer steps of ``batch_size`` windows
  (the same token budget), with the same seeded data order for a given seed (``lm.training.fit``).
  A non-finite or blown-up loss stops the run and is recorded; it never stops the stage.
* **Entropy**: measured with the loss on a fixed probe batch (the first ``probe_windows``
  tuning windows) at step 0 and every ``log_every`` steps (eval mode, no gradient), and at the
  end on every tuning and test window together with their validation loss.
* **Workers**: every run is an independent task for :func:`trustlab.core.parallel.submit_tasks`
  (the variants without the regularizer start with the lambda sweep); each worker loads the
  corpus once and every run seeds itself, so the results do not depend on ``workers``.

Experiment tracking is not done here: :func:`train_run` reports to an optional ``on_run`` hook
(see :class:`RunHook`; the W&B one is ``report.wandb_run_hook``), so this module runs with
tracking off and without the plotting stack.
"""

from __future__ import annotations

import contextlib
import math
import resource
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
from trustlab.core.parallel import TaskBatch, resolve_workers, submit_tasks
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
    val_ids: torch.Tensor  # (N, T) test windows: the claims' metrics
    tune_ids: torch.Tensor  # (M, T) tuning windows: lambda selection
    probe_ids: torch.Tensor  # (P, T), the first P tuning windows: the validation curves
    vocab_size: int
    pad_id: int
    info: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None  # where it was loaded from (workers load it again from there)


def _take(rows: list[dict], cap: int) -> list[dict]:
    """Files in manifest order until ``cap`` bytes are reached."""
    out, total = [], 0
    for r in rows:
        if total >= cap:
            break
        out.append(r)
        total += r["n_bytes"]
    return out


def _all_windows(tok: ByteTokenizer, texts: list[str], T: int) -> torch.Tensor:
    packed = PackedTextDataset(tok, texts, T)
    every = [it["input_ids"] for it in packed.items if len(it["input_ids"]) == T]
    return torch.tensor(every, dtype=torch.long) if every else torch.zeros(0, T, dtype=torch.long)


def _spread(every: torch.Tensor, n: int) -> torch.Tensor:
    """Up to ``n`` windows spread evenly over ``every``."""
    if len(every) == 0:
        return every
    idx = np.unique(np.linspace(0, len(every) - 1, min(n, len(every))).round().astype(int))
    return every[torch.as_tensor(idx)]


def load_corpus(cfg: EntropyAttentionConfig, data_dir: str | Path | None = None) -> Corpus:
    """Train windows, test and tuning windows (the validation files split alternately, file by
    file) and the probe batch from the code corpus."""
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
    if len(val_files) >= 2:  # alternately, file by file: no file feeds both halves
        test_files, tune_files = val_files[0::2], val_files[1::2]
        test_all = _all_windows(tok, [r["text"] for r in test_files], T)
        tune_all = _all_windows(tok, [r["text"] for r in tune_files], T)
    else:  # one validation file (tiny corpora): its first half tunes, its second half tests
        test_files, tune_files = val_files, val_files
        every = _all_windows(tok, [val_files[0]["text"]], T)
        tune_all, test_all = every[: len(every) // 2], every[len(every) // 2 :]
    val_ids = _spread(test_all, cfg.val_windows)
    tune_ids = _spread(tune_all, cfg.tune_windows)
    if len(val_ids) == 0 or len(tune_ids) == 0:
        raise ValueError(f"the test or tuning validation files hold fewer than block_size = {T} tokens")
    probe_ids = tune_ids[: min(cfg.probe_windows, len(tune_ids))]
    manifest = directory / "manifest.json"
    info = {
        "code_dir": portable(directory),
        "corpus_sha256": (read_json(manifest).get("source") or {}).get("corpus_sha256") if manifest.exists() else None,
        "train_files": len(train_files),
        "val_files": len(val_files),
        "test_files": len(test_files),
        "tune_files": len(tune_files),
        "train_bytes": sum(r["n_bytes"] for r in train_files),
        "val_bytes": sum(r["n_bytes"] for r in val_files),
        "train_windows": len(train.items),
        "val_windows": int(len(val_ids)),
        "tune_windows": int(len(tune_ids)),
        "probe_windows": int(len(probe_ids)),
        "tokens_per_run": cfg.steps * cfg.batch_size * T,
        "epochs_per_run": cfg.steps * cfg.batch_size / max(len(train.items), 1),
    }
    return Corpus(train=train, val_ids=val_ids, tune_ids=tune_ids, probe_ids=probe_ids, vocab_size=tok.vocab_size,
                  pad_id=tok.pad_id, info=info, data_dir=None if data_dir is None else str(data_dir))


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
    lam: float | None = None,
    lr: float | None = None,
    on_run: OnRun | None = None,
    tags: tuple[str, ...] = (),
) -> RunResult:
    """Train one variant from scratch with one seed and evaluate it (``lam``: the regularizer's
    coefficient, ``cfg.lam`` when None; ignored by a variant without the regularizer).
    Divergence (or a numerical error in training) is recorded in the result and never raised."""
    v = get_variant(variant)
    g = cfg.gamma if gamma is None else float(gamma)
    lam = (cfg.lam if lam is None else float(lam)) if v.entropy_reg else 0.0
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
        tune = evaluate(model, corpus.tune_ids, cfg.eval_batch_size)
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
            per_query=ev["per_query"].tolist(),
            tune={"val_loss": tune["val_loss"], "val_ppl": tune["val_ppl"], "entropy": tune["entropy"].tolist(),
                  "entropy_norm": tune["entropy_norm"].tolist()},
            history=monitor.rows, curve=list(module.curve), learned=learned,
        )  # fmt: skip
        hook.on_result(result)
    return result


# -- the stage ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTask:
    """One planned run: picklable, so a worker process can train it (it loads the corpus itself)."""

    cfg: EntropyAttentionConfig
    data_dir: str | None
    variant: str
    seed: int
    gamma: float | None = None
    lam: float | None = None
    tags: tuple[str, ...] = ()
    on_run: OnRun | None = None


_CORPORA: dict[tuple, Corpus] = {}  # per process: a worker loads the corpus once for all its runs


def _corpus_key(cfg: EntropyAttentionConfig, data_dir: str | None) -> tuple:
    return (data_dir, cfg.block_size, cfg.max_train_bytes, cfg.max_val_bytes, cfg.val_windows, cfg.tune_windows,
            cfg.probe_windows)


def train_task(task: RunTask) -> RunResult:
    """:func:`train_run` for one planned run (module level: the worker pool calls it)."""
    key = _corpus_key(task.cfg, task.data_dir)
    if key not in _CORPORA:
        _CORPORA[key] = load_corpus(task.cfg, task.data_dir)
    return train_run(task.cfg, _CORPORA[key], task.variant, task.seed, gamma=task.gamma, lam=task.lam,
                     on_run=task.on_run, tags=task.tags)  # fmt: skip


def choose_lam(tuning: list[RunResult], fallback: float) -> float:
    """The lambda with the lowest mean *tuning* perplexity over the tuning seeds (a lambda with a
    diverged run counts as infinite); ties go to the smaller lambda. ``fallback`` without runs."""
    if not tuning:
        return fallback
    by_lam: dict[float, list[float]] = {}
    for r in tuning:
        ppl = r.tune["val_ppl"] if r.ok and math.isfinite(r.tune["val_ppl"]) else math.inf
        by_lam.setdefault(r.lam, []).append(ppl)
    return min(sorted(by_lam), key=lambda lam: float(np.mean(by_lam[lam])))


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished, waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_stage(cfg: EntropyAttentionConfig, corpus: Corpus, *, on_run: OnRun | None = None) -> Results:
    """The lambda sweep on the tuning seeds, then every (variant, seed) with the chosen lambda,
    then the gamma sweep (reusing runs at ``cfg.gamma``), on ``cfg.workers`` processes;
    ``on_run`` must be picklable when ``workers`` > 1.

    The variants without the regularizer do not depend on the chosen lambda: they go to the
    workers together with the sweep, and only the regularised runs and the gamma sweep wait
    for the choice, so no core idles between the phases. Every run seeds itself, so the
    results are those of the phases run one after another."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    workers = resolve_workers(cfg.workers)
    _CORPORA[_corpus_key(cfg, corpus.data_dir)] = corpus  # the serial path reuses the loaded corpus

    def submit(plan: list[RunTask]) -> TaskBatch[RunResult]:
        return submit_tasks(train_task, plan, workers=workers)

    def task(variant: str, seed: int, **kw: Any) -> RunTask:
        return RunTask(cfg, corpus.data_dir, variant, seed, on_run=on_run, **kw)

    grid = [(v, s) for s in cfg.seeds for v in cfg.variants]
    uses_lam = {v: get_variant(v).entropy_reg for v in cfg.variants}
    tuning_batch = submit([task(cfg.lam_sweep_variant, s, lam=lam, tags=("lam_sweep",))
                           for lam in cfg.lam_sweep for s in cfg.tune_seeds])  # fmt: skip
    free_batch = submit([task(v, s) for v, s in grid if not uses_lam[v]])
    tuning = tuning_batch.results("lambda sweep")
    lam = choose_lam(tuning, cfg.lam)
    tuned_batch = submit([task(v, s, lam=lam) for v, s in grid if uses_lam[v]])
    sweep_batch = submit([
        task(cfg.gamma_sweep_variant, s, gamma=g, lam=lam, tags=("gamma_sweep",))
        for g in cfg.gamma_sweep for s in cfg.gamma_sweep_seeds
        if not (g == cfg.gamma and (cfg.gamma_sweep_variant, s) in set(grid))
    ])  # fmt: skip
    free, tuned = iter(free_batch.results("variants x seeds")), iter(tuned_batch.results("regularised variants"))
    runs = [next(tuned) if uses_lam[v] else next(free) for v, _ in grid]  # plan order
    sweep = sweep_batch.results("gamma sweep")
    return Results(config=cfg.to_dict(), runs=runs, sweep=sweep, seconds=time.perf_counter() - t0,
                   corpus=dict(corpus.info), tuning=tuning, chosen_lam=lam,
                   cpu_seconds=_cpu_seconds() - cpu0, workers=workers)  # fmt: skip


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
