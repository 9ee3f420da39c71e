"""The ``noisefit`` stage's work: tune the noise scales on the validation people, fine-tune the
base model with every variant and seed at the chosen scales, evaluate each model on the test
people, collect everything in a :class:`Results`.

    results = run_experiment(cfg, data_dir, tracker=WandbTracker(cfg.log_every))

* :func:`plan`      (setting, variant, seed) of the test runs, SFT first within each seed;
* :func:`prepare`   the base model, the world, the fine-tuning sets, the test and validation items;
* :func:`finetune`  one variant on a copy of the base model;
* :func:`run_task`  fine-tune, evaluate, export one :class:`RunTask` -> a :class:`RunOutput`.

Two phases, each a list of independent tasks for the workers of ``trustlab.core.parallel``
(``workers`` processes, results in plan order, every run seeds itself, so the results do not
depend on ``workers``): the sweeps of ``trustlab.noisefit.tuning`` (validation items), then the
test runs at the chosen values (test items), while this process evaluates the base model.

**Cost**: the median training-step time of every run; ``step_ratio`` = that / SFT's median
step time for the same seed and setting (runs in parallel share the CPU, so this is rougher
with ``workers > 1``).

Tracking goes through a ``tracker`` (``open(setting, variant, seed, config)`` -> a run log
with ``on_step(row)`` and ``finish(row, metrics, selection)``); the default tracks nothing, the
W&B one is :class:`trustlab.noisefit.tracker.WandbTracker`. Nothing here draws or logs to W&B.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustlab.core.parallel import iter_tasks, resolve_workers, submit_tasks
from trustlab.core.seeding import set_threads
from trustlab.lm.hooks import decoder_blocks
from trustlab.lm.training import fit
from trustlab.noisefit import tuning
from trustlab.noisefit.config import NoiseFitConfig
from trustlab.noisefit.evaluation import evaluate
from trustlab.noisefit.module import NoiseFitModule
from trustlab.noisefit.variants import get_variant
from trustlab.noisefit.world import World, eval_items, finetune_dataset, load_world

FAMILY = "noisefit"
TIMING_COLUMNS = ("train_s", "eval_s", "step_time", "step_ratio")  # wall times and their ratios (timing.json only)


@dataclass
class Results:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (setting, variant, seed) + the base model
    curves: list[dict[str, Any]] = field(default_factory=list)  # training-curve rows with variant/seed/setting
    snr: list[dict[str, Any]] = field(default_factory=list)  # per (variant, seed, layer)
    exported: dict[str, str] = field(default_factory=dict)  # variant -> model folder, relative to data_dir
    sweep: list[dict[str, Any]] = field(default_factory=list)  # one per (variant, value, tuning seed), validation
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> the chosen value (tuning.choose)
    seconds: float = 0.0  # wall time of the stage's work
    cpu_seconds: float = 0.0  # CPU time of this process and its workers over the same span
    workers: int = 1
    config: dict[str, Any] = field(default_factory=dict)


# -- tracking: nothing by default ---------------------------------------------------------------
class RunLog:
    """One run's log that keeps nothing (see :mod:`trustlab.noisefit.tracker` for W&B)."""

    on_step: Callable[[dict], None] | None = None

    def finish(self, row: dict[str, Any], metrics: dict[str, float], selection: dict[str, Any]) -> None:
        pass


class NoTracking:
    @contextlib.contextmanager
    def open(self, setting: str, variant: str, seed: int, config: dict[str, Any]) -> Iterator[RunLog]:
        yield RunLog()


# -- the base model -----------------------------------------------------------------------------
def base_model_path(cfg: NoiseFitConfig, data_dir: str | Path) -> Path:
    """``noisefit.base_model`` resolved against ``data_dir`` (an absolute path stays as is)."""
    p = Path(cfg.base_model)
    return p if p.is_absolute() else Path(data_dir) / p


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
    """``"GPT, 4 layers, d=128, 0.84M parameters"`` for our GPT or an HF model."""
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


