"""Cramer-Rao bound of per-pattern strain on the multislice benchmark's scans.

Run from the repository root (after ``python benchmarks/multislice.py
generate``; the measured MAEs come from ``docs/benchmark_results/multislice.json``)::

    python benchmarks/multislice_crlb.py [--case NAME ...] [--positions 40]

The same bound as ``benchmarks/crlb.py`` (the package simulator's sweep),
for the abTEM patterns. Noise model: ``add_background_noise`` at ``counts =
1e5``, so detector pixel ``j`` has the expected counts ``lam_j = counts * ((1
- w) * img_j / sum(img) + w * halo_j)`` and the Fisher information of the
parameters ``p`` is ``F = sum_j (d lam_j / d p)(d lam_j / d p)^T / lam_j``.

The multislice code cannot be differentiated, so the pattern's derivative
is that of **rigid disks**: every disk of the clean abTEM pattern (centred
at ``o + A g / dq``, where the exact lattice matrix ``A`` puts it; each pixel
belongs to the nearest disk) moves as one, by ``d c = dM (c - o)`` for a
change ``dM`` of the lattice matrix, and all disks move with the origin.
Parameters: ``e_xx, e_yy, e_xy`` (applied as ``(I - E) @ A``), the lattice
rotation, the origin (2 px). The change of a pixel under a shift is the
central difference of the pattern (:func:`derivatives`). On a disk edge that
is sharper than a pixel it spreads the change onto the dark neighbours,
which adds information that is not there (``tests/test_benchmark_scripts.py``
checks this on rendered disks): the bounds are lower estimates, most of all
on the detector's own pixels at low background. A Fourier derivative does
the same, more (its detector-pixel bound is 1.3-1.4x lower still on these
patterns; with 2x2 pixels summed, 1-14 % lower: scratch comparison on 6
positions of three cases).

So the bound is that of an estimator that knows every disk's noise-free
interior (thickness, probe position and dynamical texture
included) up to the lattice transform, the same model the CC-ST-AE's
refinement fits (one patch per spot, moved rigidly): a method that must learn
the disk interiors does worse. Changes of the interiors with strain (second
order) are not counted.

Positions: ``--positions`` crystal positions drawn from the scan (seed 0);
the variance is averaged over them. The bound is computed on the 128x128
detector pixels and with 2x2 pixels summed (about the CC-ST-AE's 64x64
inputs), at every noise level of the committed multislice results, and set
beside both methods' MAE (x1e-3; MAE = 0.798 x the standard deviation for
Gaussian errors). A bias (what the multislice tables show on several cases)
is not a noise limit: the bound says how low a map's MAE could go if there
were none.

Writes ``multislice_crlb.json`` and ``multislice_crlb.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from crlb import COMPONENTS, MAE_PER_SD, _bin
from multislice import CASES, DATA, plan, thickness_index

#: disks whose interior holds less than this fraction of the pattern are left
#: out (they carry no information; with them, the Voronoi split of the pixels
#: between neighbouring disks would matter)
MIN_DISK_FRACTION = 1e-5


def _disks(img, origin, A, cell, dq, radius):
    """Centres (pixels) of the disks of ``img`` and the cell of every pixel.

    Returns ``centres`` (n, 2) and ``owner`` (S, S): the index of the disk
    whose centre is nearest (the pixels of a disk and the dark space around
    it, up to half-way to the next disk).
    """
    S = img.shape[0]
    n = int(np.ceil(S * dq * max(cell))) + 1
    h, k = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    g = np.stack([h.ravel() / cell[0], k.ravel() / cell[1]], 1)  # A^-1
    c = origin + (g @ np.asarray(A).T) / dq
    inside = np.all((c > -radius) & (c < S - 1 + radius), 1)
    c = c[inside]
    yy, xx = np.mgrid[:S, :S]
    d = np.hypot(yy[None] - c[:, None, None, 0], xx[None] - c[:, None, None, 1])
    # lattice points of the cell that hold no disk of their own (extinct
    # reflections) lie closer than a disk diameter to bright ones and would
    # take their edges: accept disks brightest first, none overlapping one
    # already accepted, so every accepted disk is a real, separate one
    frac = ((d <= radius) * img[None]).sum((1, 2)) / img.sum()
    kept: list[int] = []
    for i in np.argsort(-frac, kind="stable"):
        if frac[i] <= MIN_DISK_FRACTION:
            break
        if all(np.hypot(*(c[i] - c[j])) >= 2 * radius for j in kept):
            kept.append(i)
    return c[kept], d[kept].argmin(0)


def derivatives(img, origin, A, cell, dq, radius):
    """d img / d p for p = (e_xx, e_yy, e_xy, rotation, origin row, origin col).

    Every pixel moves with its disk (:func:`_disks`): ``d img = -grad(img) .
    d c`` with ``d c = dM (c - o)``. The gradient is the central difference,
    which for pixel-integrated intensities is the change of a pixel under a
    shift of the pattern (the intensity entering one side less the intensity
    leaving the other, each estimated as the mean of the two pixels that
    share the side); on sharp disk edges it underestimates the change, so
    the detector-pixel bound is conservative (see the module notes).
    """
    centres, owner = _disks(img, origin, A, cell, dq, radius)
    gens = [
        -np.array([[1.0, 0.0], [0.0, 0.0]]),
        -np.array([[0.0, 0.0], [0.0, 1.0]]),
        -np.array([[0.0, 1.0], [1.0, 0.0]]),
        np.array([[0.0, -1.0], [1.0, 0.0]]),
    ]
    rel = centres[owner] - origin  # (S, S, 2): each pixel's disk centre
    moves = [rel @ G.T for G in gens] + [np.ones_like(rel) * e for e in np.eye(2)]
    gr, gc = np.gradient(img)
    # a disk moved by dc: img(q - dc), so d img = -grad . dc
    return np.array([-(gr * m[..., 0] + gc * m[..., 1]) for m in moves]), len(centres)


def bounds(name: str, levels, positions: int, seed: int = 0) -> dict:
    """Standard-deviation bounds per level and sampling (strain fractions)."""
    from py4dstem_ccstae.noise import lorentzian_halo

    c = CASES[name]
    lib = np.load(DATA / f"{name}.npz")
    p = plan(name)
    tidx = thickness_index(name)
    dq = float(lib["q_pixel_size"])
    origin = np.asarray(lib["origin"], float)
    energy = c["energy"]
    lam = 12.2643 / np.sqrt(energy * (1 + 0.97845e-6 * energy))
    radius = c["alpha"] * 1e-3 / lam / dq
    cell = np.asarray(c["cell_xy"], float)
    crystal = np.argwhere(p["phase"] == 0)
    rng = np.random.default_rng(seed)
    picks = crystal[rng.choice(len(crystal), min(positions, len(crystal)), replace=False)]
    shape = lib["patterns"].shape[2:]
    halo = lorentzian_halo(shape)
    counts = 1e5
    cache, ndisks = [], []
    for rx, ry in picks:
        img = np.asarray(lib["patterns"][p["entry"][rx, ry], tidx[rx, ry]], float)
        d, nd = derivatives(img, origin, p["A"][rx, ry], cell, dq, radius)
        cache.append((img, d / img.sum(), img.sum()))
        ndisks.append(nd)
    out = {"disks": float(np.median(ndisks)), "levels": {}}
    for level in levels:
        w = level / 100.0
        row = {}
        for label, k in (("detector", 1), ("binned_2x2", 2)):
            var = []
            for img, dimg, total in cache:
                lam_j = _bin(counts * ((1 - w) * img / total + w * halo), k).ravel()
                D = _bin(counts * (1 - w) * dimg, k).reshape(dimg.shape[0], -1)
                F = (D / np.maximum(lam_j, 1e-12)) @ D.T
                var.append(np.diag(np.linalg.pinv(F))[:3])
            sd = np.sqrt(np.mean(var, 0))
            row[label] = {comp: float(v) for comp, v in zip(COMPONENTS, sd, strict=True)}
        out["levels"][level] = row
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Per-pattern Cramer-Rao bound on the multislice scans",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"git {result['git']}; {result['positions']} crystal positions per case; "
        f"measured MAE from `multislice.json` (default rows; git "
        f"{result['multislice_git']}).",
        "",
        "MAE x1e-3, e_xx / e_yy / e_xy. 'bound': 0.798 x the Cramer-Rao standard "
        "deviation of an unbiased per-pattern estimator that knows every disk's "
        "noise-free interior (rigid disks; a lower estimate, see the script), on the "
        "128x128 detector pixels and with "
        "2x2 pixels summed (about the CC-ST-AE's 64x64 inputs). 'x bound': measured "
        "mean strain MAE / mean 2x2 bound. Clean data has no noise, so no bound.",
        "",
    ]
    for case, r in result["cases"].items():
        lines += [
            f"## {case}",
            "",
            f"Disks in the bound (median per pattern): {r['disks']:g}.",
            "",
            "| noise % | bound (detector) | bound (2x2) | CC-ST-AE | x bound | "
            "py4DSTEM | x bound | 0.6 x py4DSTEM (mean) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:

            def f(d):
                return " / ".join(f"{1e3 * d[comp]:.2f}" for comp in COMPONENTS)

            b2 = np.mean([row["bound_binned_2x2"][comp] for comp in COMPONENTS])

            def m(d):
                if d is None:
                    return None
                return float(np.mean([d[comp] for comp in COMPONENTS]))

            cc, p4 = m(row["ccstae"]), m(row["py4dstem"])
            lines.append(
                f"| {row['noise']:g} | {f(row['bound_detector'])} | "
                f"{f(row['bound_binned_2x2'])} | "
                f"{'-' if cc is None else f(row['ccstae'])} | "
                f"{'-' if cc is None else f'{cc / b2:.2f}'} | "
                f"{'-' if p4 is None else f(row['py4dstem'])} | "
                f"{'-' if p4 is None else f'{p4 / b2:.2f}'} | "
                f"{'-' if p4 is None else f'{1e3 * 0.6 * p4:.2f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from _meta import run_meta, write

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="+", default=None, help="cases (default: all run)")
    ap.add_argument("--positions", type=int, default=40, help="crystal positions per case")
    ap.add_argument("--out", default="docs/benchmark_results", help="output folder")
    args = ap.parse_args(argv)
    out = Path(args.out)
    ms = json.loads((out / "multislice.json").read_text())
    measured = {}
    for r in ms["rows"]:
        measured[(r["case"], r["noise"], r["method"])] = {
            comp: r[f"mae_{comp}"] for comp in COMPONENTS
        }
    cases = args.case or [c for c in CASES if any(k[0] == c for k in measured)]
    result = {
        **run_meta("multislice_crlb.py", argv),
        "positions": args.positions,
        "multislice_git": ms.get("git", "unknown"),
        "cases": {},
    }
    for name in cases:
        levels = sorted({k[1] for k in measured if k[0] == name and k[1] > 0})
        sd = bounds(name, levels, args.positions)
        rows = []
        for level in levels:
            b = sd["levels"][level]
            rows.append(
                {
                    "noise": level,
                    "bound_detector": {k: MAE_PER_SD * v for k, v in b["detector"].items()},
                    "bound_binned_2x2": {
                        k: MAE_PER_SD * v for k, v in b["binned_2x2"].items()
                    },
                    "ccstae": measured.get((name, level, "CC-ST-AE")),
                    "py4dstem": measured.get((name, level, "py4DSTEM")),
                }
            )
        result["cases"][name] = {"disks": sd["disks"], "rows": rows}
        print(f"{name}: done", flush=True)
    write(out, "multislice_crlb", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
