"""The ``entropy_attention`` stage: train every architecture variant on the code corpus, measure
attention entropy, build the tables, figures and claims. The notebook calls these functions.

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
* **Per run**: validation perplexity and bits per token (tokens are bytes, so ~ bits per byte),
  the layer x head entropy (raw nats and normalised by the uniform-causal maximum), quartile
  bins of the normalised head entropies, overloaded (> ``overload_threshold``) and collapsed
  (< ``collapse_threshold`` nats) head fractions, the learned theta / temperatures.
* **Claims** (``trustlab.core.stats.claim_from_seeds``: per-seed paired differences, t 95% CI).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.entropy_attention.config import EntropyAttentionConfig
from trustlab.entropy_attention.variants import get_variant

FAMILY = "entropy_attention"
BIN_LABELS = ("0-25%", "25-50%", "50-75%", "75-100%")
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# data


def code_dir(data_dir: str | Path | None) -> Path:
    """The directory holding the code corpus ``files.jsonl``."""
    from trustlab.core.paths import data_dir as default_data_dir

    base = Path(data_dir) if data_dir is not None else default_data_dir()
    for cand in (base / "generated" / "code", base / "code"):
        if (cand / "files.jsonl").exists():
            return cand
    raise FileNotFoundError(
        f"no code corpus (code/files.jsonl) under {base / 'generated'} or {base}: run the data stage first"
    )


@dataclass
class Corpus:
    train: Any  # trustlab.lm.training.PackedTextDataset
    val_ids: Any  # (N, T) long tensor
    probe_ids: Any  # (P, T) long tensor, the first P validation windows
    vocab_size: int
    pad_id: int
    info: dict[str, Any] = field(default_factory=dict)


def _take(rows: list[dict], cap: int) -> list[dict]:
    out, total = [], 0
    for r in rows:
        if total >= cap:
            break
        out.append(r)
        total += r["n_bytes"]
    return out


def load_corpus(cfg: EntropyAttentionConfig, data_dir: str | Path | None = None) -> Corpus:
    """Train windows, evaluation windows and the probe batch from the code corpus."""
    import torch

    from trustlab.core.io import read_json
    from trustlab.lm.tokenizer import ByteTokenizer
    from trustlab.lm.training import PackedTextDataset

    directory = code_dir(data_dir)
    from trustlab.core.io import read_jsonl

    rows = read_jsonl(directory / "files.jsonl")
    train_files = _take([r for r in rows if r["split"] == "train"], cfg.max_train_bytes)
    val_files = _take([r for r in rows if r["split"] == "val"], cfg.max_val_bytes)
    if not train_files or not val_files:
        raise ValueError(f"the code corpus in {directory} needs files in both splits (train: {len(train_files)}, val: {len(val_files)})")
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
        "code_dir": str(directory),
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
    return Corpus(train=train, val_ids=val_ids, probe_ids=probe_ids, vocab_size=tok.vocab_size, pad_id=tok.pad_id, info=info)


# ---------------------------------------------------------------------------------------------
# one run


@dataclass
class RunResult:
    variant: str
    seed: int
    gamma: float
    lam: float
    status: str  # "ok" | "diverged" | "error"
    reason: str | None
    diverged_step: int | None
    steps: int
    tokens: int
    train_seconds: float  # fit() wall time, entropy monitoring included
    monitor_seconds: float
    monitor_calls: int
    eval_seconds: float
    val_loss: float
    val_ppl: float
    val_bpt: float
    max_uniform: float
    entropy: list  # (L, H) nats, validation windows, eval mode
    entropy_norm: list  # (L, H)
    per_query: list  # (L, H, T)
    history: list  # monitor rows: step, layer_mean (L,), mean (L, H), max_uniform
    curve: list  # training curve rows (loss, ce, ent_reg, lr, ...)
    learned: dict  # theta (L, H), temperature (L, H, T), selective_beta, scfu_alpha / beta

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def ms_per_step(self) -> float:
        return 1000 * (self.train_seconds - self.monitor_seconds) / self.steps if self.steps else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def evaluate(model, ids, batch_size: int = 32) -> dict[str, Any]:
    """Validation CE (nats/token), perplexity, bits per token and the entropy statistics of
    every window (eval mode, no gradient)."""
    import torch

    from trustlab.entropy_attention.entropy import attention_entropy
    from trustlab.lm.losses import causal_lm_loss

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
    return {
        "val_loss": loss,
        "val_ppl": math.exp(loss) if math.isfinite(loss) and loss < 700 else float("inf") if loss == loss else float("nan"),
        "val_bpt": loss / LN2,
        "entropy": mean,
        "entropy_norm": mean / max_u,
        "per_query": per_query_sum / len(ids),
        "max_uniform": max_u,
    }


def _run_name(variant: str, seed: int, gamma: float | None, cfg: EntropyAttentionConfig) -> str:
    from trustlab.tracking import run_name

    return run_name(variant, seed) if gamma is None or gamma == cfg.gamma else run_name(variant, seed, gamma=f"{gamma:g}")


def train_run(
    cfg: EntropyAttentionConfig,
    corpus: Corpus,
    variant: str,
    seed: int,
    *,
    gamma: float | None = None,
    lr: float | None = None,
    track: bool = True,
    tags: tuple[str, ...] = (),
) -> RunResult:
    """Train one variant from scratch with one seed and evaluate it. Divergence (or a numerical
    error in training) is recorded in the result and never raised."""
    from trustlab.entropy_attention.model import build_model, learned_parameters
    from trustlab.entropy_attention.module import EntropyAttentionModule, EntropyMonitor
    from trustlab.lm.training import fit
    from trustlab.core.seeding import seed_everything
    from trustlab.tracking import start_run

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
    run_config = {**cfg.to_dict(), "variant": variant, "seed": seed, "gamma": g, "lam_effective": lam,
                  "label": v.label, **{f"gpt.{k}": val for k, val in v.gpt_fields().items()}}
    tracker = start_run(family=FAMILY, job_type="train", name=_run_name(variant, seed, gamma, cfg),
                        config=run_config, tags=[variant, *tags]) if track else contextlib.nullcontext(None)
    with tracker as run:

        def on_record(row: dict) -> None:
            if run is not None:
                data = {f"entropy/layer{l}": e for l, e in enumerate(row["layer_mean"])}
                data.update({f"entropy_norm/layer{l}": e / row["max_uniform"] for l, e in enumerate(row["layer_mean"])})
                run.log(data, step=row["step"])

        def on_log(row: dict) -> None:
            if run is not None and "loss" in row and (row["step"] % cfg.log_every == 0 or row["step"] == 1):
                run.log({k: row[k] for k in ("loss", "ce", "ent_reg", "lr") if k in row}, step=row["step"])

        monitor = EntropyMonitor(corpus.probe_ids, cfg.log_every, on_record)
        status, reason, steps, tokens, seconds = "ok", None, 0, 0, 0.0
        t0 = time.perf_counter()
        try:
            res = fit(module, corpus.train, pad_id=corpus.pad_id, batch_size=cfg.batch_size, max_steps=cfg.steps,
                      seed=seed, threads=cfg.threads, grad_clip=cfg.grad_clip, callbacks=[monitor], on_log=on_log)
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
            entropy=ev["entropy"].tolist(), entropy_norm=ev["entropy_norm"].tolist(), per_query=ev["per_query"].tolist(),
            history=monitor.rows, curve=list(module.curve), learned=learned,
        )
        if run is not None:
            summ = run_metrics(result, cfg)
            run.summary({k: summ[k] for k in ("val_ppl", "val_bpt", "status", "overloaded", "collapsed",
                                              "early_norm_entropy", "ms_per_step", "top_bin")})
            if run.live and cfg.wandb_images:
                import matplotlib.pyplot as plt

                fig = plot_run_heatmaps(result)
                run.log_image("entropy_heatmaps", fig)
                plt.close(fig)
                if result.learned.get("theta") is not None or result.learned.get("temperature") is not None:
                    fig = plot_run_learned(result)
                    run.log_image("learned_theta_temperature", fig)
                    plt.close(fig)
    return result


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class Results:
    config: dict[str, Any]
    runs: list[RunResult]
    sweep: list[RunResult]  # gamma-sweep runs not already among ``runs``
    seconds: float = 0.0
    corpus: dict[str, Any] = field(default_factory=dict)


def run_stage(cfg: EntropyAttentionConfig, corpus: Corpus, *, track: bool = True) -> Results:
    """Every (variant, seed), then the gamma sweep (reusing runs at ``cfg.gamma``)."""
    from trustlab.core.progress import progress

    t0 = time.perf_counter()
    jobs = [(v, s) for s in cfg.seeds for v in cfg.variants]
    runs = [train_run(cfg, corpus, v, s, track=track) for v, s in progress(jobs, desc="variants x seeds")]
    done = {(r.variant, r.seed) for r in runs}
    sweep_jobs = [
        (g, s) for g in cfg.gamma_sweep for s in cfg.gamma_sweep_seeds
        if not (g == cfg.gamma and (cfg.gamma_sweep_variant, s) in done)
    ]
    sweep = [
        train_run(cfg, corpus, cfg.gamma_sweep_variant, s, gamma=g, track=track, tags=("gamma_sweep",))
        for g, s in progress(sweep_jobs, desc="gamma sweep")
    ]
    return Results(config=cfg.to_dict(), runs=runs, sweep=sweep, seconds=time.perf_counter() - t0, corpus=dict(corpus.info))


# ---------------------------------------------------------------------------------------------
# measurement overhead


def measure_overhead(cfg: EntropyAttentionConfig, corpus: Corpus, *, variant: str = "SM+LN+G", steps: int | None = None) -> dict[str, Any]:
    """Time three things on the same batches, interleaved (the machine is shared):

    * ``fast``: a training step on the fused-kernel path (no probabilities);
    * ``every_step``: the same step asking for the probabilities and computing the per-head
      entropy of the training batch (what measuring on every step would cost);
    * ``probe``: one :class:`EntropyMonitor` measurement (what a logging step adds).

    ``amortised_ratio`` = (log_every x fast + probe) / (log_every x fast): the cost of measuring
    only on logging steps relative to the fast path."""
    import torch

    from trustlab.entropy_attention.entropy import attention_entropy
    from trustlab.entropy_attention.model import build_model
    from trustlab.entropy_attention.module import EntropyMonitor
    from trustlab.lm.losses import causal_lm_loss
    from trustlab.lm.training import _set_threads
    from trustlab.core.seeding import seed_everything

    n = cfg.overhead_steps if steps is None else steps
    if n < 1:
        return {}
    _set_threads(cfg.threads)
    seed_everything(0)
    model = build_model(variant, **model_kwargs(cfg, corpus.vocab_size))
    opt = model.configure_optimizers(cfg.weight_decay, cfg.lr)
    items = corpus.train.items
    batches = [torch.tensor([items[(i * cfg.batch_size + j) % len(items)]["input_ids"] for j in range(cfg.batch_size)])
               for i in range(n + 1)]
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
        "amortised_ratio": (cfg.log_every * f + p) / (cfg.log_every * f),
    }


def realised_overhead(results: Results) -> dict[str, float]:
    """Entropy monitoring's share of the stage's training time, from the runs themselves."""
    runs = results.runs + results.sweep
    train = sum(r.train_seconds for r in runs)
    mon = sum(r.monitor_seconds for r in runs)
    return {
        "train_seconds": train,
        "monitor_seconds": mon,
        "monitor_calls": sum(r.monitor_calls for r in runs),
        "ratio": train / (train - mon) if train > mon else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# tables


def _nanmean(x) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def run_metrics(r: RunResult, cfg: EntropyAttentionConfig | dict) -> dict[str, Any]:
    """One row of headline numbers for a run."""
    from trustlab.entropy_attention.entropy import collapsed_fraction, head_bins, overloaded_fraction

    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    raw, norm = np.asarray(r.entropy, float), np.asarray(r.entropy_norm, float)
    if not r.ok:  # a stopped run's final entropies describe an early, broken model: left out
        raw, norm = np.full_like(raw, np.nan), np.full_like(norm, np.nan)
    early = list(range(max(1, c["n_layer"] // 2)))
    bins = head_bins(norm)
    row = {
        "variant": r.variant,
        "seed": r.seed,
        "gamma": r.gamma,
        "status": r.status,
        "val_loss": r.val_loss if r.ok else float("nan"),
        "val_ppl": r.val_ppl if r.ok else float("nan"),
        "val_bpt": r.val_bpt if r.ok else float("nan"),
        "steps": r.steps,
        "train_seconds": r.train_seconds,
        "ms_per_step": r.ms_per_step,
        "monitor_seconds": r.monitor_seconds,
        "mean_entropy": float(_nanmean(raw)),
        "mean_norm_entropy": float(_nanmean(norm)),
        "early_norm_entropy": float(_nanmean(norm[early])),
        "overloaded": overloaded_fraction(norm, c["overload_threshold"]),
        "early_overloaded": overloaded_fraction(norm[early], c["overload_threshold"]),
        "collapsed": collapsed_fraction(raw, c["collapse_threshold"]),
        "top_bin": bins[-1],
    }
    row.update({f"bin_{lab}": b for lab, b in zip(BIN_LABELS, bins)})
    for l in range(raw.shape[0]):
        row[f"norm_entropy_L{l}"] = float(_nanmean(norm[l]))
    return row


def runs_frame(results: Results, *, sweep: bool = False):
    import pandas as pd

    runs = results.sweep if sweep else results.runs
    return pd.DataFrame([run_metrics(r, results.config) for r in runs])


def _order(df, variants):
    return [v for v in variants if v in set(df.variant)]


def _pm(values) -> str:
    from trustlab.core.stats import mean_std

    x = [v for v in values if np.isfinite(v)]
    if not x:
        return "n/a"
    m, s = mean_std(x)
    return f"{m:.3f} ± {s:.3f}"


def perplexity_table(results: Results):
    """Per variant: validation perplexity and bits per token (mean ± std over finished seeds),
    numeric columns for plots, diverged runs and the cost per step."""
    import pandas as pd

    df = runs_frame(results)
    rows = []
    for v in _order(df, results.config["variants"]):
        d = df[df.variant == v]
        ok = d[d.status == "ok"]
        rows.append({
            "variant": v,
            "label": get_variant(v).label,
            "val_ppl": _pm(ok.val_ppl),
            "bits_per_token": _pm(ok.val_bpt),
            "ppl_mean": float(ok.val_ppl.mean()) if len(ok) else float("nan"),
            "ppl_std": float(ok.val_ppl.std(ddof=1)) if len(ok) > 1 else 0.0,
            "bpt_mean": float(ok.val_bpt.mean()) if len(ok) else float("nan"),
            "seeds_ok": int(len(ok)),
            "seeds_diverged": int((d.status != "ok").sum()),
            "ms_per_step": float(d.ms_per_step.median()),
            "train_s_per_run": float(d.train_seconds.mean()),
        })
    return pd.DataFrame(rows)


def head_bin_table(results: Results):
    """Per variant (mean over the seeds that did not diverge): fraction of heads in each quartile
    bin of the normalised entropy, overloaded and collapsed fractions, early-layer normalised
    entropy."""
    df = runs_frame(results)
    cols = [f"bin_{b}" for b in BIN_LABELS] + ["overloaded", "early_overloaded", "collapsed",
                                                "early_norm_entropy", "mean_norm_entropy", "mean_entropy"]
    out = df.groupby("variant", sort=False)[cols].mean().reindex(_order(df, results.config["variants"]))
    return out.reset_index()


def divergence_table(results: Results):
    import pandas as pd

    rows = []
    for r in results.runs + results.sweep:
        nonfinite = sum(1 for c in r.curve if not math.isfinite(c.get("loss", 0.0)))
        rows.append({"variant": r.variant, "seed": r.seed, "gamma": r.gamma, "status": r.status,
                     "diverged_step": r.diverged_step, "nonfinite_losses": nonfinite, "reason": r.reason or ""})
    df = pd.DataFrame(rows)
    summary = df.groupby("variant", sort=False).agg(
        runs=("status", "size"),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        errors=("status", lambda s: int((s == "error").sum())),
        nonfinite_losses=("nonfinite_losses", "sum"),
    ).reset_index()
    return summary, df[df.status != "ok"].reset_index(drop=True)


def gamma_sweep_table(results: Results):
    """The regularised variant at every gamma of the sweep (per seed): perplexity, top-bin and
    overloaded fractions, early-layer normalised entropy, mean learned theta."""
    import pandas as pd

    c = results.config
    rows = []
    pool = [r for r in results.runs if r.variant == c["gamma_sweep_variant"] and r.gamma in c["gamma_sweep"]
            and r.seed in c["gamma_sweep_seeds"]] + list(results.sweep)
    for r in sorted(pool, key=lambda r: (r.gamma, r.seed)):
        m = run_metrics(r, c)
        theta = np.asarray(r.learned["theta"], float) if r.learned.get("theta") is not None else np.array([np.nan])
        rows.append({"gamma": r.gamma, "seed": r.seed, "status": r.status, "val_ppl": m["val_ppl"], "val_bpt": m["val_bpt"],
                     "top_bin": m["top_bin"], "overloaded": m["overloaded"], "early_norm_entropy": m["early_norm_entropy"],
                     "mean_theta": _nanmean(theta)})
    return pd.DataFrame(rows)


def ok_runs(runs: list[RunResult]) -> list[RunResult]:
    """Runs that finished (diverged runs are reported in the divergence table only)."""
    return [r for r in runs if r.ok]


def heatmap_frame(results: Results):
    """Long format: variant, seed, layer, head, entropy (nats), entropy_norm (finished runs)."""
    import pandas as pd

    rows = []
    for r in ok_runs(results.runs):
        for l, (raw, norm) in enumerate(zip(r.entropy, r.entropy_norm)):
            for h, (e, n) in enumerate(zip(raw, norm)):
                rows.append({"variant": r.variant, "seed": r.seed, "layer": l, "head": h, "entropy": e, "entropy_norm": n})
    return pd.DataFrame(rows)


def history_frame(results: Results):
    """Per-layer entropy of the probe batch over training (finished runs): variant, seed, step,
    layer, entropy, entropy_norm."""
    import pandas as pd

    rows = []
    for r in ok_runs(results.runs):
        for h in r.history:
            for l, e in enumerate(h["layer_mean"]):
                rows.append({"variant": r.variant, "seed": r.seed, "step": h["step"], "layer": l,
                             "entropy": e, "entropy_norm": e / h["max_uniform"]})
    return pd.DataFrame(rows)


def learned_frames(results: Results):
    """(theta rows: variant, seed, gamma, layer, head, theta; temperature rows: variant, layer,
    head, position, temperature (mean over seeds))."""
    import pandas as pd

    theta_rows, temp = [], {}
    for r in ok_runs(results.runs + results.sweep):
        if r.learned.get("theta") is not None:
            for l, row in enumerate(r.learned["theta"]):
                for h, t in enumerate(row):
                    theta_rows.append({"variant": r.variant, "seed": r.seed, "gamma": r.gamma, "layer": l, "head": h, "theta": t})
        if r.learned.get("temperature") is not None and r in results.runs:
            temp.setdefault(r.variant, []).append(np.asarray(r.learned["temperature"], float))
    temp_rows = []
    for v, arrs in temp.items():
        t = np.mean(np.stack(arrs), axis=0)
        for l in range(t.shape[0]):
            for h in range(t.shape[1]):
                for p in range(t.shape[2]):
                    temp_rows.append({"variant": v, "layer": l, "head": h, "position": p, "temperature": float(t[l, h, p])})
    return pd.DataFrame(theta_rows), pd.DataFrame(temp_rows)


def timing_table(results: Results):
    """Per-run wall times: variant, seed, gamma, steps, train s, ms/step, monitor s, eval s."""
    import pandas as pd

    return pd.DataFrame([
        {"variant": r.variant, "seed": r.seed, "gamma": r.gamma, "steps": r.steps, "train_s": r.train_seconds,
         "ms_per_step": r.ms_per_step, "monitor_s": r.monitor_seconds, "eval_s": r.eval_seconds}
        for r in results.runs + results.sweep
    ])


# ---------------------------------------------------------------------------------------------
# claims

# (claim, paper, method, baseline, metric, expected)
CLAIMS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("removing LayerNorm causes entropic overload in early layers",
     "early layers of LN-free models near-uniform; SM+G: 58% of heads in the top bin",
     "SM+G", "SM+LN+G", "early_norm_entropy", "increase"),
    ("removing LayerNorm causes entropic overload in early layers",
     "early layers of LN-free models near-uniform", "SM+R", "SM+LN+R", "early_norm_entropy", "increase"),
    ("removing LayerNorm causes entropic overload in early layers",
     "SM+G: 58% of heads in the top bin", "SM+G", "SM+LN+G", "early_overloaded", "increase"),
    ("the regularizer reduces overload", "EReg lowers the share of near-uniform heads",
     "EReg(SM(t)+ScFuFFN)", "SM(t)+ScFuFFN", "early_norm_entropy", "decrease"),
    ("the regularizer reduces overload", "EReg lowers the share of near-uniform heads",
     "EReg(SM(t)+ScFuFFN)-noFLN", "SM(t)+ScFuFFN-noFLN", "early_norm_entropy", "decrease"),
    ("the regularizer reduces overload", "EReg lowers the share of near-uniform heads",
     "EReg(SM(t)+ScFuFFN)", "SM(t)+ScFuFFN", "overloaded", "increase_is_bad"),
    ("the regularizer recovers part of the perplexity lost by removing nonlinearities",
     "SM+ScFuFFN 3.48 -> EReg(SM(t)+ScFuFFN) 3.21 (-7.8%)", "EReg(SM(t)+ScFuFFN)", "SM+ScFuFFN", "val_ppl", "decrease"),
    ("the regularizer recovers part of the perplexity lost by removing nonlinearities",
     "SM+ScFuFFN 3.48 -> EReg(SM(t)+ScFuFFN) 3.21 (-7.8%)", "EReg(SM(t)+ScFuFFN)-noFLN", "SM+ScFuFFN-noFLN", "val_ppl", "decrease"),
    ("the regularizer recovers part of the perplexity lost by removing nonlinearities",
     "(regularizer alone: same temperatures, with vs without EReg)", "EReg(SM(t)+ScFuFFN)", "SM(t)+ScFuFFN", "val_ppl", "decrease"),
    ("ReLU beats GELU without LayerNorm", "ReLU-based LN-free models train better (SM+R 2.94)",
     "SM+R", "SM+G", "val_ppl", "decrease"),
)


def make_claims(results: Results) -> list:
    """Claim rows for every comparison whose two variants were run (paired by seed; seeds where
    either run diverged are left out and counted in the note)."""
    from trustlab.core.stats import Claim, claim_from_seeds

    df = runs_frame(results)
    claims = []
    for text, paper, method, baseline, metric, expected in CLAIMS:
        expected = "decrease" if expected == "increase_is_bad" else expected
        if method not in set(df.variant) or baseline not in set(df.variant):
            continue
        a = df[df.variant == method].set_index("seed")[metric]
        b = df[df.variant == baseline].set_index("seed")[metric]
        seeds = sorted(s for s in set(a.index) & set(b.index) if np.isfinite(a[s]) and np.isfinite(b[s]))
        dropped = len(set(a.index) & set(b.index)) - len(seeds)
        note = f"{method} - {baseline}" + (f"; {dropped} seed(s) dropped (diverged)" if dropped else "")
        if metric == "val_ppl" and seeds:
            rel = float(np.mean([a[s] / b[s] - 1 for s in seeds]))
            note += f"; relative {100 * rel:+.1f}%"
        if not seeds:
            claims.append(Claim(FAMILY, text, paper, metric, expected, float("nan"), float("nan"), float("nan"), 0,
                                "inconclusive", note + "; no seed with both runs finite"))
            continue
        claims.append(claim_from_seeds(FAMILY, text, paper, metric, [a[s] for s in seeds], [b[s] for s in seeds],
                                       expected, note=note))
    return claims


def claims_frame(claims: list):
    import pandas as pd

    return pd.DataFrame([c.as_dict() for c in claims])


# ---------------------------------------------------------------------------------------------
# outputs


def headline(results: Results, claims: list, overhead: dict | None = None, realised: dict | None = None,
             stage_seconds: float | None = None) -> dict[str, Any]:
    ppl = perplexity_table(results)
    bins = head_bin_table(results)
    h: dict[str, Any] = {}
    for _, r in ppl.iterrows():
        h[f"{r.variant}/val_ppl"] = r.ppl_mean
        h[f"{r.variant}/bits_per_token"] = r.bpt_mean
    for _, r in bins.iterrows():
        h[f"{r.variant}/top_bin"] = r["bin_75-100%"]
        h[f"{r.variant}/middle_bins"] = r["bin_25-50%"] + r["bin_50-75%"]
        h[f"{r.variant}/overloaded"] = r.overloaded
        h[f"{r.variant}/collapsed"] = r.collapsed
    runs = results.runs + results.sweep
    h["runs"] = len(runs)
    h["runs_diverged"] = sum(r.status != "ok" for r in runs)
    h["train_seconds"] = sum(r.train_seconds for r in runs)
    h["training_seconds"] = results.seconds
    h["stage_seconds"] = stage_seconds if stage_seconds is not None else results.seconds
    if overhead:
        h["entropy_every_step_ratio"] = overhead.get("every_step_ratio")
        h["entropy_logging_steps_ratio"] = overhead.get("amortised_ratio")
    if realised:
        h["entropy_monitor_realised_ratio"] = realised.get("ratio")
    h["claims_supported"] = sum(c.verdict == "supported" for c in claims)
    h["claims_total"] = len(claims)
    return h


def write_outputs(
    results: Results,
    reports_dir: str | Path,
    claims: list,
    *,
    overhead: dict | None = None,
    profile: str | None = None,
    stage_seconds: float | None = None,
) -> dict[str, Any]:
    """``metrics.json`` (headline, claims, tables, timing, run info) and plot data under ``plots/``."""
    from trustlab.core.provenance import provenance
    from trustlab.tracking import write_metrics, write_plot

    realised = realised_overhead(results)
    div_summary, div_runs = divergence_table(results)
    theta, temperature = learned_frames(results)
    metrics = {
        "headline": headline(results, claims, overhead, realised, stage_seconds),
        "claims": [c.as_dict() for c in claims],
        "perplexity": perplexity_table(results).to_dict(orient="records"),
        "head_bins": head_bin_table(results).to_dict(orient="records"),
        "divergence": div_summary.to_dict(orient="records"),
        "divergence_runs": div_runs.to_dict(orient="records"),
        "gamma_sweep": gamma_sweep_table(results).to_dict(orient="records"),
        "overhead": {"measured": overhead or {}, "realised": realised},
        "timing": timing_table(results).to_dict(orient="records"),
        "corpus": results.corpus,
        "config": results.config,
        "run": {"profile": profile, "stage_seconds": stage_seconds if stage_seconds is not None else results.seconds,
                "training_seconds": results.seconds},
        "provenance": provenance(),
    }
    write_metrics(FAMILY, metrics, reports_dir)
    write_plot(FAMILY, "runs", runs_frame(results), reports_dir)
    write_plot(FAMILY, "perplexity", perplexity_table(results), reports_dir)
    write_plot(FAMILY, "head_bins", head_bin_table(results), reports_dir)
    write_plot(FAMILY, "heatmaps", heatmap_frame(results), reports_dir)
    write_plot(FAMILY, "entropy_history", history_frame(results), reports_dir)
    write_plot(FAMILY, "gamma_sweep", gamma_sweep_table(results), reports_dir)
    write_plot(FAMILY, "theta", theta, reports_dir)
    write_plot(FAMILY, "temperature", temperature, reports_dir)
    write_plot(FAMILY, "timing", timing_table(results), reports_dir)
    return metrics


def log_summary(results: Results, tables: dict[str, Any], figures: dict[str, Any], config: dict | None = None) -> None:
    """The W&B summary run: the tables (``log_table``) and figures."""
    from trustlab.tracking import start_run

    with start_run(family=FAMILY, job_type="summary", name=f"{FAMILY}-summary", config=config or results.config,
                   tags=["summary"]) as run:
        for name, df in tables.items():
            run.log_table(name, df)
        for name, fig in figures.items():
            run.log_image(name, fig)
        run.summary({"stage_seconds": results.seconds, "runs": len(results.runs) + len(results.sweep)})


# ---------------------------------------------------------------------------------------------
# figures


def _heat(ax, data, title, vmin=None, vmax=None, cmap="viridis", xlabel="head", ylabel="layer", norm=None):
    if norm is not None:
        vmin = vmax = None
    im = ax.imshow(np.asarray(data, float), aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest", norm=norm)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(False)
    rows, cols = np.asarray(data).shape
    if cols <= 16:
        ax.set_xticks(range(cols))
    if rows <= 16:
        ax.set_yticks(range(rows))
    return im


def _grid(n: int, ncols: int = 4, size=(2.6, 2.2)):
    import matplotlib.pyplot as plt

    ncols = min(ncols, max(n, 1))
    nrows = math.ceil(max(n, 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_run_heatmaps(r: RunResult):
    """One run's layer x head entropy, raw and normalised (for its W&B run)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    im = _heat(axes[0], r.entropy, f"{r.variant} seed {r.seed}: entropy (nats)", 0, r.max_uniform)
    fig.colorbar(im, ax=axes[0])
    im = _heat(axes[1], r.entropy_norm, "normalised by uniform-causal max", 0, 1)
    fig.colorbar(im, ax=axes[1])
    fig.tight_layout()
    return fig


