"""Assemble ``docs/benchmarks.md`` from the template and the committed results.

Run from the repository root after any benchmark::

    python benchmarks/make_docs.py

Every table on the page is copied from a result file written by a benchmark
command (``docs/benchmark_results/``); the prose comes from
``benchmarks/benchmarks_template.md`` and the interpretation of the current
results from ``benchmarks/benchmarks_reading.md`` (comparison) and
``benchmarks/<name>_reading.md`` for ``speed`` (speed and memory), ``crlb``
(Cramer-Rao bound), ``refinement`` and ``refinement_dynamical``
(refinement options on the noise sweep's and the dynamical data) and
``training_options`` (mask schedule and losses), ``phases`` (several
bases), ``multislice`` (abTEM data), ``multislice_crlb`` (its Cramer-Rao
bound), ``refinement_multislice`` (``refine_size`` on it), ``texture`` (spot
texture models) and ``large_data`` (distributed prediction, big detectors, a
big scan on disk).
``tests/test_docs.py`` checks that the committed page equals what this script
produces, so no number is typed by hand.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmark_results"
TEMPLATE = ROOT / "benchmarks" / "benchmarks_template.md"
PAGE = ROOT / "docs" / "benchmarks.md"


def _simulate_speed_table() -> str:
    data = json.loads((RESULTS / "simulate_speed.json").read_text())
    meta = data.pop("meta")
    rows = [
        f"`{meta['command']}` ({meta['date']}, {meta['machine']}):",
        "",
        "| case (64x64 scan, 128x128 patterns) | median s | runs |",
        "|---|---|---|",
    ]
    rows += [f"| {k} | {v['median_s']:.1f} | {len(v['runs'])} |" for k, v in data.items()]
    return "\n".join(rows)


def _file(name: str) -> str:
    if not (RESULTS / name).exists():
        return f"*Not measured yet: `docs/benchmark_results/{name}` does not exist.*"
    text = (RESULTS / name).read_text().strip()
    # links relative to the result folder -> relative to docs/
    text = re.sub(r"\]\((?!https?:|/)([^)]+)\)", r"](benchmark_results/\1)", text)
    # demote the result file's own headings below the page's sections
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", text, flags=re.M)


def render() -> str:
    """The page as it must be committed."""
    text = TEMPLATE.read_text()
    reading = ROOT / "benchmarks" / "benchmarks_reading.md"
    text = text.replace("{{reading}}", reading.read_text().strip())
    for name in (
        "speed",
        "crlb",
        "refinement",
        "refinement_dynamical",
        "training_options",
        "equivariance",
        "phases",
        "multislice",
        "multislice_crlb",
        "refinement_multislice",
        "texture",
        "large_data",
    ):
        path = ROOT / "benchmarks" / f"{name}_reading.md"
        body = path.read_text().strip() if path.exists() else ""
        text = text.replace(f"{{{{{name}_reading}}}}", body)
    text = text.replace("{{simulate_speed}}", _simulate_speed_table())
    return re.sub(r"\{\{file:([\w.\-]+)\}\}", lambda m: _file(m.group(1)), text)


def main() -> int:
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
