"""The page templates (Jinja2) and the one environment that renders them.

Every page trustlab writes itself (the front page, the summary pages) is a template here,
rendered with autoescape on: text from results is escaped, and only what a template marks
as markup (a macro's output, :func:`inline` assets, pandas' escaped table HTML) is not.
The stylesheet and the script live next to the templates as plain files and are inlined
into each page, so a page is one self-contained file that loads nothing.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def inline(name: str) -> Any:
    """The text of an asset next to the templates (``style.css``, ``tables.js``), unescaped."""
    from markupsafe import Markup

    return Markup((HERE / name).read_text(encoding="utf-8"))


def png_data_uri(png: bytes | Path) -> str:
    data = png.read_bytes() if isinstance(png, Path) else png
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE)),
        autoescape=True,  # every template here is HTML
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(inline=inline, data_uri=png_data_uri)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
