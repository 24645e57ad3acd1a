"""abTEM multislice worker: diffraction patterns of deformed crystals.

Runs in a virtual environment of its own (abTEM is GPL-3 and needs numpy>=2,
py4DSTEM pins numpy<2; ``benchmarks/multislice/make_venv.sh``); it imports
only abTEM, ase and numpy, never ``py4dstem_ccstae``. Driven by
``benchmarks/multislice.py``, which writes the job file and reads the result::

    python abtem_worker.py JOB.json OUT.npz [--part I --parts N]

Geometry (every pattern has the same reciprocal pixel, no resampling)
---------------------------------------------------------------------
Each job is one deformation gradient ``F`` (2x2, real space, acting on the
in-plane atom coordinates ``(x, y)``) and one probe position. The crystal is
a block of the undeformed structure, centred on the box centre, deformed by
``F`` about that centre and cut to a fixed orthogonal box of
``box x box`` A (periodic for abTEM, but the probe sits at the centre, at
least ``box / 2 - 1 nm`` from the cut edges). The far field of the exit wave
then has the fixed pixel ``1 / box`` A^-1, binned ``bin x bin`` (a detector
integrating over its pixels) and cropped to ``size x size`` around k = 0. The
disks of the deformed crystal sit at ``g' = F^-T g``: with abTEM's array axis
0 = x = detector rows (qx) and axis 1 = y = columns (qy), the lattice matrix
of ``py4dstem_ccstae.affine`` (``g_meas = A g_ref``) is ``A = F^-T``.

Output ``OUT.npz``: ``patterns`` float32 ``(n_jobs, n_thickness, size, size)``
(each sums to the fraction of the probe's intensity on the cropped detector;
one per exit plane of ``job["cells"]``), ``q_pixel_size`` (A^-1), ``origin``
(row, column of k = 0 in the cropped pattern), ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _wrap(p: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Positions wrapped into ``[0, cell)`` (a position within 1e-4 A of ``cell`` -> 0)."""
    p = np.mod(p, cell)
    return np.where(np.abs(p - cell) < 1e-4, 0.0, p)


def _unique(p: np.ndarray, tol: float = 0.01) -> np.ndarray:
    """Indices of the first of every group of positions closer than ``tol`` (A)."""
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    return np.array([i for i in range(len(p)) if not (d[i, :i] < tol).any()], int)


def _si_cubic(a: float):
    from ase.build import bulk

    return bulk("Si", "diamond", a=a, cubic=True)


def _si_110(a: float):
    """Si with [110] along z: orthorhombic cell x=[001] (a), y=[1-10] (a/sqrt2)."""
    import ase

    cub = _si_cubic(a) * (2, 2, 2)
    ex = np.array([0.0, 0.0, 1.0])
    ey = np.array([1.0, -1.0, 0.0]) / np.sqrt(2)
    ez = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    cell = np.array([a, a / np.sqrt(2), a / np.sqrt(2)])
    p = _wrap(cub.positions @ np.stack([ex, ey, ez], 1), cell)
    p = p[_unique(p)]
    return ase.Atoms("Si" * len(p), positions=p, cell=np.diag(cell), pbc=True)


def _mx2(formula: str, a: float, thickness: float):
    """2H monolayer, rectangular cell (a, a sqrt3), metal at z = 0 + vacuum."""
    from ase.build import mx2

    layer = mx2(formula=formula, kind="2H", a=a, thickness=thickness, vacuum=2.0)
    # hexagonal cell a1 = a(1, 0), a2 = a(-1/2, sqrt3/2) -> rectangular (a, a sqrt3)
    rect = layer * (1, 2, 1)
    cell = np.array([a, a * np.sqrt(3), rect.cell[2, 2]])
    p = rect.positions.copy()
    p[:, :2] = _wrap(p[:, :2], cell[:2])
    keep = _unique(p)
    rect = rect[keep]
    rect.positions = p[keep]
    rect.set_cell(np.diag(cell))
    return rect


CRYSTALS = {
    "Si001": lambda: _si_cubic(5.431),
    "Si110": lambda: _si_110(5.431),
    "MoS2": lambda: _mx2("MoS2", 3.16, 3.17),
    "WS2": lambda: _mx2("WS2", 3.153, 3.14),
    "MoSe2": lambda: _mx2("MoSe2", 3.29, 3.34),
}


