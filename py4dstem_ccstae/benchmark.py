"""Side-by-side benchmark: CC-ST-AE vs py4DSTEM's pipeline on simulated data.

The paper's Figure 3 protocol (Qin, Tran & Agar 2023): one simulated Si
polycrystal, the paper's Poisson background noise added at each level, both
methods run in the same process on identical data, MAE over all scan positions
against the ground truth. Two extra cases, reported separately:

* **full rotation**: grains rotated over the whole symmetry-distinct range
  (``polycrystal(..., rotation_range="full")``), noise-free; the theta error is
  taken modulo the lattice's in-plane symmetry (``strain_errors(symmetry=n)``).
* **dynamical**: Bloch-wave disks (``polycrystal(..., dynamical=True)``) at
  0 % and 25 % noise.

:func:`run_benchmark` computes everything (wall time and peak memory of each
method included) and returns a :class:`BenchmarkResult`; :func:`write_results`
writes it as a Markdown table, CSV, JSON, a plot of MAE vs noise next to the
paper's numbers (:data:`PAPER_MAE`) and a Figure-2-style panel of strain maps
and histograms. The result type and the reporting live in
:mod:`~py4dstem_ccstae.benchmark_report`; their names are re-exported here.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import platform
import resource
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .benchmark_report import (  # re-exported: the benchmark's results and reports
    _MAE,
    KEYS,
    METHODS,
    OUTPUT_FILES,
    PAPER_LEVELS,
    PAPER_MAE,
    BenchmarkResult,
    existing_outputs,
    plot_mae_vs_noise,
    plot_strain_maps,
    write_results,
)

__all__ = [
    "BenchmarkResult",
    "DYNAMICAL_LEVELS",
    "FIGURE_LEVEL",
    "PAPER_LEVELS",
    "PAPER_MAE",
    "QUICK",
    "OUTPUT_FILES",
    "run_benchmark",
    "write_results",
    "existing_outputs",
    "plot_mae_vs_noise",
    "plot_strain_maps",
]

#: Settings of ``--quick`` (CI): small scan, three levels, small extra cases.
QUICK: dict = {"scan": 8, "levels": (0.0, 25.0, 50.0), "dynamical_grains": 4}

#: Noise levels (%) of the dynamical case, and the level of the Figure-2 panel.
DYNAMICAL_LEVELS: tuple[float, ...] = (0.0, 25.0)
FIGURE_LEVEL = 25.0
PATTERN_SHAPE = (128, 128)


# ----------------------------------------------------------------- measuring
def _rss_now_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class _PeakRSS:
    """Peak resident memory (MB) of this process while the block runs.

    Sampled every ``interval`` s from ``/proc/self/statm``; where that is not
    available, the process's lifetime maximum (``ru_maxrss``) is reported.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = _rss_now_mb()
            if now is not None:
                self.peak = max(self.peak, now)

    def __enter__(self) -> _PeakRSS:
        now = _rss_now_mb()
        if now is not None:
            self.peak = now
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            return
        self._stop.set()
        self._thread.join()
        now = _rss_now_mb()
        if now is not None:
            self.peak = max(self.peak, now)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide py4DSTEM's own progress bars (written to stderr) and warnings.

    The benchmark's progress bar was created before and keeps the real stderr.
    """
    import warnings

    with (
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def _run_method(method: str, dc, truth, reference, symmetry: int, config: dict, seed: int):
    """Run one method; returns (row fields, strain RealSlice or None)."""
    from .baseline import py4dstem_strain
    from .estimator import CCSTAE
    from .metrics import strain_errors

    n = int(np.prod(dc.data.shape[:2]))
    rs, err, lock = None, "", {"attempts": float("nan"), "sensitivity": float("nan")}
    t0 = time.perf_counter()
    with _PeakRSS() as rss:
        try:
            with _quiet():
                if method == "CC-ST-AE":
                    model = CCSTAE(**config)
                    inputs = model.prepare(dc)  # read once, for fit and the map
                    model.fit(inputs, seed=seed, progress=False)
                    rs = model.strain_map(inputs, reference=reference)
                    lock = {
                        "attempts": len(model.fitted_["attempts"]),
                        "sensitivity": model.fitted_["encoder_sensitivity"]["mean"],
                    }
                else:
                    rs = py4dstem_strain(dc, reference=reference)
        except Exception as exc:  # a failing method is a result, not a crash
            err = f"{type(exc).__name__}: {exc}".splitlines()[0]
            traceback.print_exc(limit=3)
    sec = time.perf_counter() - t0
    row = {k: float("nan") for k in _MAE.values()}
    row["valid_fraction"] = float("nan")
    if rs is not None:
        e = strain_errors(rs, truth, symmetry=symmetry)
        row = {v: e[v] for v in _MAE.values()}
        row["valid_fraction"] = e["valid_fraction"]
    row.update(
        theta_symmetry=symmetry,
        positions=n,
        seconds=sec,
        patterns_per_s=n / sec if sec > 0 else float("nan"),
        peak_rss_mb=rss.peak,
        **lock,
        error=err,
    )
    return row, rs


def _versions() -> dict:
    import py4DSTEM
    import torch

    from . import __version__

    commit = "unknown"
    here = Path(__file__).resolve().parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode == 0:
            commit = head.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if dirty.stdout.strip():
                commit += " + uncommitted changes"
    return {
        "py4dstem_ccstae": __version__,
        "git_commit": commit,
        "py4DSTEM": py4DSTEM.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), "
        f"torch threads {torch.get_num_threads()}",
    }


def _levels(levels) -> tuple[float, ...]:
    out = tuple(float(v) for v in levels)
    if any(not (0.0 <= v <= 100.0) for v in out):
        raise ValueError(f"noise levels must be in [0, 100] %, got {out}")
    return tuple(dict.fromkeys(out))


def run_benchmark(
    scan: int = 64,
    levels: Sequence[float] = PAPER_LEVELS,
    *,
    seed: int = 0,
    rotation: bool = True,
    dynamical: bool = True,
    dynamical_levels: Sequence[float] = DYNAMICAL_LEVELS,
    dynamical_grains: int | None = None,
    figure_level: float = FIGURE_LEVEL,
    ccstae_config: dict | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Run CC-ST-AE and py4DSTEM on identical simulated data.

    Parameters
    ----------
    scan : int
        Scan size ``scan x scan`` of every case (patterns are 128 x 128).
    levels : sequence of float
        Background-noise percentages of the noise sweep (may be empty).
    seed : int
        Seed of the simulation, the noise and the CC-ST-AE training.
    rotation : bool
        Run the full-rotation case (noise-free).
    dynamical : bool
        Run the dynamical (Bloch-wave) case at ``dynamical_levels``.
    dynamical_levels : sequence of float
        Noise percentages of the dynamical case.
    dynamical_grains : int, optional
        Grains in the dynamical case (each grain costs one Bloch-wave
        calculation); None: as many as the other cases (the simulator's
        default).
    figure_level : float
        The Figure-2 panel shows the noise-sweep level nearest to this.
    ccstae_config : dict, optional
        Overrides of :data:`py4dstem_ccstae.estimator.DEFAULT_CONFIG`.
    progress : bool
        Show a tqdm progress bar (one step per simulation and method run).

    Returns
    -------
    BenchmarkResult
    """
    from tqdm.auto import tqdm

    from .baseline import DEFAULT_BASELINE_PARAMS
    from .estimator import CCSTAE, DEFAULT_CONFIG
    from .simulate import add_background_noise, polycrystal

    levels = _levels(levels)
    dyn_levels = _levels(dynamical_levels) if dynamical else ()
    config = dict(ccstae_config or {})
    CCSTAE(**config)  # reject unknown options before hours of work

    cases = _cases(levels, rotation, dyn_levels, dynamical_grains)
    fig_level = min(levels, key=lambda v: abs(v - figure_level)) if levels else None
    counts = inspect.signature(add_background_noise).parameters["counts"].default

    settings = {
        "scan": [scan, scan],
        "pattern_shape": list(PATTERN_SHAPE),
        "seed": seed,
        "noise_levels": list(levels),
        "noise_model": f"add_background_noise(percent, counts={counts:g}, seed={seed})",
        "cases": {},
        "figure_level": fig_level,
        "ccstae_config": {**DEFAULT_CONFIG, **config},
        "baseline_params": dict(DEFAULT_BASELINE_PARAMS),
        "reference": "truth slice 'reference' (the zero-strain grain 0)",
    }
    total = sum(1 + 2 * len(lv) for _, _, lv in cases)
    bar = tqdm(total=total, desc="benchmark", unit="step", disable=not progress)
    rows: list[dict] = []
    figure = None
    t_start = time.perf_counter()
    try:
        for case, kw, case_levels in cases:
            bar.set_description(f"{case}: simulating")
            sim_kw = dict(
                scan_shape=(scan, scan), pattern_shape=PATTERN_SHAPE, seed=seed, **kw
            )
            with _quiet():
                clean, truth = polycrystal(**sim_kw)
            bar.update(1)
            sim = truth.metadata["simulation"]
            symmetry = int(sim["symmetry"]) if case == "full rotation" else 1
            settings["cases"][case] = _case_settings(sim, sim_kw, case_levels, symmetry)
            ref = truth.get_slice("reference").data.astype(bool)
            for level in case_levels:
                dc = add_background_noise(clean, level, seed=seed) if level else clean
                maps = {}
                for method in METHODS:
                    bar.set_description(f"{case} {level:g} %: {method}")
                    row, rs = _run_method(method, dc, truth, ref, symmetry, config, seed)
                    rows.append({"case": case, "noise": level, "method": method, **row})
                    maps[method] = rs
                    bar.update(1)
                if case == "noise sweep" and level == fig_level:
                    figure = _figure_data(clean, dc, truth, maps, level)
                del dc
            del clean
    finally:
        bar.close()
    meta = {"versions": _versions(), "total_seconds": time.perf_counter() - t_start}
    return BenchmarkResult(rows=rows, settings=settings, figure=figure, meta=meta)


