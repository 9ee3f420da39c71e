"""Matplotlib helpers: a non-interactive backend in batch runs, one style, atomic PNG saves."""

from __future__ import annotations

import io as _io
import os
import sys
from pathlib import Path

import matplotlib

# In a Jupyter kernel keep the inline backend so figures show in the notebook and its HTML.
if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from trustlab.core.io import atomic_write_bytes  # noqa: E402

plt.rcParams.update(
    {
        "figure.dpi": 100,
        "savefig.dpi": 110,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "font.size": 10,
    }
)


def save_figure(fig: "matplotlib.figure.Figure", path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically and return the path."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


class NotebookFigures(dict):
    """The figures a notebook shows, by name. ``show(fig, name)`` saves ``fig`` as
    ``<directory>/<name>.png`` (atomically), keeps it here for the W&B summary run and displays
    it inline once; ``None`` (a plot with nothing to draw) is skipped. It returns nothing, so
    that a notebook cell ending in ``show(...)`` does not display the figure a second time."""

    def __init__(self, directory: str | os.PathLike):
        super().__init__()
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.png"

    def show(self, fig, name: str) -> None:
        if fig is None:
            return
        save_figure(fig, self.path(name))
        self[name] = fig
        plt.show()
