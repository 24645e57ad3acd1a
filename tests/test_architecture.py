"""docs/architecture.md stays true: the module table is the import order."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "py4dstem_ccstae"


def _table_order() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)\.py` \|", text, re.MULTILINE)
    assert rows, "module table not found in docs/architecture.md"
    return {name: i for i, name in enumerate(rows)}


def test_every_module_is_in_the_table_and_the_table_names_only_modules():
    order = _table_order()
    modules = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert modules - set(order) == set(), "modules missing from docs/architecture.md"
    assert set(order) - modules == set(), "docs/architecture.md names absent modules"


def test_modules_import_only_modules_above_them():
    # module-level imports only: a lazy import inside a function (the
    # estimator's of distributed, the workflows') is allowed and said so
    order = _table_order()
    wrong = []
    for path in sorted(PKG.glob("*.py")):
        if path.stem == "__init__":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                target = node.module.split(".")[0]
                if order[target] >= order[path.stem]:
                    wrong.append(f"{path.stem} imports {target}")
    assert wrong == []


def test_adapters_do_not_import_the_simulator():
    code = (
        "import sys, py4dstem_ccstae.adapters; "
        "assert 'py4dstem_ccstae.simulate' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
