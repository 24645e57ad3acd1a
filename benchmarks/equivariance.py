"""The training's equivariance term (option ``equivariance``) against none, for lock-on.

Each row fits the CC-ST-AE twice on the same noisy scan, seed 0: with the
term off (``equivariance=0``) and with ``equivariance=W`` (``--weight``), and
maps the scan with each model. Reported per fit: the lock-on attempts and
their sensitivities (``fitted_["attempts"]``: the lock-on check), the
strain MAE against the truth (x1e-3, e_xx / e_yy / e_xy; theta in degrees,
modulo the lattice symmetry), and the fit time (every attempt included).

Data: the multislice cases of ``benchmarks/multislice.py`` (abTEM pattern
libraries, generated there and cached in ``benchmarks/multislice/data``) and
the package's own simulator (``sim_kinematic``, ``sim_bloch_wave``: the
polycrystal of ``docs/benchmarks.md``, 64x64 scan, 128x128 patterns), with
``add_background_noise(level, counts=1e5, seed=0)``.

Run from the repository root::

    python benchmarks/equivariance.py --rows CASE:LEVEL [CASE:LEVEL ...]
                                      [--weight 1e-3] [--out DIR]
                                      [--baseline-from RESULT.json ...]
    python benchmarks/equivariance.py --merge A.json B.json [--out DIR]

(``--merge``: runs made side by side on parts of the rows, or with other
weights, one table; every run's command is kept.)

Writes ``equivariance.json`` and ``equivariance.md`` to ``--out``
(default ``docs/benchmark_results``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from texture import load  # noqa: E402

from py4dstem_ccstae.affine import STRAIN_KEYS as KEYS  # noqa: E402


def fit_row(name: str, level: float, options: dict) -> dict:
    """One fit and map of case ``name`` at ``level`` % noise with ``options``."""
    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.noise import add_background_noise

    clean, _, ref, _, scorer = load(name)
    dc = add_background_noise(clean, level, counts=1e5, seed=0) if level else clean
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CCSTAE(**options).fit(dc, seed=0, progress=False)
        fit_s = time.perf_counter() - t0
        score = scorer(model.strain_map(dc, reference=ref))
    return {
        "case": name,
        "noise": level,
        "options": options,
        "fit_s": fit_s,
        "sensitivity": [
            round(a["sensitivity"]["mean"], 3) for a in model.fitted_["attempts"]
        ],
        "spots": len(model.fitted_["spots"] or []),
        **{k: float(score[f"mae_{k}"]) for k in KEYS},
    }


def markdown(result: dict) -> str:
    lines = [
        "# Equivariance term: lock-on and accuracy",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch threads {result['threads']}; git {result['git']}.",
        "",
        *[
            f"Rows from a run beside it: `{r['command']}`; {r['date']}; git {r['git']}.\n"
            for r in result.get("other_runs", [])
        ],
        *[
            f"Term-off fits reused from `{f}` (`--baseline-from`: same code path "
            "and seed) in the rows of the runs that name it.\n"
            for f in dict.fromkeys(
                d["reused_from"] for d, _ in result["pairs"] if "reused_from" in d
            )
        ],
        "Each row: the same scan fitted twice (seed 0), without the term "
        "(`equivariance=0`, the default) and with the "
        "term at the row's weight; attempts: the lock-on "
        "check's trainings and their sensitivities (a first attempt at or above "
        "0.1 locks on); MAE x1e-3 (e_xx / e_yy / e_xy), theta in degrees; fit s: "
        "all attempts.",
        "",
        "| case | noise % | weight | attempts (sensitivity), default | with the term "
        "| strain, default | with the term | theta, default | with the term "
        "| fit s, default | with the term |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d, e in result["pairs"]:

        def att(r):
            sens = ", ".join(f"{s:.2f}" for s in r["sensitivity"])
            return f"{len(r['sensitivity'])} ({sens})"

        def strain(r):
            return " / ".join(f"{1e3 * r[k]:.2f}" for k in ("e_xx", "e_yy", "e_xy"))

        def theta(r):
            return f"{r['theta'] * 180 / 3.141592653589793:.3f}"

        lines.append(
            f"| {d['case']} | {d['noise']:g} | {e['options']['equivariance']:g} "
            f"| {att(d)} | {att(e)} | {strain(d)} "
            f"| {strain(e)} | {theta(d)} | {theta(e)} | {d['fit_s']:.0f} "
            f"| {e['fit_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", help="CASE:LEVEL, e.g. Si001_grains_flat:50")
    ap.add_argument("--merge", nargs="+", help="result JSON files of runs to merge")
    ap.add_argument("--weight", type=float, default=1e-3, help="equivariance weight (1e-3)")
    ap.add_argument("--out", default="docs/benchmark_results")
    ap.add_argument(
        "--baseline-from",
        nargs="+",
        default=[],
        help="result JSON files whose term-off fits of the same case and level are "
        "reused instead of fitted again (same code and seed)",
    )
    args = ap.parse_args(argv)
    from _meta import run_meta, write

    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        # the weight and the reuse are per row (pairs), not per merged result
        result = {**parts[0], "other_runs": []}
        result.pop("weight", None)
        for part in parts[1:]:
            result["pairs"] += part["pairs"]
            result["other_runs"].append({k: part[k] for k in ("command", "date", "git")})
        write(Path(args.out), "equivariance", result, markdown(result))
        print(markdown(result))
        return 0
    if not args.rows:
        ap.error("--rows or --merge is required")
    todo = []
    for spec in args.rows:
        name, _, level = spec.partition(":")
        try:
            todo.append((name, float(level)))
        except ValueError:
            ap.error(f"--rows: expected CASE:LEVEL, got {spec!r}")

    result = {**run_meta("equivariance.py", argv), "weight": args.weight, "pairs": []}
    reused = {}
    for f in args.baseline_from:
        for d, _ in json.loads(Path(f).read_text())["pairs"]:
            reused[(d["case"], float(d["noise"]))] = {**d, "reused_from": f}
    for name, level in todo:
        off, on = {"equivariance": 0.0}, {"equivariance": args.weight}
        base = reused.get((name, level)) or fit_row(name, level, off)
        pair = [base, fit_row(name, level, on)]
        print(json.dumps(pair), flush=True)
        result["pairs"].append(pair)
        write(Path(args.out), "equivariance", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
