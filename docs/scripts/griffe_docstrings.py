"""Griffe extension for the API reference: normalise numpy docstrings.

Loaded by ``mkdocs.yml`` (``extensions:`` of the python handler); it changes
only the text handed to the docstring parser, never the package. Two fixes:

* Sphinx cross-reference roles (``:class:`~py4dstem_ccstae.affine.LatticeTransform```,
  ``:meth:`fit```), which mkdocstrings does not understand and would print
  verbatim, become inline code of their target (``~a.b.c`` shows as ``c``,
  as Sphinx does).
* A grouped parameter entry (``seed, device, progress`` with one shared
  description) is split into one entry per name: griffe otherwise gives every
  name of the group the first name's type and default from the signature.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|mod|data|attr|obj|exc|const|ref):`(~?)([^`]+)`"
)
_SECTION = re.compile(r"^(\s*)(Parameters|Other Parameters)\n\1-{3,}\n", re.MULTILINE)
_HEADER = re.compile(r"^\s*\S[^\n]*\n\s*-{3,}\s*$", re.MULTILINE)
_GROUP = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*:\s*\S.*)?$")


def _replace(match: re.Match) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def strip_roles(text: str) -> str:
    """``:role:`~a.b``` -> ```b```; ``:role:`a.b``` -> ```a.b```."""
    return _ROLE.sub(_replace, text)


def _split_block(block: str) -> str:
    lines = block.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _GROUP.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, names, typ = m.group(1), m.group(2), m.group(3) or ""
        j = i + 1
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > len(indent)
        ):
            j += 1
        while j > i + 1 and not lines[j - 1].strip():
            j -= 1
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{indent}{name}{typ}")
            out.extend(lines[i + 1 : j])
        i = j
    return "\n".join(out)


def split_grouped_parameters(text: str) -> str:
    """One entry per name in the Parameters sections of a numpy docstring."""
    pieces, pos = [], 0
    for m in _SECTION.finditer(text):
        end_m = _HEADER.search(text, m.end())
        end = end_m.start() if end_m else len(text)
        pieces += [text[pos : m.end()], _split_block(text[m.end() : end])]
        pos = end
    return "".join(pieces) + text[pos:]


class CleanDocstrings(griffe.Extension):
    """Apply :func:`strip_roles` and :func:`split_grouped_parameters` to docstrings."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = strip_roles(obj.docstring.value)
            obj.docstring.value = split_grouped_parameters(text)
