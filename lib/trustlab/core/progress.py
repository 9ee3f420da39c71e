"""Progress bars: shown in a live notebook or terminal, silent in executed reports.

The notebook runner sets ``TRUSTLAB_PROGRESS=0`` so that papermill-executed notebooks and
their HTML do not fill with bar updates; the tests set it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    return os.environ.get("TRUSTLAB_PROGRESS", "1") not in ("0", "false", "no", "off")


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None, **kwargs: Any) -> Iterable[T]:
    """``tqdm.auto`` (a widget in JupyterLab, text in a terminal) when enabled, else the iterable."""
    if not progress_enabled():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, **kwargs)
