"""Accuracy and speed of the options that act after training (refinement, spots).

Run from the repository root::

    python benchmarks/refinement.py [--levels 50 70] [--variants JSON] [--repeats 3]

On the benchmark's noise-sweep data (``polycrystal(scan_shape=(64, 64),
pattern_shape=(128, 128), seed=0)`` with ``add_background_noise(level,
seed=0)``), trains ``CCSTAE(**variant)`` for every variant (a JSON list of
option dicts; default: the defaults, the earlier defaults
``spot_threshold=0.15`` and ``background="none"``, ``refine_size`` 96 and
128) with training seed 0. These options change
only what happens after training, so every variant trains the same network
(checked: the bases must be identical). Reports, side by side in one run:
the MAE of the strain map against the simulation's truth (reference =
zero-strain grain, as in the benchmark) and the median over ``--repeats``
runs of the prediction time of the whole 64x64 scan (``strain_map``,
refinement included), as patterns per second.

``--case dynamical`` runs the same comparison on the benchmark's dynamical
(Bloch-wave) data (``polycrystal(..., dynamical=True)``) and ``--case
full_rotation`` on its full-rotation data (theta errors modulo the lattice's
symmetry), each at ``--levels``. ``--case`` also takes a case of the
multislice benchmark (``benchmarks/multislice.py``; abTEM pattern libraries
generated there and cached in ``benchmarks/multislice/data``, MAE over the
crystal with ``multislice.score``, relative to the case's reference region,
theta modulo the lattice's symmetry), with ``add_background_noise(level,
counts=1e5, seed=0)`` as there.

Writes ``refinement.json`` and ``refinement.md`` to ``--out`` (the noise
sweep's data), or ``refinement_<case>.json`` / ``.md`` for another case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

KEYS = ("mae_e_xx", "mae_e_yy", "mae_e_xy", "mae_theta_deg")


DEFAULT_VARIANTS = [
    {},
    {"spot_threshold": 0.15},
    {"background": "none"},
    {"spot_threshold": 0.15, "background": "none"},
    {"refine_size": 96},
    {"refine_size": 128},
]


#: Data sets: extra ``polycrystal`` arguments and a description.
CASES = {
    "noise": ({}, "the benchmark's noise-sweep data"),
    "dynamical": ({"dynamical": True}, "the benchmark's dynamical (Bloch-wave) data"),
    "full_rotation": (
        {"rotation_range": "full"},
        "the benchmark's full-rotation data (theta modulo the lattice symmetry)",
    ),
}


def _label(variant: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.items()) or "defaults"


def _title(case: str) -> str:
    """The data set's description for the table."""
    if case in CASES:
        return (
            f"64x64 scan, 128x128 patterns, {CASES[case][1]} (reference = "
            "zero-strain grain)"
        )
    import multislice as ms

    Rx, Ry = ms.CASES[case]["scan"]
    return (
        f"multislice case `{case}` ({Rx}x{Ry} scan, 128x128 patterns, "
        "`add_background_noise(level, counts=1e5, seed=0)`; MAE over the crystal, "
        "reference = the case's reference region)"
    )


def _data(case: str):
    """(clean DataCube, reference mask, scorer: RealSlice -> MAE dict)."""
    import numpy as np

    from py4dstem_ccstae.metrics import strain_errors

    if case in CASES:
        from py4dstem_ccstae.simulate import polycrystal

        clean, truth = polycrystal(
            scan_shape=(64, 64), pattern_shape=(128, 128), seed=0, **CASES[case][0]
        )
        sym = 1
        if case == "full_rotation":
            sym = int(truth.metadata["simulation"]["symmetry"])

        def scorer(rs):
            e = strain_errors(rs, truth, symmetry=sym)
            return {k: float(e[k]) for k in KEYS}

        ref = truth.get_slice("reference").data.astype(bool)
        return clean, ref, scorer
    import multislice as ms

    clean, truth = ms.assemble(case)
    sym = ms.CASES[case]["symmetry"]

    def scorer(rs):
        e = ms.score(rs, truth, sym)
        out = {f"mae_{k}": e[f"mae_{k}"] for k in ("e_xx", "e_yy", "e_xy")}
        return {**out, "mae_theta_deg": float(np.degrees(e["mae_theta"]))}

    return clean, truth.get_slice("reference").data.astype(bool), scorer


def run(levels, variants, repeats: int, case: str = "noise") -> list[dict]:
    import numpy as np
    import torch

    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.simulate import add_background_noise

    clean, ref, scorer = _data(case)
    n = int(np.prod(clean.data.shape[:2]))
    rows = []
    for level in levels:
        dc = add_background_noise(clean, level, seed=0) if level else clean
        bases = None
        for variant in variants:
            model = CCSTAE(**variant).fit(dc, seed=0, progress=False)
            if bases is None:
                bases = model.net.bases.detach().clone()
            elif not torch.equal(bases, model.net.bases.detach()):
                raise RuntimeError(f"{variant} changed training: the comparison is void")
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                rs = model.strain_map(dc, reference=ref)
                times.append(time.perf_counter() - t0)
            e = scorer(rs)
            row = {
                "noise": level,
                "variant": _label(variant),
                "attempts": len(model.fitted_["attempts"]),
                "predict_s": statistics.median(times),
                "patterns_per_s": n / statistics.median(times),
                **e,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(result: dict) -> str:
    case = result.get("case", "noise")
    lines = [
        "# Refinement options" + ("" if case == "noise" else f": {case}"),
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch threads {result['threads']}; git {result['git']}.",
        "",
        f"{_title(case)}, one training per level "
        "(identical for every variant); MAE vs truth "
        "(strain x1e-3, theta in degrees); "
        f"prediction speed: median of {result['repeats']} runs of `strain_map` on "
        "the whole scan.",
        "",
        "| noise % | options | e_xx | e_yy | e_xy | theta deg | predict s | patterns/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        maes = " | ".join(f"{1e3 * r[k]:.3f}" for k in KEYS[:3])
        lines.append(
            f"| {r['noise']:g} | {r['variant']} | {maes} | {r['mae_theta_deg']:.3f} | "
            f"{r['predict_s']:.1f} | {r['patterns_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from _meta import run_meta, write

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[50.0, 70.0])
    ap.add_argument(
        "--variants",
        type=json.loads,
        default=DEFAULT_VARIANTS,
        help="JSON list of CCSTAE option dicts",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--case",
        default="noise",
        help=f"data set: {', '.join(sorted(CASES))}, or a multislice case",
    )
    ap.add_argument("--out", default="docs/benchmark_results", help="output folder")
    args = ap.parse_args(argv)
    meta = run_meta("refinement.py", argv)
    if args.case not in CASES:
        import multislice

        if args.case not in multislice.CASES:
            ap.error(f"--case: unknown data set {args.case!r}")
    rows = run(args.levels, args.variants, args.repeats, args.case)
    result = {**meta, "case": args.case, "repeats": args.repeats, "rows": rows}
    name = "refinement" if args.case == "noise" else f"refinement_{args.case}"
    write(Path(args.out), name, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
