"""W&B logging of every fine-tuning run (group ``noisefit``), plugged into
:func:`trustlab.noisefit.run.run_experiment` as its ``tracker``.

Each (setting, variant, seed) is one W&B run named ``<variant>-seed<seed>`` (``-new_facts``
for the stress test) that logs the loss components ``noisefit/ce``, ``noisefit/soft``,
``noisefit/consistency``, ``noisefit/total`` every ``log_every`` steps and, at the end, the
evaluation metrics (``eval/<metric>``), the step time, the measured relative noise
(``noisefit/noise_ratio``), the per-layer SNR and the selected layers. A sweep trial is one
run named ``<variant>-sweep-<knob>=<value>-seed<seed>``. The tracker is picklable: each worker
process opens its own runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pandas as pd

from trustlab.noisefit.module import wandb_row
from trustlab.noisefit.run import FAMILY
from trustlab.tracking import run_name, start_run


def snr_frame(selection: dict[str, Any]) -> pd.DataFrame:
    n = len(selection["snr"])
    return pd.DataFrame({"layer": range(n), "snr": selection["snr"], "signal": selection["signal"],
                         "noise": selection["noise"],
                         "selected": [i in selection["selected_layers"] for i in range(n)]})  # fmt: skip


class WandbRunLog:
    def __init__(self, run, log_every: int):
        self.run = run
        self.log_every = log_every

    def on_step(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        if "val_loss" not in row and (step == 1 or step % self.log_every == 0):
            self.run.log(wandb_row(row), step=step)

    def finish(self, row: dict[str, Any], metrics: dict[str, float], selection: dict[str, Any]) -> None:
        summary = {f"eval/{k}": v for k, v in metrics.items()}
        # the ratio to SFT is known only once every run is done: it is in the summary run's step_time table
        summary.update({"noisefit/step_time": row["step_time"], "noisefit/noise_ratio": row["noise_ratio"],
                        "train_s": row["train_s"]})  # fmt: skip
        if selection:
            summary["noisefit/selected_layers"] = selection["selected_layers"]
            summary.update({f"noisefit/snr/layer_{i}": s for i, s in enumerate(selection["snr"])})
            self.run.log_table("noisefit/snr", snr_frame(selection))
        self.run.summary(summary)


class WandbTracker:
    def __init__(self, log_every: int = 5):
        self.log_every = log_every

    @contextlib.contextmanager
    def open(self, setting: str, variant: str, seed: int, config: dict[str, Any]) -> Iterator[WandbRunLog]:
        name = run_name(variant if setting == "default" else f"{variant}-{setting}", seed)
        with start_run(FAMILY, "finetune", name, config, tags=[variant, setting]) as run:
            yield WandbRunLog(run, self.log_every)
