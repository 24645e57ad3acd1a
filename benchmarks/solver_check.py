"""Check of one refinement change on one case and noise level: fit, map, MAE.

Run from the repository root (``PYTHONPATH`` = another checkout to compare)::

    python benchmarks/solver_check.py CASE LEVEL

CASE: a multislice case (``benchmarks/multislice.py``; its data generated
there) or ``sim_kinematic`` / ``sim_bloch_wave`` (the simulator's 64x64
polycrystal, 128x128 patterns, seed 0, the sweeps of ``docs/benchmarks.md``).
Noise: ``add_background_noise(LEVEL, counts=1e5, seed=0)``. The CC-ST-AE is
fitted with its defaults (seed 0) and maps the scan relative to the
reference region. Prints one line: the package path, case, level, the MAE
x1e-3 (e_xx, e_yy, e_xy; theta in mrad), fit and map seconds. The lines of
the checks of 2026-12-05 are in ``docs/benchmark_results/solver_check.txt``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KEYS = ("e_xx", "e_yy", "e_xy", "theta")


def load(case: str):
    """(clean DataCube, truth, scorer returning ``mae_<key>``)."""
    if case.startswith("sim_"):
        from py4dstem_ccstae.metrics import strain_errors
        from py4dstem_ccstae.simulate import polycrystal

        dc, truth = polycrystal(
            scan_shape=(64, 64),
            pattern_shape=(128, 128),
            seed=0,
            dynamical=case == "sim_bloch_wave",
        )

        def scorer(rs):
            e = strain_errors(rs, truth, symmetry=4)
            return {f"mae_{k}": e[f"mae_{k}"] for k in KEYS}

        return dc, truth, scorer
    import multislice as ms

    dc, truth = ms.assemble(case)

    def scorer(rs):
        return ms.score(rs, truth, ms.CASES[case]["symmetry"])

    return dc, truth, scorer


def main(argv=None) -> int:
    import py4dstem_ccstae
    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.noise import add_background_noise

    args = sys.argv[1:] if argv is None else argv
    case, level = args[0], float(args[1])
    clean, truth, scorer = load(case)
    ref = truth.get_slice("reference").data.astype(bool)
    dc = add_background_noise(clean, level, counts=1e5, seed=0) if level else clean
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    model = CCSTAE().fit(dc, seed=0, progress=False)
    t1 = time.perf_counter()
    rs = model.strain_map(dc, reference=ref)
    t2 = time.perf_counter()
    score = scorer(rs)
    out = {k: round(score[f"mae_{k}"] * 1e3, 3) for k in KEYS}
    out.update(fit_s=round(t1 - t0), map_s=round(t2 - t1, 1))
    where = os.path.dirname(py4dstem_ccstae.__file__)
    print("CHECK", where, case, level, json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