# -- one fine-tuning run ------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    model: Any
    module: Any
    seconds: float
    steps: int
    curve: list[dict[str, Any]]
    step_times: list[float]
    selection: dict[str, Any]
    noise_ratio: float = float("nan")  # mean RMS(noise) / RMS(activation) at the injection point

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
    return FinetuneResult(model, module, res.seconds, res.steps, list(module.curve), list(module.step_times),
                          module.selection_info(), module.noise_ratio())  # fmt: skip


# -- the whole stage ----------------------------------------------------------------------------
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


@dataclass
class Setup:
    """What every run shares: the base model (never modified), the data and the items."""

    base: Any
    tokenizer: Any
    base_name: str
    data_dir: Path
    world: World
    items: dict[str, list[dict[str, Any]]]  # the test people (and qa_train, new_facts)
    datasets: dict[str, Any]
    validation_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # the validation people


def prepare(
    cfg: NoiseFitConfig,
    data_dir: str | Path,
    *,
    model=None,
    tokenizer=None,
    base_model_dir: str | Path | None = None,
    base_name: str | None = None,
) -> Setup:
    """The base model (``model`` + ``tokenizer`` when given, else :func:`load_base`), checked
    against ``k`` before any training, the world, the evaluation items and both fine-tuning sets."""
    data_dir = Path(data_dir)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then the base model is loaded from disk)")
    if model is None:
        model, tokenizer, base_dir = load_base(cfg, data_dir, base_model_dir)
        base_name = str(base_dir)
    else:
        base_name = base_name or f"in-memory {type(model).__name__}"
    cfg.check_model(len(decoder_blocks(model)))
    try:
        set_threads(cfg.threads)
    except AttributeError:  # older torch without set_interop_threads
        pass
    world = load_world(data_dir)
    block = context_length(model)
    datasets = {
        "default": finetune_dataset(world, tokenizer, block, max_examples=cfg.max_train_examples),
        "new_facts": finetune_dataset(world, tokenizer, block, new_facts=True, max_examples=cfg.max_train_examples),
    }
    frac = cfg.validation_fraction
    return Setup(model, tokenizer, base_name, data_dir, world,
                 eval_items(world, cfg.max_eval_items, part="test", validation_fraction=frac), datasets,
                 eval_items(world, cfg.max_eval_items, part="validation", validation_fraction=frac))  # fmt: skip


def evaluate_base(setup: Setup, cfg: NoiseFitConfig) -> dict[str, Any]:
    """The base model's row (evaluated once, with the first seed's sampling)."""
    t0 = time.perf_counter()
    metrics = evaluate(setup.base, setup.tokenizer, setup.items, setup.world, cfg, seed=cfg.seeds[0])
    return {"setting": "base", "variant": "base", "label": "base model", "seed": cfg.seeds[0], "train_s": 0.0,
            "eval_s": time.perf_counter() - t0, **metrics}  # fmt: skip


