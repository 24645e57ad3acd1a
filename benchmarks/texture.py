"""Spot texture models of the refinement: ``spot_texture="fixed"`` against ``"ramp"``.

The refinement compares every spot of a pattern with its base's spot patch,
with one gain and offset per spot (``"fixed"``, the default) or with a gain
that varies linearly across the spot (``"ramp"``,
:func:`py4dstem_ccstae.spotfit.refine_spots`). This script measures both on
the same fitted models: each row fits the CC-ST-AE once with its defaults
and maps the scan twice, once per spot model (``spot_texture`` is read at
prediction; the spot patches come from the fit either way), so the two
columns differ by the spot model alone.

Data: the multislice cases of ``benchmarks/multislice.py`` (abTEM pattern
libraries, generated there and cached in ``benchmarks/multislice/data``) and
the package's own simulator (``polycrystal(scan_shape=(64, 64),
pattern_shape=(128, 128), seed=0)``, kinematic disks and Bloch-wave
textures, the two sweeps of ``docs/benchmarks.md``), with
``add_background_noise(level, counts=1e5, seed=0)``.

Run from the repository root::

    python benchmarks/texture.py [--case NAME ...] [--levels 0 25 50] [--out DIR]

Writes ``texture.json`` and ``texture.md`` to ``--out``
(default ``docs/benchmark_results``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from py4dstem_ccstae.affine import STRAIN_KEYS as KEYS  # noqa: E402

#: Cases: multislice case names, and the simulator's two sweeps.
SIMULATED = {
    "sim_kinematic": dict(dynamical=False),
    "sim_bloch_wave": dict(dynamical=True),
}
DEFAULT_CASES = [
    "Si001_grains_flat",
    "Si001_grains",
    "Si001_smooth",
    "Si110_grains",
    "sim_kinematic",
    "sim_bloch_wave",
]
MODELS = ("fixed", "ramp")


def load(name: str):
    """(clean DataCube, truth RealSlice, reference mask, symmetry, scorer)."""
    if name in SIMULATED:
        from py4dstem_ccstae.metrics import strain_errors
        from py4dstem_ccstae.simulate import polycrystal

        dc, truth = polycrystal(
            scan_shape=(64, 64), pattern_shape=(128, 128), seed=0, **SIMULATED[name]
        )

        def scorer(rs):
            e = strain_errors(rs, truth, symmetry=4)
            return {f"mae_{k}": e[f"mae_{k}"] for k in KEYS}

        return dc, truth, truth.get_slice("reference").data.astype(bool), 4, scorer
    import multislice as ms

    dc, truth = ms.assemble(name)
    sym = ms.CASES[name]["symmetry"]

    def scorer(rs):
        return ms.score(rs, truth, sym)

    return dc, truth, truth.get_slice("reference").data.astype(bool), sym, scorer


def run(cases, levels) -> list[dict]:
    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.noise import add_background_noise

    rows = []
    for name in cases:
        clean, _, ref, _, scorer = load(name)
        for level in levels:
            dc = add_background_noise(clean, level, counts=1e5, seed=0) if level else clean
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CCSTAE().fit(dc, seed=0, progress=False)
                fit_s = time.perf_counter() - t0
                row = {"case": name, "noise": level, "fit_s": fit_s}
                row["sensitivity"] = [
                    round(a["sensitivity"]["mean"], 3) for a in model.fitted_["attempts"]
                ]
                for texture in MODELS:
                    model.config["spot_texture"] = texture
                    t1 = time.perf_counter()
                    rs = model.strain_map(dc, reference=ref)
                    score = scorer(rs)
                    row[texture] = {k: float(score[f"mae_{k}"]) for k in KEYS}
                    row[texture]["map_s"] = time.perf_counter() - t1
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _mean(cell: dict) -> float:
    return float(np.mean([cell[k] for k in KEYS[:3]]))


def markdown(result: dict) -> str:
    from multislice import _cell

    lines = [
        "# Spot texture models: fixed against ramp",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch threads {result['threads']}; git {result['git']}.",
        "",
        "One fit per row (defaults, seed 0), mapped with each spot model. MAE "
        "x1e-3 (e_xx / e_yy / e_xy; theta in degrees) against the exact lattice "
        "(multislice: over the crystal, `multislice.score`; simulator: over all "
        "positions, `metrics.strain_errors`), relative to the reference region. "
        "change: ramp / fixed of the mean strain MAE (< 1: ramp better). map s: "
        "strain_map time of each.",
        "",
        "| case | noise % | fixed | theta | ramp | theta | change | map s fixed / ramp |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        # the multislice table's cell: "e_xx / e_yy / e_xy | theta"
        cells = [_cell({f"mae_{k}": r[t][k] for k in KEYS}) for t in MODELS]
        change = _mean(r["ramp"]) / _mean(r["fixed"])
        lines.append(
            f"| {r['case']} | {r['noise']:g} | {cells[0]} | {cells[1]} | {change:.2f} | "
            f"{r['fixed']['map_s']:.0f} / {r['ramp']['map_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="*", default=DEFAULT_CASES)
    ap.add_argument("--levels", type=float, nargs="+", default=[0, 25, 50])
    ap.add_argument("--out", default="docs/benchmark_results")
    args = ap.parse_args(argv)
    from _meta import run_meta, write

    result = {**run_meta("texture.py", argv), "rows": []}
    result["rows"] = run(args.case, args.levels)
    write(Path(args.out), "texture", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