def plot_run_learned(r: RunResult):
    import matplotlib.pyplot as plt

    panels = [k for k in ("theta", "temperature") if r.learned.get(k) is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 2.8), squeeze=False)
    for ax, k in zip(axes[0], panels):
        data = np.asarray(r.learned[k], float)
        if k == "temperature":
            data = data.reshape(-1, data.shape[-1])  # (L*H, T)
            im = _heat(ax, data, "temperature t (rows: layer x head)", xlabel="position", ylabel="layer*H + head")
        else:
            im = _heat(ax, data, "learned theta")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_perplexity(ppl_table):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(ppl_table)), 3.4))
    x = np.arange(len(ppl_table))
    ax.bar(x, ppl_table.ppl_mean, yerr=ppl_table.ppl_std, capsize=3, color="tab:blue", alpha=0.8)
    for i, (m, d) in enumerate(zip(ppl_table.ppl_mean, ppl_table.seeds_diverged)):
        if d:
            ax.annotate(f"{d} diverged", (i, 0 if not np.isfinite(m) else m), ha="center", va="bottom", fontsize=7, color="red")
    ax.set_xticks(x, ppl_table.variant, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("validation perplexity (bytes)")
    finite = ppl_table.ppl_mean[np.isfinite(ppl_table.ppl_mean)]
    if len(finite):
        ax.set_ylim(0.95 * finite.min() - 0.05, None)
    ax.set_title("Validation perplexity per variant (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def plot_heatmaps(results: Results, *, normalised: bool):
    """Layer x head entropy per variant (mean over seeds)."""
    df = heatmap_frame(results)
    variants = _order(df, results.config["variants"])
    fig, axes = _grid(len(variants))
    key = "entropy_norm" if normalised else "entropy"
    vmax = 1.0 if normalised else float(np.nanmax([r.max_uniform for r in results.runs]))
    im = None
    for ax, v in zip(axes, variants):
        m = df[df.variant == v].groupby(["layer", "head"])[key].mean().unstack("head")
        im = _heat(ax, m.values, v, 0, vmax)
    if im is not None:
        fig.colorbar(im, ax=axes[: len(variants)], shrink=0.8,
                     label="entropy / uniform-causal max" if normalised else "entropy (nats)")
    fig.suptitle(("Normalised" if normalised else "Raw") + " attention entropy per head (validation windows, mean over seeds)", fontsize=10)
    return fig


def plot_entropy_curves(results: Results, *, normalised: bool = True):
    """Per-layer mean entropy of the probe batch over training (mean over seeds)."""
    df = history_frame(results)
    variants = _order(df, results.config["variants"])
    fig, axes = _grid(len(variants), size=(2.8, 2.2))
    key = "entropy_norm" if normalised else "entropy"
    for ax, v in zip(axes, variants):
        d = df[df.variant == v].groupby(["layer", "step"])[key].mean()
        for l in sorted(set(d.index.get_level_values(0))):
            s = d.loc[l]
            ax.plot(s.index, s.values, label=f"layer {l}")
        ax.set_title(v, fontsize=8)
        ax.set_ylim(0, 1.05 if normalised else None)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("step", fontsize=7)
    axes[0].legend(fontsize=6)
    fig.suptitle("Per-layer attention entropy over training" + (" (normalised)" if normalised else " (nats)"), fontsize=10)
    return fig


def plot_head_bins(bin_table):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(bin_table))
    bottom = np.zeros(len(bin_table))
    colors = ["#2c7bb6", "#abd9e9", "#fdae61", "#d7191c"]
    for lab, c in zip(BIN_LABELS, colors):
        vals = bin_table[f"bin_{lab}"].to_numpy(float)
        axes[0].bar(x, vals, bottom=bottom, color=c, label=lab)
        bottom += vals
    axes[0].set_xticks(x, bin_table.variant, rotation=40, ha="right", fontsize=8)
    axes[0].set_ylabel("fraction of heads")
    axes[0].set_title("Heads per quartile of normalised entropy")
    axes[0].legend(fontsize=7, title="bin", title_fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    w = 0.4
    axes[1].bar(x - w / 2, bin_table.overloaded, w, label="overloaded (> 0.95 max)", color="#d7191c")
    axes[1].bar(x + w / 2, bin_table.collapsed, w, label="collapsed (< 0.1 nats)", color="#2c7bb6")
    axes[1].set_xticks(x, bin_table.variant, rotation=40, ha="right", fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Overloaded and collapsed heads")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_gamma_sweep(sweep_df):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    g = sweep_df.groupby("gamma")
    for ax, key, label in zip(axes, ("val_ppl", "top_bin", "early_norm_entropy"),
                              ("validation perplexity", "top-bin fraction", "early-layer normalised entropy")):
        m, s = g[key].mean(), g[key].std(ddof=1).fillna(0)
        ax.errorbar(m.index, m.values, yerr=s.values, marker="o", capsize=3)
        ax.scatter(sweep_df.gamma, sweep_df[key], s=10, color="gray", alpha=0.6)
        ax.set_xlabel("gamma (tolerance / Emax)")
        ax.set_title(label, fontsize=9)
    fig.suptitle("Gamma sweep", fontsize=10)
    fig.tight_layout()
    return fig


def plot_theta(results: Results):
    """Learned theta (layer x head, mean over seeds) of every regularised variant at the
    configured gamma."""
    theta, _ = learned_frames(results)
    if theta.empty:
        return None
    theta = theta[theta.gamma == results.config["gamma"]]
    variants = [v for v in results.config["variants"] if v in set(theta.variant)]
    fig, axes = _grid(len(variants), ncols=3, size=(3.0, 2.4))
    for ax, v in zip(axes, variants):
        m = theta[theta.variant == v].groupby(["layer", "head"]).theta.mean().unstack("head")
        im = _heat(ax, m.values, f"theta: {v}", cmap="magma")
        ax.figure.colorbar(im, ax=ax)
    fig.suptitle(f"Learned entropy thresholds theta (init {results.config['theta_init']})", fontsize=10)
    return fig


def plot_temperature(results: Results):
    """Learned temperatures (head x position per layer, mean over seeds) of every SM(t) variant."""
    _, temp = learned_frames(results)
    if temp.empty:
        return None
    variants = [v for v in results.config["variants"] if v in set(temp.variant)]
    L = int(temp.layer.max()) + 1
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(variants), L, figsize=(2.8 * L, 1.6 + 1.6 * len(variants)), squeeze=False, layout="constrained")
    from matplotlib.colors import TwoSlopeNorm

    lo, hi = float(temp.temperature.min()), float(temp.temperature.max())
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 1.0 - 1e-3), vmax=max(hi, 1.0 + 1e-3))  # white = identity
    im = None
    for i, v in enumerate(variants):
        d = temp[temp.variant == v]
        for l in range(L):
            m = d[d.layer == l].pivot(index="head", columns="position", values="temperature")
            im = _heat(axes[i, l], m.values, f"{v} L{l}", cmap="coolwarm", xlabel="position", ylabel="head", norm=norm)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="temperature t")
    fig.suptitle("Learned attention temperatures (init 1)", fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------------
# discussion


def findings(results: Results, claims: list, overhead: dict | None = None) -> str:
    """Plain statements of what the numbers show, compared with the method card's CPU pilot
    (markdown; generated, so it stays true when the profile changes)."""
    bins = head_bin_table(results).set_index("variant")
    ppl = perplexity_table(results).set_index("variant")
    c = results.config
    out = []
    steps_note = (f"Each run saw {c['steps']} steps x {c['batch_size']} windows x {c['block_size']} tokens "
                  f"= {c['steps'] * c['batch_size'] * c['block_size']:,} tokens (the card's pilot: 1200 steps x 16 x 128 "
                  f"= 2,457,600), with {len(c['seeds'])} seed(s).")
    out.append(steps_note)

    def early(v):
        return bins.loc[v, "early_norm_entropy"] if v in bins.index else None

    for ln, no in (("SM+LN+G", "SM+G"), ("SM+LN+R", "SM+R")):
        if early(ln) is not None and early(no) is not None:
            out.append(f"Early-layer normalised entropy: {ln} {early(ln):.2f} vs {no} {early(no):.2f} "
                       f"(overloaded heads {bins.loc[ln, 'overloaded']:.0%} vs {bins.loc[no, 'overloaded']:.0%}; "
                       f"top-bin {bins.loc[ln, 'bin_75-100%']:.0%} vs {bins.loc[no, 'bin_75-100%']:.0%}). "
                       "The pilot saw the first layers of LN-free models go near-uniform.")
    if "SM+LN+G" in bins.index:
        mid = bins.loc["SM+LN+G", "bin_25-50%"] + bins.loc["SM+LN+G", "bin_50-75%"]
        out.append(f"Baseline heads in the two middle bins: {mid:.0%} (paper: about 90%).")
    heat = heatmap_frame(results)
    layers = heat.groupby(["variant", "layer"]).entropy.mean() if len(heat) else None

    def per_layer(v):
        if layers is None or v not in layers.index.get_level_values(0):
            return "n/a"
        return ", ".join(f"{x:.2f}" for x in layers.loc[v].values)

    for sfx in ("", "-noFLN"):
        reg, t, plain = f"EReg(SM(t)+ScFuFFN){sfx}", f"SM(t)+ScFuFFN{sfx}", f"SM+ScFuFFN{sfx}"
        if reg in bins.index and t in bins.index:
            out.append(f"Per-layer mean entropy (nats, layers 0..L-1), {t}: {per_layer(t)}; {reg}: {per_layer(reg)} "
                       "(pilot: the regularizer took layer-1 entropy from about 3.5 to about 2 nats).")
            line = (f"Regularizer ({'no final LN' if sfx else 'final LN kept'}): early-layer normalised entropy "
                    f"{bins.loc[t, 'early_norm_entropy']:.2f} ({t}) -> {bins.loc[reg, 'early_norm_entropy']:.2f} ({reg})")
            if plain in ppl.index and np.isfinite(ppl.loc[plain, "ppl_mean"]) and np.isfinite(ppl.loc[reg, "ppl_mean"]):
                rel = ppl.loc[reg, "ppl_mean"] / ppl.loc[plain, "ppl_mean"] - 1
                line += (f"; perplexity {ppl.loc[plain, 'ppl_mean']:.3f} ({plain}) -> {ppl.loc[reg, 'ppl_mean']:.3f} "
                         f"({100 * rel:+.1f}%; paper -7.8%, pilot about -4% in bits with the final LN and no gain without)")
            out.append(line + ".")
    if "SM+R" in ppl.index and "SM+G" in ppl.index:
        out.append(f"ReLU vs GELU without LayerNorm: perplexity {ppl.loc['SM+R', 'ppl_mean']:.3f} vs "
                   f"{ppl.loc['SM+G', 'ppl_mean']:.3f} (the pilot found no separation at this scale).")
    n_div = sum(r.status != "ok" for r in results.runs + results.sweep)
    out.append(f"Diverged or failed runs: {n_div} of {len(results.runs) + len(results.sweep)}.")
    if overhead:
        target = "within" if overhead["amortised_ratio"] <= 1.5 else "above"
        out.append(f"Entropy measurement: every step would cost {overhead['every_step_ratio']:.2f}x the fast path; "
                   f"measuring only every {overhead['log_every']} steps costs {overhead['amortised_ratio']:.3f}x, "
                   f"{target} the 1.5x budget.")
    verdicts = {}
    for cl in claims:
        verdicts.setdefault(cl.verdict, 0)
        verdicts[cl.verdict] += 1
    out.append("Claim verdicts: " + ", ".join(f"{k}: {v}" for k, v in sorted(verdicts.items())) + ".")
    return "\n".join(f"- {s}" for s in out)