def snr_rows(setting: str, variant: str, seed: int, selection: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer: the SNR, its signal and noise, and whether the layer was selected."""
    return [{"setting": setting, "variant": variant, "seed": seed, "layer": layer, "snr": value,
             "signal": selection["signal"][layer], "noise": selection["noise"][layer],
             "selected": layer in selection["selected_layers"]}
            for layer, value in enumerate(selection["snr"])]  # fmt: skip


@dataclass
class RunTask:
    """One independent fine-tune + evaluation (picklable: it goes to a worker process)."""

    setup: Setup
    cfg: NoiseFitConfig  # with this run's noise scale
    setting: str  # default | new_facts
    variant: str
    seed: int
    part: str = "test"  # which items: test | validation (a sweep trial)
    tracker: Any = None
    trainer: dict[str, Any] | None = None
    export: bool = False
    param: str | None = None  # a sweep trial: the tuned knob ...
    value: float | None = None  # ... and its value


@dataclass
class RunOutput:
    row: dict[str, Any]
    curve: list[dict[str, Any]]
    snr: list[dict[str, Any]]
    exported: str | None = None


def sweep_config(cfg: NoiseFitConfig) -> NoiseFitConfig:
    """A sweep trial evaluates greedily only: the rule reads greedy rates, and the sampling
    protocol would cost about six greedy passes per trial."""
    return dataclasses.replace(cfg, decoding=dataclasses.replace(cfg.decoding, greedy=True, n_samples=0))


def run_task(task: RunTask) -> RunOutput:
    """Fine-tune, evaluate and (``task.export``) export one run. A module-level function, so
    that ``submit_tasks`` can send it to worker processes."""
    setup, cfg, setting, variant, seed = task.setup, task.cfg, task.setting, task.variant, task.seed
    label = get_variant(variant).label
    sweep = task.part == "validation"
    name = f"sweep-{task.param}={task.value:g}" if sweep else setting
    run_cfg = {**cfg.to_dict(), "variant": variant, "seed": seed, "setting": setting, "part": task.part}
    tracker = task.tracker or NoTracking()
    with tracker.open(name, variant, seed, run_cfg) as log:
        ft = finetune(setup.base, setup.tokenizer, setup.datasets[setting], variant, seed, cfg, on_log=log.on_step,
                      trainer=task.trainer)  # fmt: skip
        t0 = time.perf_counter()
        items = setup.validation_items if sweep else setup.items
        metrics = evaluate(ft.model, setup.tokenizer, items, setup.world, cfg, seed=seed)
        eval_s = time.perf_counter() - t0
        row = {"setting": setting, "variant": variant, "label": label, "seed": seed, "train_s": ft.seconds,
               "eval_s": eval_s, "steps": ft.steps, "step_time": ft.step_time, "step_ratio": float("nan"),
               "noise_ratio": ft.noise_ratio, "final_loss": ft.curve[-1]["loss"] if ft.curve else float("nan"),
               **metrics}  # fmt: skip
        if sweep:
            row.update(part="validation", param=task.param, value=task.value)
        snr = []
        if ft.selection:
            row["selected_layers"] = " ".join(map(str, ft.selection["selected_layers"]))
            snr = snr_rows(setting, variant, seed, ft.selection)
        log.finish(row, metrics, ft.selection)
        exported = None
        if task.export:
            out = Path("models") / "noisefit" / variant
            metadata = {"family": FAMILY, "variant": variant, "label": label, "seed": seed,
                        "base_model": setup.base_name, "selection": ft.selection, "noisefit": cfg.to_dict()}
            export_model(ft.model, setup.tokenizer, setup.data_dir / out, metadata)
            exported = out.as_posix()
    curve = [] if sweep else [{"setting": setting, "variant": variant, "seed": seed, **c} for c in ft.curve]
    return RunOutput(row, curve, snr, exported)


def add_step_ratios(rows: list[dict[str, Any]]) -> None:
    """``step_ratio`` = step time / SFT's step time for the same seed and setting (the default
    setting's SFT when the setting has none)."""
    sft = {(r["setting"], r["seed"]): r["step_time"] for r in rows if r["variant"] == "sft"}
    for r in rows:
        ref = sft.get((r["setting"], r["seed"]), sft.get(("default", r["seed"]), float("nan")))
        r["step_ratio"] = r["step_time"] / ref


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def describe_row(row: dict[str, Any]) -> str:
    name = row["variant"] if row["setting"] == "default" else f"{row['variant']}-{row['setting']}"
    if row.get("part") == "validation":
        name = f"{row['variant']} {row['param']}={row['value']:g}"
    return (f"{name:28s} seed {row['seed']}: train {row['train_s']:5.1f}s ({row['step_time'] * 1e3:5.1f} ms/step) "
            f"eval {row['eval_s']:4.1f}s  noise/act {row['noise_ratio']:.3g}  "
            f"em_train {row.get('em_qa_train', float('nan')):.3f} "
            f"halluc_heldout {row.get('halluc_qa_heldout', float('nan')):.3f} "
            f"halluc_nonexist {row.get('halluc_nonexistent_test', float('nan')):.3f}")  # fmt: skip


def run_experiment(
    cfg: NoiseFitConfig,
    data_dir: str | Path,
    *,
    model=None,
    tokenizer=None,
    base_model_dir: str | Path | None = None,
    base_name: str | None = None,
    tracker=None,
    log: Callable[[str], None] | None = print,
    trainer: dict[str, Any] | None = None,
) -> Results:
    """Tune the noise scales on the validation people, then fine-tune and evaluate every planned
    run on the test people; export the ``export_seed`` models of the default setting to
    ``<data_dir>/models/noisefit/<variant>/``.

    The base model is ``model`` + ``tokenizer`` when given (our GPT, or an ``HFCausalLM`` from
    ``trustlab.lm.hf_backend``), otherwise the checkpoint at ``base_model_dir`` or
    ``noisefit.base_model``. It is never modified: every run fine-tunes a copy. ``base_name``
    names an in-memory base model in the exported models' metadata. ``tracker``: where each
    run is logged (default nowhere; it goes to the workers, so it must be picklable).
    ``trainer``: Lightning settings for every fine-tune."""
    t_start, cpu_start = time.perf_counter(), cpu_seconds()
    say = log or (lambda s: None)
    setup = prepare(cfg, data_dir, model=model, tokenizer=tokenizer, base_model_dir=base_model_dir,
                    base_name=base_name)  # fmt: skip
    workers = resolve_workers(cfg.workers)
    say(f"base model {setup.base_name} ({describe_model(setup.base)}); fine-tuning sets: "
        f"default {len(setup.datasets['default'])}, new_facts {len(setup.datasets['new_facts'])} examples; "
        f"validation items {', '.join(f'{k} {len(v)}' for k, v in setup.validation_items.items() if v)}; "
        f"{workers} worker(s)")  # fmt: skip
    results = Results(config=cfg.to_dict(), workers=workers)

    # phase 1: the sweeps, on the validation people
    sweep_cfg = sweep_config(cfg)
    sweep = [RunTask(setup, tuning.with_value(sweep_cfg, v, x), "default", v, seed, part="validation",
                     tracker=tracker, trainer=trainer, param=tuning.knob(v), value=x)
             for v, x, seed in tuning.trials(cfg)]  # fmt: skip
    for out in iter_tasks(run_task, sweep, workers=workers, desc="noisefit sweeps"):
        results.sweep.append(out.row)
        say(describe_row(out.row))
    results.tuning = tuning.choose(results.sweep)
    for v, c in results.tuning.items():
        say(f"tuned {v}: {c['param']} = {c['value']:g} (validation score {c['score']:.3f})")

    # phase 2: every planned run at the chosen values, on the test people; the base model is
    # evaluated here while the workers fine-tune
    runs = [RunTask(setup, tuning.tuned_config(cfg, v, results.tuning), setting, v, seed, tracker=tracker,
                    trainer=trainer, export=cfg.export and setting == "default" and seed == cfg.export_seed)
            for setting, v, seed in plan(cfg)]  # fmt: skip
    batch = submit_tasks(run_task, runs, workers=workers)
    results.rows.append(evaluate_base(setup, cfg))
    outs = batch.results("noisefit runs")
    add_step_ratios([o.row for o in outs])
    for out in outs:
        results.rows.append(out.row)
        results.curves += out.curve
        results.snr += out.snr
        if out.exported:
            results.exported[out.row["variant"]] = out.exported
        say(describe_row(out.row))
    results.seconds = time.perf_counter() - t_start
    results.cpu_seconds = cpu_seconds() - cpu_start
    return results
