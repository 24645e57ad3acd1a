"""Multislice benchmark: CC-ST-AE against py4DSTEM on abTEM-simulated scans.

Data that none of the package's own simulator made: every pattern is an abTEM
multislice simulation (``benchmarks/multislice/abtem_worker.py``, run in its own
virtual environment, ``benchmarks/multislice/make_venv.sh``) of a crystal
deformed by a known deformation gradient ``F``, so the labels are exact
(``A = F^-T``, :class:`py4dstem_ccstae.affine.LatticeTransform`).

Run from the repository root::

    bash benchmarks/multislice/make_venv.sh      # abTEM in benchmarks/multislice/.venv
    python benchmarks/multislice.py generate [--case NAME ...]   # abTEM, cached
    python benchmarks/multislice.py run [--case NAME ...] [--levels 0 10 25 50 60 70]

(``ABTEM_PYTHON`` names another interpreter with abTEM 1.0.11.)

``generate`` writes the pattern library of each case to
``benchmarks/multislice/data/NAME.npz`` (unique patterns: one per grain, probe
position in the unit cell and thickness); ``run`` assembles the scans from it
(grain map, per-position probe position and thickness), adds the paper's
background noise (``add_background_noise``, 1e5 counts, seed 0), runs the
CC-ST-AE with its defaults and py4DSTEM's pipeline (tuned once per case on the
clean scan, then fixed), and writes ``multislice.json`` and ``multislice.md``
to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from py4dstem_ccstae.affine import STRAIN_KEYS as KEYS

HERE = Path(__file__).resolve().parent / "multislice"
DATA = HERE / "data"
VENV_PYTHON = Path(os.environ.get("ABTEM_PYTHON", HERE / ".venv" / "bin" / "python"))

SI_A = 5.431
_SI001 = dict(crystal="Si001", symmetry=4, cell_xy=(SI_A, SI_A), slices_per_cell=4)
_SI110 = dict(crystal="Si110", symmetry=2, cell_xy=(SI_A, SI_A / 2**0.5), slices_per_cell=2)
_MOS2 = dict(crystal="MoS2", symmetry=6, cell_xy=(3.16, 3.16 * 3**0.5), slices_per_cell=8)
_200KV = dict(energy=200e3, alpha=3.0, box=80.0)
_GRAINS = dict(kind="grains", grains=12, strain=0.02, probe_positions=3, vacuum=None)
#: A monolayer flake of grains with vacuum around it, 80 kV, one cell thick.
_FLAKE = dict(
    **{**_GRAINS, "vacuum": "outside_disk"},
    energy=80e3,
    alpha=5.0,
    box=80.0,
    scan=(48, 48),
    rotation=(-5.0, 5.0),
    cells=(1,),
    thickness_map="flat",
)

#: The benchmark's cases. ``cells``: exit planes in unit cells along the beam
#: (the scan's thickness varies over them, ``thickness_map``); ``rotation``:
#: per-grain range in degrees; ``vacuum``: ``"outside_disk"`` puts the
#: crystal in a disk (a flake) with vacuum (the probe alone) around it.
CASES = {
    # cubic [001], ~10 nm, thickness ramp of 4 unit cells across the scan
    "Si001_grains": dict(
        **_SI001,
        **_200KV,
        **_GRAINS,
        scan=(64, 64),
        rotation=(-5.0, 5.0),
        cells=(17, 18, 19, 20, 21),
        thickness_map="ramp",
        seed=1,
    ),
    # the same crystal at one thickness (9.8 nm)
    "Si001_grains_flat": dict(
        **_SI001,
        **_200KV,
        **_GRAINS,
        scan=(64, 64),
        rotation=(-5.0, 5.0),
        cells=(18,),
        thickness_map="flat",
        seed=1,
    ),
    # cubic [001], 5-7 nm, grains at every orientation
    "Si001_full_rotation": dict(
        **_SI001,
        **_200KV,
        **_GRAINS,
        scan=(64, 64),
        rotation=(-45.0, 45.0),
        cells=(10, 11, 12, 13),
        thickness_map="ramp",
        seed=2,
    ),
    # cubic [110] (2-fold), 20-26 nm
    "Si110_grains": dict(
        **_SI110,
        **_200KV,
        **_GRAINS,
        scan=(64, 64),
        rotation=(-5.0, 5.0),
        cells=(52, 55, 58, 61, 64, 67),
        thickness_map="ramp",
        seed=3,
    ),
    # hexagonal monolayer flake with vacuum around it, 80 kV
    "MoS2_flake": dict(
        **_MOS2,
        **_FLAKE,
        reference_position=(0.3, 0.3),
        seed=4,
    ),
    # lateral heterostructure: an MoS2 core inside MoSe2 (lattice 4.1 % larger),
    # a flake with vacuum around it, 80 kV; the reference grain in the core
    "MoS2_MoSe2_hetero": dict(
        **_MOS2,
        **_FLAKE,
        reference_position=(0.5, 0.5),
        outer=dict(crystal="MoSe2", a_ratio=3.16 / 3.29, inner_radius=0.6),
        # also with a base for each lattice and the vacuum
        variants=[{"num_bases": 3}],
        seed=6,
    ),
    # cubic [001], 6-7 nm, smooth strain and bending field, one simulation per position
    "Si001_smooth": dict(
        **_SI001,
        **_200KV,
        kind="smooth",
        scan=(24, 24),
        strain=0.01,
        rotation=(-2.0, 2.0),
        probe_positions=1,
        vacuum=None,
        cells=(11, 12, 13),
        thickness_map="ramp",
        seed=5,
    ),
}


def _voronoi(scan, n, rng, reference=(0.18, 0.18)):
    Rx, Ry = scan
    seeds = rng.uniform(0, 1, size=(n, 2)) * np.array([Rx, Ry])
    seeds[0] = (reference[0] * Rx, reference[1] * Ry)
    xx, yy = np.meshgrid(np.arange(Rx) + 0.5, np.arange(Ry) + 0.5, indexing="ij")
    d2 = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    return np.argmin(d2, axis=-1)


def _smooth_field(scan, c):
    """Per-position (e_xx, e_yy, e_xy, theta): smooth waves and a bend."""
    u, v = np.meshgrid(
        np.linspace(0, 1, scan[0]), np.linspace(0, 1, scan[1]), indexing="ij"
    )
    amp, rot = c["strain"], np.deg2rad(c["rotation"][1])
    return np.stack(
        [
            amp * np.sin(2 * np.pi * (0.8 * u + 0.3 * v)),
            amp * np.cos(2 * np.pi * (0.4 * u - 0.7 * v)),
            0.5 * amp * np.sin(np.pi * u) * np.cos(1.5 * np.pi * v),
            rot * np.sin(np.pi * (u + 0.5 * v)),
        ],
        -1,
    )


def plan(name: str) -> dict:
    """Positions, lattice matrices and abTEM jobs of one case.

    Returns ``job`` (the worker's input), ``entry`` (Rx, Ry) the job of every
    position (-1: vacuum, the last job), ``A`` (Rx, Ry, 2, 2) the exact
    lattice matrix of every position, ``phase`` (Rx, Ry) 0 crystal / 1
    vacuum, ``region`` (Rx, Ry) grain index (-1 vacuum), ``reference``.
    """
    from py4dstem_ccstae.affine import LatticeTransform

    c = CASES[name]
    rng = np.random.default_rng(c["seed"])
    Rx, Ry = c["scan"]
    cell = np.asarray(c["cell_xy"], float)
    pos = rng.integers(0, c["probe_positions"], size=(Rx, Ry))
    if c["kind"] == "grains":
        n = c["grains"] + 1
        region = _voronoi(c["scan"], n, rng, c.get("reference_position", (0.18, 0.18)))
        table = np.zeros((n, 4))
        table[1:, :3] = rng.uniform(-c["strain"], c["strain"], size=(n - 1, 3))
        table[1:, 3] = np.deg2rad(rng.uniform(*c["rotation"], size=n - 1))
        A_units = LatticeTransform.from_strain(*table.T).params
        unit_of = region * c["probe_positions"] + pos
        A_units = np.repeat(A_units, c["probe_positions"], axis=0)
        reference = region == 0
    else:
        strain = _smooth_field(c["scan"], c).reshape(-1, 4)
        A_units = LatticeTransform.from_strain(*strain.T).params
        region = np.arange(Rx * Ry).reshape(Rx, Ry)
        unit_of = region.copy()
        reference = np.zeros((Rx, Ry), bool)
        reference[: max(2, Rx // 6), : max(2, Ry // 6)] = True
    shifts = rng.uniform(0, 1, size=(len(A_units), 2)) * cell
    F = np.linalg.inv(A_units).transpose(0, 2, 1)
    entries = [{"F": F[i].tolist(), "shift": shifts[i].tolist()} for i in range(len(F))]
    phase = np.zeros((Rx, Ry), int)
    xx, yy = np.meshgrid(np.linspace(-1, 1, Rx), np.linspace(-1, 1, Ry), indexing="ij")
    lattice = np.zeros((Rx, Ry), int)  # 0: the case's crystal, 1: its outer crystal
    if c.get("outer"):
        # a second crystal outside inner_radius: every unit simulated again in
        # it, its lattice a_ratio times the first's (relative to the first
        # crystal's unstrained lattice: A = A_unit * a_ratio)
        o = c["outer"]
        n_units = len(entries)
        entries += [{**e, "crystal": o["crystal"]} for e in entries]
        A_units = np.concatenate([A_units, A_units * o["a_ratio"]])
        lattice = (np.hypot(xx, yy) > o["inner_radius"]).astype(int)
        unit_of = unit_of + n_units * lattice
        reference &= lattice == 0
    if c["vacuum"] == "outside_disk":
        phase = (np.hypot(xx, yy) > 0.9).astype(int)
        entries.append({"F": np.eye(2).tolist(), "shift": [0.0, 0.0], "crystal": "vacuum"})
        unit_of = np.where(phase == 1, len(entries) - 1, unit_of)
        region = np.where(phase == 1, -1, region)
        reference &= phase == 0
    A = np.where(
        phase[..., None, None] == 1,
        np.eye(2),
        A_units[np.minimum(unit_of, len(A_units) - 1)],
    )
    job = dict(
        crystal=c["crystal"],
        box=c["box"],
        sampling=0.1,
        slices_per_cell=c["slices_per_cell"],
        cells=list(c["cells"]),
        energy=c["energy"],
        alpha=c["alpha"],
        bin=2,
        size=128,
        entries=entries,
    )
    return dict(
        job=job,
        entry=unit_of,
        A=A,
        phase=phase,
        region=region,
        reference=reference,
        lattice=np.where(phase == 1, -1, lattice),
    )


def thickness_index(name: str) -> np.ndarray:
    """(Rx, Ry) exit-plane index of every position: a smooth ramp over ``cells``."""
    c = CASES[name]
    Rx, Ry = c["scan"]
    nt = len(c["cells"])
    if c["thickness_map"] == "flat" or nt == 1:
        return np.zeros((Rx, Ry), int)
    u, v = np.meshgrid(np.linspace(0, 1, Rx), np.linspace(0, 1, Ry), indexing="ij")
    # a wedge: thickness grows linearly across the scan
    return np.clip(np.floor(nt * (0.55 * u + 0.45 * v)), 0, nt - 1).astype(int)


def generate(name: str, parts: int = 2) -> Path:
    """Run abTEM for every job of ``name`` (``parts`` processes); cached."""
    out = DATA / f"{name}.npz"
    if out.exists():
        return out
    DATA.mkdir(parents=True, exist_ok=True)
    p = plan(name)
    job_path = DATA / f"{name}.job.json"
    job_path.write_text(json.dumps(p["job"]))
    print(f"{name}: {len(p['job']['entries'])} abTEM runs in {parts} processes", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                str(VENV_PYTHON),
                str(HERE / "abtem_worker.py"),
                str(job_path),
                str(DATA / f"{name}.part{i}.npz"),
                "--part",
                str(i),
                "--parts",
                str(parts),
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for i in range(parts)
    ]
    if any(pr.wait() for pr in procs):
        raise RuntimeError(f"abTEM worker failed for {name}")
    pieces = [np.load(DATA / f"{name}.part{i}.npz") for i in range(parts)]
    n = len(p["job"]["entries"])
    first = pieces[0]["patterns"]
    patterns = np.empty((n,) + first.shape[1:], np.float32)
    for i, piece in enumerate(pieces):
        patterns[i::parts] = piece["patterns"]
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        patterns=patterns.astype(np.float32),
        q_pixel_size=pieces[0]["q_pixel_size"],
        origin=pieces[0]["origin"],
        seconds=time.perf_counter() - t0,
        job=json.dumps(p["job"]),
    )
    os.replace(tmp, out)
    for i in range(parts):
        (DATA / f"{name}.part{i}.npz").unlink()
    return out


def assemble(name: str):
    """DataCube and truth RealSlice of one case from its pattern library.

    Truth: :meth:`LatticeTransform.strain` of every position's exact lattice
    matrix relative to the median over the reference region (as both methods
    report), slices ``e_xx, e_yy, e_xy, theta, mask, grain, reference,
    phase`` (``phase`` 1: vacuum, whose strain is 0 and which a method
    should report invalid).
    """
    from emdfile import Metadata
    from py4DSTEM import DataCube, RealSlice

    from py4dstem_ccstae.affine import LatticeTransform

    c = CASES[name]
    lib = np.load(DATA / f"{name}.npz")
    p = plan(name)
    tidx = thickness_index(name)
    data = lib["patterns"][p["entry"], tidx]
    Rx, Ry = c["scan"]
    dc = DataCube(data=np.ascontiguousarray(data, dtype=np.float32), name=name)
    cal = dc.calibration
    qpix = float(lib["q_pixel_size"])
    cal.set_Q_pixel_size(qpix)
    cal.set_Q_pixel_units("A^-1")
    cal.set_R_pixel_size(1.0)
    cal.set_R_pixel_units("nm")
    o = lib["origin"]
    cal.set_origin((np.full((Rx, Ry), float(o[0])), np.full((Rx, Ry), float(o[1]))))
    energy = c["energy"]
    lam = 12.2643 / np.sqrt(energy * (1 + 0.97845e-6 * energy))  # A
    cal.set_convergence_semiangle_pixels(float(c["alpha"] * 1e-3 / lam / qpix))

    T = LatticeTransform(p["A"])
    crystal = p["phase"] == 0
    s = T.relative_to(T.reference_from_mask(p["reference"])).strain()
    s = {k: np.where(crystal, v, 0.0) for k, v in s.items()}
    labels = [*KEYS, "mask", "grain", "reference", "phase", "lattice"]
    truth = RealSlice(
        data=np.stack(
            [s[k] for k in KEYS]
            + [crystal.astype(float), p["region"].astype(float)]
            + [p["reference"].astype(float), p["phase"].astype(float)]
            + [p["lattice"].astype(float)]
        ),
        name="truth",
        slicelabels=labels,
    )
    cells = np.asarray(c["cells"])[tidx]
    truth.metadata = Metadata(
        name="simulation",
        data=dict(case=name, cells_min=int(cells.min()), cells_max=int(cells.max())),
    )
    return dc, truth


#: py4DSTEM's pipeline is tuned once per case on the clean scan (every other
#: position, against the truth) over this grid; the best is then kept fixed.
BASELINE_GRID = {
    "corr_power": (1.0, 0.5),
    "sigma": (0.0, 1.0),
    "min_relative_intensity": (0.001, 0.005, 0.02),
}


def score(rs, truth, symmetry: int) -> dict:
    """MAE of a strain map over the crystal (x1, theta in rad), validity."""
    from py4dstem_ccstae.metrics import wrap_angle

    crystal = truth.get_slice("phase").data == 0
    valid = np.asarray(rs.get_slice("mask").data) > 0
    row = {"valid_crystal": float(valid[crystal].mean())}
    if (~crystal).any():
        row["vacuum_invalid"] = float((~valid[~crystal]).mean())
    for k in KEYS:
        est = np.nan_to_num(np.asarray(rs.get_slice(k).data, float))
        err = est - truth.get_slice(k).data
        if k == "theta":
            err = wrap_angle(err, symmetry)
        row[f"mae_{k}"] = float(np.abs(err)[crystal].mean())
    row["mae_strain_mean"] = float(np.mean([row[f"mae_{k}"] for k in KEYS[:3]]))
    if "lattice" in truth.slicelabels:
        outer = truth.get_slice("lattice").data == 1
        if outer.any():
            # the second lattice of a heterostructure: its error, and its
            # mismatch with the reference's lattice (median dilatation)
            for k in KEYS[:3]:
                est = np.nan_to_num(np.asarray(rs.get_slice(k).data, float))
                err = est - truth.get_slice(k).data
                row[f"outer_mae_{k}"] = float(np.abs(err)[outer].mean())
            dil = sum(np.asarray(rs.get_slice(k).data, float) for k in ("e_xx", "e_yy"))
            true_dil = sum(truth.get_slice(k).data for k in ("e_xx", "e_yy"))
            ok = outer & valid
            row["outer_mismatch"] = float(np.median(dil[ok]) / 2) if ok.any() else None
            row["outer_mismatch_true"] = float(np.median(true_dil[outer]) / 2)
    return row


def _subsampled(dc, truth):
    """Every other scan position of a DataCube and its truth (for tuning)."""
    from py4DSTEM import DataCube, RealSlice

    sub = DataCube(data=np.ascontiguousarray(dc.data[::2, ::2]))
    cal = sub.calibration
    c0 = dc.calibration
    cal.set_Q_pixel_size(c0.get_Q_pixel_size())
    cal.set_Q_pixel_units(c0.get_Q_pixel_units())
    ox, oy = c0.get_origin()
    cal.set_origin((np.ascontiguousarray(ox[::2, ::2]), np.ascontiguousarray(oy[::2, ::2])))
    cal.set_convergence_semiangle_pixels(c0.get_convergence_semiangle_pixels())
    t = RealSlice(
        data=np.ascontiguousarray(truth.data[:, ::2, ::2]),
        slicelabels=list(truth.slicelabels),
        name="truth",
    )
    return sub, t


def tune_baseline(dc, truth, symmetry: int) -> tuple[dict, list]:
    """The BASELINE_GRID point with the lowest mean strain MAE on clean data."""
    import itertools

    from py4dstem_ccstae.baseline import py4dstem_strain
    from py4dstem_ccstae.benchmark import _quiet  # py4DSTEM's bars and warnings

    sub, t = _subsampled(dc, truth)
    ref = t.get_slice("reference").data.astype(bool)
    trials = []
    for values in itertools.product(*BASELINE_GRID.values()):
        params = dict(zip(BASELINE_GRID, values, strict=True))
        try:
            with _quiet():
                rs = py4dstem_strain(sub, reference=ref, **params)
            err = score(rs, t, symmetry)["mae_strain_mean"]
        except Exception as exc:  # a setting py4DSTEM cannot run is not chosen
            err = float("inf")
            params["error"] = f"{type(exc).__name__}: {exc}"[:200]
        trials.append({**params, "mae_strain_mean": err})
    best = min(trials, key=lambda r: r["mae_strain_mean"])
    return {k: best[k] for k in BASELINE_GRID}, trials


def run_case(
    name: str, levels, counts: float = 1e5, baseline_rows: list | None = None
) -> list[dict]:
    """Both methods at every noise level of one case (one training per level).

    ``baseline_rows``: py4DSTEM rows of an earlier run (same case, same data,
    same settings) reused instead of tuning and running py4DSTEM again; a
    level missing from them is run.
    """
    from py4dstem_ccstae.baseline import py4dstem_strain
    from py4dstem_ccstae.benchmark import _quiet
    from py4dstem_ccstae.noise import add_background_noise

    clean, truth = assemble(name)
    c = CASES[name]
    sym = c["symmetry"]
    ref = truth.get_slice("reference").data.astype(bool)
    reused = {
        r["noise"]: r
        for r in baseline_rows or []
        if r["case"] == name and r["method"] == "py4DSTEM" and "params" in r
    }
    if reused:
        first = next(iter(reused.values()))
        tuned, trials = first["params"], first.get("tune_trials", [])
        print(f"{name}: py4DSTEM rows reused, settings {tuned}", flush=True)
    else:
        t0 = time.perf_counter()
        tuned, trials = tune_baseline(clean, truth, sym)
        tune_s = time.perf_counter() - t0
        print(f"{name}: py4DSTEM tuned {tuned} in {tune_s:.0f} s", flush=True)
    rows = []
    for level in levels:
        dc = add_background_noise(clean, level, counts=counts, seed=0) if level else clean
        for options in [{}] + list(c.get("variants", [])):
            rows.append(_run_ours(name, level, dc, truth, ref, sym, options))
            print(json.dumps(rows[-1]), flush=True)
        if level in reused:
            rows.append({**reused[level], "reused": True})
            continue
        t0 = time.perf_counter()
        with _quiet():
            try:
                b = py4dstem_strain(dc, reference=ref, **tuned)
                brow = {"case": name, "noise": level, "method": "py4DSTEM"}
                brow.update(score(b, truth, sym))
            except Exception as exc:
                brow = {
                    "case": name,
                    "noise": level,
                    "method": "py4DSTEM",
                    "error": str(exc),
                }
        brow.update(seconds=time.perf_counter() - t0, params=tuned, tune_trials=trials)
        rows.append(brow)
        print(json.dumps({k: v for k, v in brow.items() if k != "tune_trials"}), flush=True)
    return rows


def _run_ours(name, level, dc, truth, ref, sym, options: dict) -> dict:
    """The CC-ST-AE (defaults, or ``options``) on one noisy scan: its row."""
    import warnings

    from py4dstem_ccstae import CCSTAE

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = CCSTAE(**options).fit(dc, seed=0, progress=False)
        fit_s = time.perf_counter() - t0
        rs = model.strain_map(dc, reference=ref)
    ours_s = time.perf_counter() - t0
    label = " ".join(f"{k}={v}" for k, v in options.items())
    row = {
        "case": name,
        "noise": level,
        "method": "CC-ST-AE" + (f" {label}" if label else ""),
    }
    if options:
        row["options"] = options
    row.update(score(rs, truth, sym))
    att = model.fitted_["attempts"]
    row.update(
        seconds=ours_s,
        fit_s=fit_s,
        symmetry_detected=int(model.fitted_["symmetry"]),
        attempts=len(att),
        sensitivity=[round(a["sensitivity"]["mean"], 3) for a in att],
        spots=len(model.fitted_["spots"] or []),
        warnings=sorted(
            {str(w.message)[:120] for w in caught if w.category is not DeprecationWarning}
        ),
    )
    classes = np.asarray(rs.get_slice("class").data, int)
    row["classes"] = int(len(np.unique(classes)))
    row["frames"] = [f is not None for f in model.fitted_.get("base_frames", [])]
    return row


def _cell(row: dict) -> str:
    if "mae_e_xx" not in row:
        return "failed | -"
    strain = " / ".join(f"{1e3 * row[f'mae_{k}']:.2f}" for k in KEYS[:3])
    return f"{strain} | {np.rad2deg(row['mae_theta']):.3f}"


def _mismatch(row: dict) -> str:
    """Measured mismatch and MAE of a heterostructure's second lattice."""
    if row.get("outer_mismatch") is None:
        return "-"
    mae = " / ".join(f"{1e3 * row[f'outer_mae_{k}']:.2f}" for k in KEYS[:3])
    return f"{1e3 * row['outer_mismatch']:.2f}e-3 ({mae})"


def markdown(result: dict) -> str:
    lines = [
        "# Multislice benchmark (abTEM)",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch threads {result['threads']}; git {result['git']}.",
        "",
        "Data: abTEM multislice simulations (`benchmarks/multislice.py`, "
        "`benchmarks/multislice/abtem_worker.py`), 128x128 patterns, "
        f"noise `add_background_noise(level, counts={result['counts']:g}, seed=0)`. "
        "MAE over the crystal positions against the exact lattice (x1e-3: e_xx / "
        "e_yy / e_xy; theta in degrees, modulo the lattice symmetry), both methods "
        "relative to the reference region. CC-ST-AE: defaults, one training per "
        "row (seed 0). py4DSTEM: `baseline.py4dstem_strain`, tuned once per case "
        "on the clean scan against the truth (grid: "
        + ", ".join(f"`{k}` {v}" for k, v in BASELINE_GRID.items())
        + "), then fixed. ratio: CC-ST-AE / py4DSTEM of the mean strain MAE.",
        "",
    ]
    if result.get("baseline_from"):
        b = result["baseline_from"]
        lines += [
            "py4DSTEM rows reused (`--baseline-from`) from the run of "
            f"{b.get('date')} (git {b.get('git')}): the same data, settings and "
            "py4DSTEM 0.14.18, so its numbers and times are those of that run; only "
            "the CC-ST-AE was run again.",
            "",
        ]
    for run in result.get("earlier_runs", []):
        lines += [
            f"Cases from another run (`--append`, `merge`): `{run.get('command')}`, "
            f"{run.get('date')}, git {run.get('git')}.",
            "",
        ]
    for run in [result] + result.get("earlier_runs", []):
        if run.get("recovered"):
            lines += [f"Note on the run of {run.get('date')}: {run['recovered']}.", ""]
    for name in result["cases"]:
        c = CASES[name]
        rows = [r for r in result["rows"] if r["case"] == name]
        if not rows:  # not run yet (the file is written after every case)
            continue
        ours = {r["noise"]: r for r in rows if r["method"] == "CC-ST-AE"}
        base = {r["noise"]: r for r in rows if r["method"] == "py4DSTEM"}
        cells = np.asarray(c["cells"])
        lines += [
            f"## {name}",
            "",
            f"{c['crystal']}, {c['scan'][0]}x{c['scan'][1]} scan, {c['kind']}, "
            f"rotations {c['rotation']} deg, strain within +-{100 * c['strain']:g} %, "
            f"{c['energy'] / 1e3:g} kV, {c['alpha']:g} mrad, thickness "
            f"{cells.min()}-{cells.max()} unit cells ({c['thickness_map']}), "
            f"vacuum: {c['vacuum'] or 'none'}; lattice symmetry {c['symmetry']}. "
            f"py4DSTEM settings: `{next(iter(base.values()))['params']}`.",
            "",
            "| noise % | CC-ST-AE strain | theta | py4DSTEM strain | theta | ratio | "
            "symmetry | attempts (sensitivity) | fit s | py4DSTEM s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        variants = [r for r in rows if r["method"].startswith("CC-ST-AE ")]
        listed = [(lv, "", ours[lv]) for lv in sorted(ours)]
        listed += [
            (r["noise"], f" ({r['method'][len('CC-ST-AE ') :]})", r)
            for r in sorted(variants, key=lambda r: (r["method"], r["noise"]))
        ]
        for lv, label, o in listed:
            b = base.get(lv, {})
            ratio = (
                f"{o['mae_strain_mean'] / b['mae_strain_mean']:.2f}"
                if "mae_strain_mean" in b
                else "-"
            )
            sens = ", ".join(f"{s:.2f}" for s in o["sensitivity"])
            lines.append(
                f"| {lv:g}{label} | {_cell(o)} | {_cell(b)} | {ratio} | "
                f"{o['symmetry_detected']} | {o['attempts']} ({sens}) | {o['fit_s']:.0f} | "
                f"{b.get('seconds', float('nan')):.0f} |"
            )
        if any("vacuum_invalid" in r for r in rows):
            lines += [
                "",
                "Vacuum reported invalid (fraction of vacuum positions with mask 0): "
                + "; ".join(
                    f"{lv:g} %{label}: CC-ST-AE {o.get('vacuum_invalid', np.nan):.2f}, "
                    f"py4DSTEM {base.get(lv, {}).get('vacuum_invalid', np.nan):.2f}"
                    for lv, label, o in listed
                )
                + ".",
            ]
        if any("outer_mismatch_true" in r for r in rows):
            o0 = next(r for r in rows if "outer_mismatch_true" in r)
            lines += [
                "",
                "Second lattice (outside the core; the reference lies in the core): "
                f"true mismatch (median (e_xx + e_yy) / 2) "
                f"{1e3 * o0['outer_mismatch_true']:.2f}e-3; measured, and the MAE "
                "(x1e-3, e_xx / e_yy / e_xy) over the second lattice's positions: "
                + "; ".join(
                    f"{lv:g} %{label}: CC-ST-AE {_mismatch(o)}, py4DSTEM "
                    f"{_mismatch(base.get(lv, {}))}"
                    for lv, label, o in listed
                )
                + ".",
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("generate", "run", "merge"))
    ap.add_argument("files", nargs="*", help="merge: result JSON files of runs")
    ap.add_argument("--case", nargs="*", default=list(CASES))
    ap.add_argument("--levels", type=float, nargs="+", default=[0, 10, 25, 50, 60, 70])
    ap.add_argument("--counts", type=float, default=1e5)
    ap.add_argument("--out", default="docs/benchmark_results")
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the cases already in OUT/multislice.json and run the others",
    )
    ap.add_argument(
        "--baseline-from",
        help="result JSON of an earlier run whose py4DSTEM rows (same data, same "
        "settings, same py4DSTEM) are reused instead of run again",
    )
    args = ap.parse_args(argv)
    if args.command == "generate":
        for name in args.case:
            t0 = time.perf_counter()
            path = generate(name)
            print(f"{name}: {path} ({time.perf_counter() - t0:.0f} s)")
        return 0
    from _meta import run_meta, write

    if args.command == "merge":
        # runs of different cases made side by side: one table, every run named
        parts = [json.loads(Path(f).read_text()) for f in args.files]
        meta = ("command", "date", "git", "machine", "recovered")
        result = {**parts[0], "rows": [], "cases": []}
        result["earlier_runs"] = list(parts[0].get("earlier_runs", []))
        for k, part in enumerate(parts):
            ran = {r["case"] for r in part["rows"]}
            fresh = [c for c in part["cases"] if c in ran and c not in result["cases"]]
            result["cases"] += fresh
            result["rows"] += [r for r in part["rows"] if r["case"] in fresh]
            if k:  # the first run's meta is the header; the others are named
                result["earlier_runs"] += part.get("earlier_runs", [])
                result["earlier_runs"].append({m: part[m] for m in meta if m in part})
        write(Path(args.out), "multislice", result, markdown(result))
        print(markdown(result))
        return 0
    result = {**run_meta("multislice.py", argv), "counts": args.counts, "cases": args.case}
    result["rows"], done = [], set()
    previous = Path(args.out) / "multislice.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        result["earlier_runs"] = old.get("earlier_runs", []) + [
            {
                k: old[k]
                for k in ("command", "date", "git", "machine", "recovered")
                if k in old
            }
        ]
        result["rows"] = old["rows"]
        done = {r["case"] for r in old["rows"]}
        result["cases"] = list(dict.fromkeys(old["cases"] + args.case))
    baseline_rows = None
    if args.baseline_from:
        prior = json.loads(Path(args.baseline_from).read_text())
        baseline_rows = prior["rows"]
        result["baseline_from"] = {
            k: prior[k] for k in ("command", "date", "git") if k in prior
        }
    for name in args.case:
        if name in done:
            continue
        result["rows"] += run_case(name, args.levels, args.counts, baseline_rows)
        # written after every case: a long run keeps what it measured
        write(Path(args.out), "multislice", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
