"""MkDocs hooks: fill generated parts of the pages from the code and the README.

Loaded by ``mkdocs.yml`` (``hooks:``). A page marks a generated part with an
HTML comment alone on a line; the hook replaces it at build time:

``<!-- readme: status -->``
    The ``## Status`` section of ``README.md`` (the source of truth for what
    is done), links rewritten for the docs folder.
``<!-- defaults: DEFAULT_CONFIG -->``
    Table of :data:`py4dstem_ccstae.estimator.DEFAULT_CONFIG`. The page must
    have one ``### `option``` heading per option and no other such heading,
    otherwise the build fails: an option added to or removed from the code
    cannot go undocumented.
``<!-- defaults: TrainConfig -->``
    Table of the fixed :class:`py4dstem_ccstae.train.TrainConfig` fields that
    ``CCSTAE`` does not expose.
``<!-- defaults: DEFAULT_BASELINE_PARAMS -->``
    Table of :data:`py4dstem_ccstae.baseline.DEFAULT_BASELINE_PARAMS`.

Values are read from the source files with :mod:`ast` (no import of torch or
py4DSTEM), so the docs build in a second and show exactly what the code says.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "py4dstem_ccstae"

_MARK = re.compile(r"^<!-- (readme|defaults): (\w+) -->$", re.MULTILINE)


# ----------------------------------------------------------------- readers
def _module(name: str) -> ast.Module:
    return ast.parse((PKG / f"{name}.py").read_text(encoding="utf-8"))


def _dict_assignment(module: str, name: str) -> dict:
    """Literal value of ``NAME = dict(...)`` or ``NAME = {...}`` in a module."""
    for node in _module(module).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        if name not in targets:
            continue
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "dict":
            return {kw.arg: ast.literal_eval(kw.value) for kw in value.keywords}
        return dict(ast.literal_eval(value))
    raise PluginError(f"{name} not found in py4dstem_ccstae/{module}.py")


def _dataclass_defaults(module: str, name: str) -> dict:
    """Literal defaults of the fields of a dataclass (others skipped)."""
    for node in _module(module).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            out = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and item.value is not None:
                    try:
                        out[item.target.id] = ast.literal_eval(item.value)
                    except ValueError:
                        continue
            return out
    raise PluginError(f"class {name} not found in py4dstem_ccstae/{module}.py")


def default_config() -> dict:
    """The options' defaults (``config.Options``), as written in the source."""
    return _dataclass_defaults("config", "Options")


def readme_status() -> str:
    """The README's ``## Status`` section body, links pointed into the docs folder."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Status[^\n]*\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if m is None:
        raise PluginError("README.md has no '## Status' section")
    return re.sub(r"\]\(docs/", "](", m.group(1)).strip()


# ---------------------------------------------------------------- renderers
def _table(values: dict, header: str) -> str:
    rows = [f"| {header} | default |", "|---|---|"]
    rows += [f"| `{k}` | `{v!r}` |" for k, v in values.items()]
    return "\n".join(rows)


def _config_table(markdown: str, page: str) -> str:
    cfg = default_config()
    documented = re.findall(r"^### `(\w+)`", markdown, re.MULTILINE)
    missing = [k for k in cfg if k not in documented]
    extra = [k for k in documented if k not in cfg]
    if missing or extra:
        raise PluginError(
            f"{page}: DEFAULT_CONFIG options and '### `option`' headings differ: "
            f"undocumented {missing}, not in DEFAULT_CONFIG {extra}"
        )
    return _table(cfg, "option")


def _fill(kind: str, name: str, markdown: str, page: str) -> str:
    if kind == "readme" and name == "status":
        return readme_status()
    if kind == "defaults" and name == "DEFAULT_CONFIG":
        return _config_table(markdown, page)
    if kind == "defaults" and name == "TrainConfig":
        cfg = default_config()
        fixed = {
            k: v for k, v in _dataclass_defaults("train", name).items() if k not in cfg
        }
        return _table(fixed, "field")
    if kind == "defaults" and name == "DEFAULT_BASELINE_PARAMS":
        return _table(_dict_assignment("baseline", name), "parameter")
    raise PluginError(f"{page}: unknown generated block <!-- {kind}: {name} -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every generated-block marker of a page."""
    src = page.file.src_uri
    return _MARK.sub(lambda m: _fill(m.group(1), m.group(2), markdown, src), markdown)
