"""The shared figure and summary-page helpers every notebook uses."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from trustlab.reporting.plotting import NotebookFigures
from trustlab.reporting.html import remote_references, scroll_wide_outputs, write_summary_html


def test_notebook_figures_save_keep_and_skip_none(tmp_path):
    figures = NotebookFigures(tmp_path / "figures")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert figures.show(fig, "line") is None  # returned, a figure would be displayed twice
    assert figures.path("line").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(figures) == ["line"] and figures["line"] is fig
    assert figures.show(None, "nothing") is None and "nothing" not in figures
    assert not figures.path("nothing").exists()
    plt.close(fig)


def test_summary_page_embeds_everything_and_escapes_text(tmp_path):
    fig, ax = plt.subplots()
    ax.bar([0, 1], [1, 2])
    png = tmp_path / "saved.png"
    fig.savefig(png)
    page = write_summary_html(
        tmp_path / "s.html",
        "summary <x>",
        [("Table", pd.DataFrame({"a": [0.123456]})), ("Figure", fig), ("File", png),
         ("Missing", tmp_path / "none.png"), ("Text", "line <b>\n\nsecond")],
    )  # fmt: skip
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 2 and "<td>0.1235</td>" in html
    assert "summary &lt;x&gt;" in html and "<p>line &lt;b&gt;</p>" in html and "<p>second</p>" in html
    assert not remote_references(html)
    # rendered from the template: wide tables scroll inside their box, the style is inline
    assert '<div class="table-wrap"><table' in html and "overflow-x: auto" in html
    plt.close(fig)


def test_rendered_notebooks_let_wide_outputs_scroll():
    page = scroll_wide_outputs("<html><head><title>t</title></head><body></body></html>")
    assert "overflow-x:auto" in page and page.index("overflow-x") < page.index("</head>")
