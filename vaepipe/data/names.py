"""Class names as text that is shown: escaped for Markdown (and so for the report's HTML) and for
matplotlib's mathtext, so a name is always read as the characters it holds.

A class name comes from the dataset; once datasets can be folders it is whatever a folder is
called, e.g. ``![x](../../etc/passwd)`` or ``<script>``. In the report such a name must stay
text: never a link, an image the HTML inliner would read, a table cell break or markup.
"""
from __future__ import annotations

import re
from typing import Sequence

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


def resolve_classes(classes, class_names: Sequence[str], where: str) -> list[int]:
    """``sweep.classes`` as class indices into ``class_names``: ``"auto"`` is the first three
    classes (all of them, if fewer); an entry is an index or a class name. One the dataset
    lacks raises ValueError naming ``sweep.classes``, ``where`` and the classes there are."""
    if classes == "auto":
        return list(range(min(3, len(class_names))))
    picked = []
    for entry in classes:
        if isinstance(entry, int) and 0 <= entry < len(class_names):
            picked.append(entry)
        elif isinstance(entry, str) and entry in class_names:
            picked.append(list(class_names).index(entry))
        else:
            listed = ", ".join(f"{i} {name!r}" for i, name in enumerate(class_names))
            raise ValueError(f"sweep.classes: {entry!r} is not a class of {where} (its classes: "
                             f"{listed}); use auto, their indices or their names")
    if len(set(picked)) != len(picked):
        raise ValueError(f"sweep.classes names one class twice: {list(classes)}")
    return picked


def dataset_label(data) -> str:
    """How tables and figures name the data of ``data`` (the ``data`` params section): the
    dataset's name, or for a folder its path (``folder data/images/shapes``)."""
    return f"folder {data.path}" if data.dataset == "folder" else data.dataset
