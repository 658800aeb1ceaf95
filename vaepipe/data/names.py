"""Class names as text that is shown: escaped for Markdown (and so for the report's HTML) and for
matplotlib's mathtext, so a name is always read as the characters it holds.

A class name comes from the dataset; once datasets can be folders it is whatever a folder is
called, e.g. ``![x](../../etc/passwd)`` or ``<script>``. In the report such a name must stay
text: never a link, an image the HTML inliner would read, a table cell break or markup.
"""
from __future__ import annotations

import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are the ones
# with a meaning inside a sentence or a GitHub table cell (a name never starts a line, so list
# markers such as "-" and "1." stay as they are: "T-shirt/top" reads unchanged)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#!|~$&])")


def _one_line(name: str) -> str:
    return " ".join(str(name).split())


def markdown_text(name: str) -> str:
    """``name`` as literal Markdown text on one line: every special character backslash-escaped
    (markdown-it then writes ``<`` and ``&`` as HTML entities)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _one_line(name))


def figure_text(name: str) -> str:
    """``name`` as literal matplotlib text on one line: ``$`` would start mathtext."""
    return _one_line(name).replace("$", r"\$")