def _cases(
    levels: tuple[float, ...],
    rotation: bool,
    dynamical_levels: tuple[float, ...],
    dynamical_grains: int | None,
) -> list[tuple[str, dict, tuple[float, ...]]]:
    """The cases to run: (name, extra ``polycrystal`` arguments, noise levels in %)."""
    cases: list[tuple[str, dict, tuple[float, ...]]] = []
    if levels:
        cases.append(("noise sweep", {}, levels))
    if rotation:
        cases.append(("full rotation", {"rotation_range": "full"}, (0.0,)))
    if dynamical_levels:
        kw: dict = {"dynamical": True}
        if dynamical_grains is not None:
            kw["num_grains"] = int(dynamical_grains)
        cases.append(("dynamical", kw, dynamical_levels))
    return cases


def _case_settings(
    sim: dict, sim_kw: dict, levels: tuple[float, ...], symmetry: int
) -> dict:
    """What a case ran: the simulator call and record, noise levels (%), theta symmetry."""
    return {
        "description": _describe(sim),
        "simulation": "polycrystal("
        + ", ".join(f"{k}={v!r}" for k, v in sim_kw.items())
        + ")",
        "num_grains": int(sim["num_grains"]),
        "rotation_range": sim["rotation_range"],
        "dynamical": bool(sim["dynamical"]),
        "thickness_A": float(sim["thickness"]) if sim["dynamical"] else None,
        "noise_levels": list(levels),
        "theta_symmetry": symmetry,
    }