def deformed_atoms(crystal: str, F: np.ndarray, box: float, depth: float, shift):
    """Atoms of ``crystal`` deformed by ``F`` about the box centre, cut to the box.

    ``depth`` (A) is the thickness cut along z (a whole number of cells is
    taken first); ``shift`` (A, 2) moves the undeformed lattice before the
    deformation, i.e. moves the probe within the unit cell.
    """
    import ase

    unit = CRYSTALS[crystal]()
    cell = np.diag(unit.cell)
    reach = box * 0.75 * 1.2 + 2 * cell[:2].max()
    n = [int(np.ceil(2 * reach / c)) for c in cell[:2]]
    nz = max(1, int(np.ceil(depth / cell[2] - 1e-6)))
    block = unit * (n[0], n[1], nz)
    pos = block.positions.copy()
    centre = np.array([n[0] * cell[0], n[1] * cell[1]]) / 2.0
    pos[:, :2] -= centre - np.asarray(shift, float)
    pos[:, :2] = pos[:, :2] @ np.asarray(F, float).T + box / 2.0
    keep = (
        (pos[:, 0] >= 0)
        & (pos[:, 0] < box)
        & (pos[:, 1] >= 0)
        & (pos[:, 1] < box)
        & (pos[:, 2] < depth + 1e-6)
    )
    return ase.Atoms(
        numbers=block.numbers[keep],
        positions=pos[keep],
        cell=[box, box, max(depth, cell[2])],
        pbc=True,
    )


def simulate(job: dict, entry: dict) -> np.ndarray:
    """Patterns (n_thickness, size, size) of one deformation and probe position.

    ``entry["crystal"]`` (default ``job["crystal"]``) names the structure,
    ``"vacuum"`` for the probe alone; ``job["cells"]`` lists the exit planes
    in unit cells along the beam, ``job["slices_per_cell"]`` the slicing.
    """
    import abtem

    box, sampling = float(job["box"]), float(job["sampling"])
    crystal = entry.get("crystal", job["crystal"])
    probe = abtem.Probe(
        energy=float(job["energy"]),
        semiangle_cutoff=float(job["alpha"]),
        extent=box,
        sampling=sampling,
    )
    cells = [int(k) for k in job["cells"]]
    if crystal == "vacuum":
        wave = probe.build(np.array([box / 2.0, box / 2.0]))
        arr = np.asarray(wave.diffraction_patterns(max_angle=None).compute().array)
        arr = arr.reshape((1,) + arr.shape[-2:])
        return np.repeat(np.stack([_detector(a, job) for a in arr]), len(cells), axis=0)
    cell_z = float(np.diag(CRYSTALS[crystal]().cell)[2])
    per_cell = int(job["slices_per_cell"])
    depth = max(cells) * cell_z
    atoms = deformed_atoms(crystal, np.array(entry["F"]), box, depth, entry["shift"])
    planes = tuple(k * per_cell - 1 for k in cells)
    pot = abtem.Potential(
        atoms,
        sampling=sampling,
        slice_thickness=cell_z / per_cell,
        projection="infinite",
        exit_planes=planes,  # a tuple: plane indices (an int means "every n")
    )
    probe.grid.match(pot)
    waves = probe.multislice(pot, scan=np.array([[box / 2.0, box / 2.0]]))
    dp = waves.diffraction_patterns(max_angle=None)
    arr = np.asarray(dp.array if not hasattr(dp, "compute") else dp.compute().array)
    arr = arr.reshape((-1,) + arr.shape[-2:])
    return np.stack([_detector(a, job) for a in arr])


def _crop(job: dict, N: int) -> tuple[float, int]:
    """k = 0 in binned pixels and the first binned pixel kept, for an N x N far field."""
    b, size = int(job["bin"]), int(job["size"])
    k0 = (N // 2 - (b - 1) / 2.0) / b  # fftshifted: k = 0 at pixel N // 2
    return k0, int(round(k0 - size / 2.0))


def _detector(pattern: np.ndarray, job: dict) -> np.ndarray:
    """Bin ``bin x bin`` and crop ``size x size`` around k = 0 (fftshifted input)."""
    b, size = int(job["bin"]), int(job["size"])
    N = pattern.shape[0]
    binned = pattern[: N - N % b, : N - N % b].reshape(N // b, b, N // b, b).sum((1, 3))
    _, start = _crop(job, N)
    return binned[start : start + size, start : start + size].astype(np.float32)


def origin(job: dict) -> tuple[float, float]:
    """(row, column) of k = 0 in the cropped patterns (binned pixels)."""
    k0, start = _crop(job, int(round(job["box"] / job["sampling"])))
    return (k0 - start, k0 - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job")
    ap.add_argument("out")
    ap.add_argument("--part", type=int, default=0)
    ap.add_argument("--parts", type=int, default=1)
    args = ap.parse_args()
    import abtem
    import dask

    abtem.config.set({"device": "cpu", "fft": "fftw", "fftw.threads": 1})
    dask.config.set(scheduler="synchronous")
    job = json.loads(open(args.job).read())
    entries = job["entries"][args.part :: args.parts]
    t0 = time.perf_counter()
    out = np.stack([simulate(job, e) for e in entries])
    np.savez(
        args.out,
        patterns=out,
        q_pixel_size=1.0 / (job["box"] / job["bin"]),
        origin=np.asarray(origin(job)),
        seconds=time.perf_counter() - t0,
    )


if __name__ == "__main__":
    main()
