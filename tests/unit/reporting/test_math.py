"""Formulas in reports become MathML (rendered offline by the browser), never raw TeX."""

from __future__ import annotations

import nbformat

from trustlab.reporting.html import remote_references, render_html, tex_to_mathml


def test_display_and_inline_formulas_become_mathml():
    out = tex_to_mathml(r"The loss $$\mathcal{L} = \alpha\,\mathrm{CE}$$ uses $p_c$ per class.")
    assert out.count("<math") == 2 and 'display="block"' in out and 'display="inline"' in out
    assert "$" not in out and "<mi>&#x003B1;</mi>" in out  # alpha


def test_prices_and_escaped_dollars_are_not_formulas():
    text = r"It costs $5 and $10; \$x\$ stays; TRUSTLAB_$PROFILE too."
    assert tex_to_mathml(text) == text


def test_an_unreadable_formula_is_shown_as_code():
    assert tex_to_mathml(r"see $$\frac{a}{$$ here") == r"see <code>\frac{a}{</code> here"


def test_rendered_report_has_no_raw_tex_and_loads_nothing_remote(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(r"# T" + "\n\n" + r"$$\sum_{c} |m_c - 2 p_c (1 - p_c)|$$")]
    src = tmp_path / "t.ipynb"
    nbformat.write(nb, str(src))
    html = render_html(src, tmp_path / "t.html").read_text()
    assert "<math" in html and "$$" not in html and not remote_references(html)
