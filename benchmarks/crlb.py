"""Cramer-Rao bound of per-pattern strain on the benchmark's noise sweep.

Run from the repository root (after ``py4dstem-ccstae benchmark``)::

    python benchmarks/crlb.py [--positions 40] [--out docs/benchmark_results]

How well can *any* method that estimates each pattern's strain from that
pattern alone do? For the benchmark's noise model (``add_background_noise``:
pattern and Lorentzian halo mixed, Poisson counts; ``counts=1e5`` per
pattern) the expected counts of detector pixel ``j`` are
``lam_j = counts * ((1 - w) * img_j / sum(img) + w * halo_j)``, and the
Fisher information of parameters ``p`` is ``F = sum_j (d lam_j / d p)
(d lam_j / d p)^T / lam_j``. Parameters: ``e_xx, e_yy, e_xy`` (the
package's strain, applied as ``(I - E) @ A``), the lattice rotation and the
pattern origin (2 px); their derivatives come from the simulator's own
renderer (rigid disks, central differences of 1e-5), so disk shape and
intensities are known exactly: the bound is for an estimator that knows the
noise-free pattern up to its transform. An unbiased estimator's standard
deviation is at least ``sqrt(diag(F^-1))``; for Gaussian errors the MAE is
``sqrt(2/pi) = 0.798`` times the standard deviation.

The bound is computed on the 128x128 detector pixels and with 2x2 pixels
summed (64x64, about the sampling of the CC-ST-AE's default ``size=64``
inputs, 1.9 detector pixels per model pixel), averaged (in variance) over
``--positions`` random scan positions of the benchmark's noise sweep data
(``polycrystal(scan_shape=(64, 64), pattern_shape=(128, 128), seed=0)``),
at every noise level of ``docs/benchmark_results/benchmark.json``, and set
beside the MAE measured there for both methods.

The simulator's render arguments (spot vectors, intensities, detector
matrix, per-position transforms and origins) are recorded by wrapping
``py4dstem_ccstae.disks.render_patterns`` during one ``polycrystal`` call.

Writes ``crlb.json`` and ``crlb.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

COMPONENTS = ("e_xx", "e_yy", "e_xy")
MAE_PER_SD = math.sqrt(2.0 / math.pi)
STEP = 1e-5


def _render_args():
    """Render arguments of the benchmark's noise-sweep simulation."""
    import py4dstem_ccstae.disks as disks
    from py4dstem_ccstae.simulate import polycrystal

    calls = []
    real = disks.render_patterns

    def record(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    disks.render_patterns = record
    try:
        polycrystal(scan_shape=(64, 64), pattern_shape=(128, 128), seed=0)
    finally:
        disks.render_patterns = real
    # the simulator renders the scan in batches of positions (flat scan
    # order); the other arguments are the same in every call
    g, intensity, C, shape, radius, edge = calls[0][2:8]
    A_all = np.concatenate([args[0] for args in calls])
    origins = np.concatenate([args[1] for args in calls])

    def render(A, origin):
        return real(A[None], origin[None], g, intensity, C, shape, radius, edge)[0]

    return A_all, origins, shape, render


def _derivatives(render, A0, origin):
    """d img / d p for p = (e_xx, e_yy, e_xy, rotation, origin row, origin col)."""
    out = []
    for E in ([[1, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 1], [1, 0]]):
        E = np.array(E, float)
        plus = render((np.eye(2) - STEP * E) @ A0, origin)
        minus = render((np.eye(2) + STEP * E) @ A0, origin)
        out.append((plus - minus) / (2 * STEP))
    c, s = math.cos(STEP), math.sin(STEP)
    R = np.array([[c, -s], [s, c]])
    out.append((render(R @ A0, origin) - render(R.T @ A0, origin)) / (2 * STEP))
    for d in (np.array([STEP, 0.0]), np.array([0.0, STEP])):
        out.append((render(A0, origin + d) - render(A0, origin - d)) / (2 * STEP))
    return np.array(out)


def _bin(x: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return x
    *lead, H, W = x.shape
    return x.reshape(*lead, H // k, k, W // k, k).sum((-1, -3))


def bounds(levels, positions: int, seed: int = 0) -> dict:
    """Standard-deviation bounds per level and sampling (strain fractions)."""
    from py4dstem_ccstae.noise import lorentzian_halo

    A_all, origins, shape, render = _render_args()
    halo = lorentzian_halo(shape)
    counts = 1e5
    idx = np.random.default_rng(seed).choice(len(A_all), positions, replace=False)
    cache = []
    for i in idx:
        img = render(A_all[i], origins[i])
        cache.append(
            (img, _derivatives(render, A_all[i], origins[i]) / img.sum(), img.sum())
        )
    out = {}
    for level in levels:
        w = level / 100.0
        row = {}
        for name, k in (("detector", 1), ("binned_2x2", 2)):
            var = []
            for img, dimg, total in cache:
                lam = _bin(counts * ((1 - w) * img / total + w * halo), k).ravel()
                D = _bin(counts * (1 - w) * dimg, k).reshape(dimg.shape[0], -1)
                F = (D / np.maximum(lam, 1e-12)) @ D.T
                var.append(np.diag(np.linalg.inv(F))[:3])
            sd = np.sqrt(np.mean(var, 0))
            row[name] = {c: float(v) for c, v in zip(COMPONENTS, sd, strict=True)}
        out[level] = row
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Per-pattern Cramer-Rao bound and the measured MAE",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"{result['positions']} positions; measured MAE from `benchmark.json` "
        f"(git {result['benchmark_git']}).",
        "",
        "MAE x1e-3. 'bound': the smallest MAE an unbiased per-pattern estimator can "
        "reach (0.798 x the Cramer-Rao standard deviation), on the 128x128 detector "
        "pixels and with 2x2 pixels summed (about the CC-ST-AE's 64x64 inputs). "
        "'x bound': measured MAE / bound on the 2x2 sampling.",
        "",
        "| noise % | component | bound (detector) | bound (2x2) | CC-ST-AE | x bound | "
        "py4DSTEM | x bound | 0.6 x py4DSTEM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cc, p4, b2 = r["ccstae"], r["py4dstem"], r["bound_binned_2x2"]

        def f(v):
            return "" if v is None else f"{1e3 * v:.2f}"

        def x(v, b=b2):
            return "" if v is None else f"{v / b:.2f}"

        lines.append(
            f"| {r['noise']:g} | {r['component']} | {f(r['bound_detector'])} | {f(b2)} | "
            f"{f(cc)} | {x(cc)} | {f(p4)} | {x(p4)} | "
            f"{f(None if p4 is None else 0.6 * p4)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from _meta import run_meta, write

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=40, help="scan positions averaged")
    ap.add_argument("--out", default="docs/benchmark_results", help="output folder")
    args = ap.parse_args(argv)
    out = Path(args.out)
    bench = json.loads((out / "benchmark.json").read_text())
    levels = [lv for lv in bench["settings"]["noise_levels"] if lv > 0]
    measured = {
        (r["noise"], r["method"]): r for r in bench["rows"] if r["case"] == "noise sweep"
    }
    sd = bounds(levels, args.positions)
    rows = []
    for level in levels:
        for c in COMPONENTS:
            rows.append(
                {
                    "noise": level,
                    "component": c,
                    "bound_detector": MAE_PER_SD * sd[level]["detector"][c],
                    "bound_binned_2x2": MAE_PER_SD * sd[level]["binned_2x2"][c],
                    "ccstae": measured.get((level, "CC-ST-AE"), {}).get(f"mae_{c}"),
                    "py4dstem": measured.get((level, "py4DSTEM"), {}).get(f"mae_{c}"),
                }
            )
    result = {
        **run_meta("crlb.py", argv),
        "positions": args.positions,
        "benchmark_git": bench.get("meta", {})
        .get("versions", {})
        .get("git_commit", "unknown"),
        "rows": rows,
    }
    write(out, "crlb", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
