"""The ``tracking:`` params section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trustlab.core.config import Section


@dataclass(frozen=True)
class TrackingConfig(Section):
    SECTION = "tracking"

    mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode. ``offline`` writes runs to ``wandb/`` for a later ``wandb sync``;
    ``$TRUSTLAB_WANDB_MODE`` overrides it (the tests set ``disabled``)."""
    entity: str | None = None
    init_timeout_s: float = 15.0
    """Seconds an online run waits for the W&B server before the process (and the stages
    after it, for ``FALLBACK_TTL_S``) falls back to offline mode; ``$TRUSTLAB_WANDB_INIT_TIMEOUT``
    overrides it."""