def _describe(sim: dict) -> str:
    """One line on a simulated case, from the simulator's own parameter record."""
    rot = sim["rotation_range"]
    rot = (
        "rotations over the whole symmetry-distinct range"
        if rot == "full"
        else f"rotations within +-{float(rot):g} deg"
    )
    disks = (
        f"Bloch-wave (dynamical) disks, thickness {float(sim['thickness']):g} A"
        if sim["dynamical"]
        else "kinematic disks"
    )
    return (
        f"{sim['material']}, {disks}, {int(sim['num_grains'])} grains, strain and "
        f"shear within +-{100 * float(sim['strain_range']):g} %, {rot}"
    )


def _figure_data(clean, noisy, truth, maps: dict, level: float) -> dict:
    """Arrays for :func:`plot_strain_maps` (copies: the data cubes can go)."""
    Rx, Ry = clean.data.shape[:2]
    grain = truth.get_slice("grain").data
    # sample pattern: the scan position nearest the centre outside the reference grain
    cand = np.argwhere(grain != 0)
    if len(cand) == 0:
        cand = np.argwhere(np.ones_like(grain, bool))
    i, j = cand[np.argmin(np.hypot(cand[:, 0] - Rx / 2, cand[:, 1] - Ry / 2))]
    sl = {}
    for name, rs in (("truth", truth), *maps.items()):
        if rs is None:
            continue
        sl[name] = {k: np.array(rs.get_slice(k).data, dtype=np.float64) for k in KEYS}
    return {
        "noise": level,
        "position": (int(i), int(j)),
        "clean": np.array(clean.data[i, j], dtype=np.float64),
        "noisy": np.array(noisy.data[i, j], dtype=np.float64),
        "grain": np.array(grain),
        "maps": sl,
    }
