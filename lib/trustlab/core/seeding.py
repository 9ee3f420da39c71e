"""One call to make a run deterministic: Python, NumPy and torch RNGs, and CPU threads."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int, *, deterministic: bool = True) -> int:
    """Seed every RNG that trustlab code touches and ask torch for deterministic kernels.

    Returns the seed, so it can be logged.
    """
    import torch

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed = {seed!r} is not allowed: a non-negative integer")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed


def set_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads (default: all cores, capped at 8) and one inter-op thread.

    On a 2-core machine oversubscription (torch + OpenMP + a BLAS pool) costs more than it gains.
    """
    import torch

    n = n or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except (RuntimeError, AttributeError):  # settable only once, before any inter-op parallel work
        pass
    return n


def rng(seed: int) -> np.random.Generator:
    """A NumPy generator for data generation: independent of the global state."""
    return np.random.default_rng(seed)
