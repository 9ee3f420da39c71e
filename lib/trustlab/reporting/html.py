"""Rendering executed notebooks to self-contained HTML that reads offline."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from trustlab.core.io import atomic_write_text

# Anything fetched from the network: a report must render completely without it.
_REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>", re.I)
_REMOTE_LINK = re.compile(r"<link[^>]*\bhref=[\"']https?://[^>]*>", re.I)
_MATHJAX_BLOCK = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S | re.I)
# An inline script that imports a module from the network (nbconvert's lab template ships
# a mermaid loader that does this when a page has a diagram; none of ours do).
_REMOTE_IMPORT_SCRIPT = re.compile(
    r"<script\b[^>]*>(?:(?!</script>).)*?\bimport\s*\(\s*[\"']https?://(?:(?!</script>).)*</script>", re.S | re.I
)
_REMOTE_IMPORT = re.compile(r"\bimport\s*\(\s*[\"'](https?://[^\"']+)", re.I)
_REMOTE_CSS_URL = re.compile(r"(?:@import\s+|url\(\s*)[\"']?(https?://[^\"')\s]+)", re.I)


def strip_remote_assets(html: str) -> str:
    """Remove ``<script src=http...>``, remote stylesheets, the MathJax loader and inline
    scripts that ``import()`` a module from the network."""
    html = _MATHJAX_BLOCK.sub("", html)
    html = _REMOTE_IMPORT_SCRIPT.sub("", html)
    html = _REMOTE_SCRIPT.sub("", html)
    return _REMOTE_LINK.sub("", html)


def remote_references(html: str) -> list[str]:
    """Remote URLs the page would *load*: script/link/img/iframe sources, module
    ``import()``s and CSS ``url()``/``@import`` (links a reader clicks, ``<a href>``, are fine)."""
    tags = re.findall(
        r"<(?:script|link|img|iframe|source|video|audio)[^>]*\b(?:src|href)=[\"'](https?://[^\"']+)", html, re.I
    )
    return tags + _REMOTE_IMPORT.findall(html) + _REMOTE_CSS_URL.findall(html)


# $$display$$ and $inline$ TeX in markdown (not an escaped \$ and not a lone $ in prose)
_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<![\\$\w])\$(?!\s)([^$\n]+?)(?<!\s)\$(?![\w$])")


def tex_to_mathml(text: str) -> str:
    """Replace the TeX formulas of a markdown text by MathML, which browsers render natively:
    the report needs no MathJax from the network and shows no raw ``$$``. A formula the
    converter cannot read is kept as code, visibly."""
    from latex2mathml.converter import convert

    def sub(display: bool):
        def repl(m: re.Match) -> str:
            tex = m.group(1).strip()
            try:
                mathml = convert(tex, display="block" if display else "inline")
            except Exception:  # the converter raises its own error types on unknown commands
                return f"<code>{html.escape(tex)}</code>"
            return mathml.replace("\n", "")

        return repl

    return _INLINE_MATH.sub(sub(False), _DISPLAY_MATH.sub(sub(True), text))


def _render_math(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = tex_to_mathml(cell.source)
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if "text/markdown" in data:
                data["text/markdown"] = tex_to_mathml(data["text/markdown"])


def render_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike, title: str | None = None) -> Path:
    """Render an executed notebook: inputs hidden, figures embedded, formulas as MathML, no
    remote assets."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook_path), as_version=4)
    _render_math(nb)
    # Widget state (e.g. from tqdm.auto) would make the page load a widget manager from a CDN.
    nb.metadata.pop("widgets", None)
    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
    )
    resources = {"metadata": {"name": title or Path(notebook_path).stem}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return atomic_write_text(html_path, scroll_wide_outputs(strip_remote_assets(body)))


# A wide DataFrame scrolls inside its output box instead of widening (or being cut off by) the page.
WIDE_OUTPUT_STYLE = (
    "<style>.jp-OutputArea-output.jp-RenderedHTMLCommon{overflow-x:auto;max-width:100%}"
    ".jp-OutputArea-output table{max-width:none}</style>"
)


def scroll_wide_outputs(html: str) -> str:
    """Add :data:`WIDE_OUTPUT_STYLE` to the head of a rendered notebook."""
    return html.replace("</head>", WIDE_OUTPUT_STYLE + "\n</head>", 1)


def write_summary_html(path: str | os.PathLike, title: str, sections) -> Path:
    """A self-contained HTML page (nothing loaded from the network), written atomically from
    ``templates/summary.html.j2``: one ``<h2>`` per ``(heading, body)`` of ``sections``, whose
    body is a DataFrame (a table that scrolls sideways when wide), a matplotlib figure or a
    PNG path (embedded as base64; a missing file is skipped) or text (escaped, one paragraph
    per line). The families log it to their W&B summary runs."""
    import io as _io

    from markupsafe import Markup

    from trustlab.reporting import templates

    shown = []
    for heading, body in sections:
        if hasattr(body, "to_html"):  # pandas escapes the cell text
            table = body.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="")
            shown.append({"heading": heading, "kind": "table", "html": Markup(table)})
        elif hasattr(body, "savefig"):
            buf = _io.BytesIO()
            body.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            shown.append({"heading": heading, "kind": "image", "src": templates.png_data_uri(buf.getvalue())})
        elif isinstance(body, Path):
            if body.exists():
                shown.append({"heading": heading, "kind": "image", "src": templates.png_data_uri(body)})
            else:
                shown.append({"heading": heading, "kind": "text", "lines": []})
        else:
            lines = [line for line in str(body).splitlines() if line.strip()]
            shown.append({"heading": heading, "kind": "text", "lines": lines})
    return atomic_write_text(path, templates.render("summary.html.j2", title=title, sections=shown))
