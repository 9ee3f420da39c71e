"""Rendering results: notebook HTML, summary pages, figures and the front page."""
