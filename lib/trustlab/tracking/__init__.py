"""Experiment tracking with Weights & Biases, offline by default.

- :mod:`.runs`: the run API every stage uses (``start_run``, ``Run``, ``run_name``, ...);
- :mod:`.config`: the ``tracking:`` params section;
- :mod:`.offline`: reading offline runs back without the network;
- :mod:`.wandb_report`: an optional W&B Report of the claims.
"""

from trustlab.tracking.runs import (  # noqa: F401
    MODE_ENV,
    MODES,
    PROJECT,
    Run,
    image_key,
    is_global_zero,
    log_report,
    resolve_mode,
    run_name,
    run_tags,
    start_run,
    start_run_object,
    tracking_params,
    wandb_dir,
    write_metrics,
    write_plot,
)
