"""Large data: distributed prediction, big detectors, a big scan on disk.

Run from the repository root::

    python benchmarks/large_data.py [--part distributed big_detectors big_scan throughput]
                                    [--tmp DIR] [--out DIR] [--append]
                                    [--throughput-scan N] [--repeats N]

1. ``distributed``: a 64x64 scan of 128x128 patterns (the simulator's
   polycrystal, 25 % background noise) saved as EMD; a model fitted on it with
   the defaults. ``model.strain_map(path, reference=mask, client=client)`` on a
   ``LocalCluster(n_workers=2, threads_per_worker=1)`` against
   ``model.strain_map(py4DSTEM.read(path), reference=mask)`` in this process:
   the largest difference per slice, masks compared, times (median of 2) and
   patterns/s side by side; then a run in which one worker is killed
   (``SIGKILL``) as soon as the first block task has finished.
2. ``big_detectors``: 48x48 scans of 256x256 patterns (polycrystal, data
   seeds ``--seeds``, default 0 1 2) at 0, 25 and 50 % noise; three models,
   each trained on one input path and mapping the DataCube with it (the
   model records its ``prebin``): the automatic pre-binning (the finest
   factor that brings the supersampling below 4), the coarsest allowed
   factor (``prebin="coarsest"``) and none (``prebin=False``); MAE against
   the truth; ``strain_map`` straight from the DataCube (its input pass
   included), median of 3, side by side.
3. ``big_scan``: a 256x256 scan of 256x256 **uint16** patterns in an EMD file
   on disk (a 64x64 simulation at 25 % noise, tiled 4x4; ~8.6 GB, written to
   ``--tmp``; the noise model's electron counts, integers), mapped with the
   25 % model of part 2 (fitted again if part 2 is not run) from the path: in one
   process (a subprocess, read lazily in row blocks) and on a
   ``LocalCluster`` of 2 workers. Peak RSS is each process's ``VmHWM``
   (``/proc/self/status``): the one-process child, and every worker after
   its run.
4. ``throughput``: where the time goes. A ``--throughput-scan`` (default
   128x128) scan of 256x256 uint16 patterns on disk (written as in part 3,
   2.1 GB), mapped with the model of part 3 from the path, side by side and
   alternating, ``--repeats`` times (default 3): in this process; in this
   process in row blocks (``block_rows=4096 // Ry``); on a ``LocalCluster``
   of 2 workers x 1 thread; and on a second one whose workers keep the
   128 KiB mmap threshold dask's ``MALLOC_TRIM_THRESHOLD_`` leaves them
   (the code before the fix in :mod:`py4dstem_ccstae.distributed`). For the
   clusters, from dask's task stream: the statistics and prediction passes,
   the time outside any task (driver, scheduler, transfers) and the tasks'
   compute; on a worker: the time to open the file (as every task does) and
   to unpickle the model, torch's threads; every worker's peak RSS.

Writes ``large_data.json`` and ``large_data.md`` to ``--out``
(``docs/benchmark_results``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta  # noqa: E402

PARTS = ("distributed", "big_detectors", "big_scan", "throughput")


def _vmhwm_mb() -> float:
    """Peak resident memory (VmHWM) of this process, MB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    return cluster, Client(cluster)


def _mae(rs, truth) -> dict:
    from py4dstem_ccstae.metrics import strain_errors

    return {k: float(v) for k, v in strain_errors(rs, truth).items()}


def _fit(dc, **kw):
    from py4dstem_ccstae import CCSTAE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CCSTAE(**kw).fit(dc, seed=0, progress=False)


# ------------------------------------------------------------- 1 distributed
def distributed_part(tmp: Path) -> dict:
    import py4DSTEM

    import py4dstem_ccstae.distributed as dist
    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    clean, truth = polycrystal(scan_shape=(64, 64), seed=0)
    dc = add_background_noise(clean, 25, seed=0)
    path = tmp / "scan64.h5"
    py4DSTEM.save(str(path), dc, mode="o")
    ref = truth.get_slice("reference").data.astype(bool)
    model = _fit(dc)
    n = 64 * 64

    def one():
        t0 = time.perf_counter()
        rs = model.strain_map(py4DSTEM.read(str(path)), reference=ref)
        return rs, time.perf_counter() - t0

    cluster, client = _cluster()
    try:
        client.run(lambda: __import__("py4dstem_ccstae.estimator"))  # imports done
        runs_one, runs_dist = [], []
        for _ in range(2):  # side by side, alternating
            rs1, s1 = one()
            runs_one.append(s1)
            t0 = time.perf_counter()
            rs2 = model.strain_map(path, reference=ref, client=client)
            runs_dist.append(time.perf_counter() - t0)
        diff = {
            label: float(
                np.nanmax(np.abs(rs2.get_slice(label).data - rs1.get_slice(label).data))
            )
            for label in rs1.slicelabels
        }
        masks_equal = bool(
            (rs1.get_slice("mask").data == rs2.get_slice("mask").data).all()
            and (
                np.isnan(rs1.get_slice("e_xx").data) == np.isnan(rs2.get_slice("e_xx").data)
            ).all()
        )
        # a worker killed as soon as the first block has finished
        pids = client.run(os.getpid)
        real, killed = dist._gather, []

        def gather_and_kill(cl, futures, resubmit=None):
            if not killed and len(futures) > 1:
                futures[0].result()
                victim = sorted(pids.values())[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            return real(cl, futures, resubmit)

        dist._gather = gather_and_kill
        try:
            rs3 = model.strain_map(path, reference=ref, client=client, block_rows=4)
        finally:
            dist._gather = real
        kill_diff = float(np.nanmax(np.abs(rs3.data - rs1.data)))
        kill_masks = bool((rs3.get_slice("mask").data == rs1.get_slice("mask").data).all())
    finally:
        client.close()
        cluster.close()
    return {
        "scan": [64, 64],
        "patterns": [128, 128],
        "max_abs_difference": diff,
        "masks_identical": masks_equal,
        "one_process_s": statistics.median(runs_one),
        "two_workers_s": statistics.median(runs_dist),
        "one_process_runs_s": runs_one,
        "two_workers_runs_s": runs_dist,
        "one_process_patterns_per_s": n / statistics.median(runs_one),
        "two_workers_patterns_per_s": n / statistics.median(runs_dist),
        "killed_worker_pid": killed[0] if killed else None,
        "killed_run_max_abs_difference": kill_diff,
        "killed_run_masks_identical": kill_masks,
        "mae_one_process": _mae(rs1, truth),
    }


# ---------------------------------------------------------- 2 big detectors
#: The input paths of the big-detector part: name -> ``prebin``.
PREBIN_PATHS = {"finest": True, "coarsest": "coarsest", "unbinned": False}


def _mean_strain(m: dict) -> float:
    return (m["mae_e_xx"] + m["mae_e_yy"] + m["mae_e_xy"]) / 3.0


def big_detectors_part(tmp: Path, seeds=(0,)) -> tuple[dict, Path]:
    """Pre-binning rules against unbinned inputs, per noise level and data seed.

    Three models per case, each trained on one input path and mapping with
    it (a fitted model prepares a DataCube as it was trained): the automatic
    rule (``prebin=True``: the finest factor that brings the supersampling
    below 4), the coarsest allowed factor (``prebin="coarsest"``, the rule of
    the first version) and no binning (``prebin=False``).
    """
    from py4dstem_ccstae import DiffractionInputs
    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    n = 48 * 48
    rows, model_path = [], tmp / "model256_25.h5"
    for seed in seeds:
        clean, truth = polycrystal(scan_shape=(48, 48), pattern_shape=(256, 256), seed=seed)
        ref = truth.get_slice("reference").data.astype(bool)
        for noise in (0, 25, 50):
            dc = clean if noise == 0 else add_background_noise(clean, noise, seed=seed)
            models = {}
            for path in PREBIN_PATHS:
                if PREBIN_PATHS[path] is True:
                    models[path] = _fit(dc)
                else:
                    opts = models["finest"]._input_options(fitted={})
                    models[path] = _fit(
                        DiffractionInputs.from_datacube(
                            dc, prebin=PREBIN_PATHS[path], **opts
                        )
                    )
            if noise == 25 and seed == seeds[0]:
                models["finest"].save(model_path, overwrite=True)
            times = {path: [] for path in models}
            maps = {}
            for _ in range(3):  # side by side, alternating
                for path, model in models.items():
                    t0 = time.perf_counter()
                    maps[path] = model.strain_map(dc, reference=ref)
                    times[path].append(time.perf_counter() - t0)
            row = {"seed": seed, "noise": noise}
            for path, model in models.items():
                row[path] = {
                    "bin_factor": model.fitted_["bin_factor"],
                    "supersample": DiffractionInputs.from_datacube(
                        dc, **model._input_options()
                    ).supersample,
                    "mae": _mae(maps[path], truth),
                    "fit_s": model.fitted_["train_seconds"],
                    "strain_map_s": statistics.median(times[path]),
                    "patterns_per_s": n / statistics.median(times[path]),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    ratios = {
        path: [
            _mean_strain(r[path]["mae"]) / _mean_strain(r["unbinned"]["mae"]) for r in rows
        ]
        for path in ("finest", "coarsest")
    }
    return {
        "scan": [48, 48],
        "patterns": [256, 256],
        "seeds": list(seeds),
        "paths": dict(PREBIN_PATHS),
        "rows": rows,
        "mean_strain_ratios_over_unbinned": ratios,
    }, model_path


# -------------------------------------------------------------- 3 big scan
_CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
from py4dstem_ccstae import CCSTAE
model = CCSTAE.load(sys.argv[1])
t0 = time.perf_counter()
rs = model.strain_map(sys.argv[2])
s = time.perf_counter() - t0
status = open("/proc/self/status").read().splitlines()
hwm = [int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": s, "peak_rss_mb": hwm,
                  "valid": float(rs.get_slice("mask").data.mean())}))
"""


def _write_big(path: Path, big: int) -> None:
    import h5py
    import py4DSTEM

    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    counts = 1e5
    clean, _ = polycrystal(scan_shape=(64, 64), pattern_shape=(256, 256), seed=1)
    noisy = add_background_noise(clean, 25, counts=counts, seed=1)
    # back to the electron counts the noise model drew (it rescales each
    # pattern to its clean total): integers, as a counting detector records
    total = np.asarray(clean.data, dtype=np.float64).sum((2, 3), keepdims=True)
    k = np.asarray(noisy.data, dtype=np.float64) * counts / total
    tile = np.clip(np.round(k), 0, 65535).astype(np.uint16)
    small = py4DSTEM.DataCube(data=tile[:2, :2])
    small.calibration = noisy.calibration  # the calibration, origin per position
    cal = noisy.calibration
    ox, oy = (np.asarray(v) for v in cal.get_origin())
    reps = big // 64
    # an EMD file with a tiny DataCube, whose data are then replaced by the
    # big uint16 array written row by row (py4DSTEM reads it as any DataCube)
    small.calibration.set_origin((np.tile(ox, (reps, reps)), np.tile(oy, (reps, reps))))
    py4DSTEM.save(str(path), small, mode="o")
    with h5py.File(path, "a") as f:
        (node,) = [k for k in f[list(f.keys())[0]].keys() if k != "metadatabundle"]
        group = f[list(f.keys())[0]][node]
        del group["data"]
        d = group.create_dataset(
            "data", shape=(big, big, 256, 256), dtype=np.uint16, chunks=(1, 16, 256, 256)
        )
        for r in range(big):
            d[r] = np.tile(tile[r % 64], (reps, 1, 1))


def _big_scan_model(tmp: Path) -> Path:
    """The model part 2 saves: pre-binned, 48x48 seed-0 scan at 25 % noise."""
    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    clean, _ = polycrystal(scan_shape=(48, 48), pattern_shape=(256, 256), seed=0)
    path = tmp / "model256_25.h5"
    _fit(add_background_noise(clean, 25, seed=0)).save(path, overwrite=True)
    return path


def big_scan_part(tmp: Path, model_path: Path, big: int = 256) -> dict:
    from py4dstem_ccstae import CCSTAE

    path = tmp / "scan256_uint16.h5"
    t0 = time.perf_counter()
    _write_big(path, big)
    write_s = time.perf_counter() - t0
    size_gb = path.stat().st_size / 1e9
    n = big * big
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model_path), str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    one = json.loads(proc.stdout.strip().splitlines()[-1])
    model = CCSTAE.load(model_path)
    cluster, client = _cluster()
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rs = model.strain_map(path, client=client)
        dist_s = time.perf_counter() - t0
        workers = client.run(_vmhwm_mb)
    finally:
        client.close()
        cluster.close()
    return {
        "scan": [big, big],
        "patterns": [256, 256],
        "dtype": "uint16",
        "file_gb": size_gb,
        "write_s": write_s,
        "one_process_s": one["seconds"],
        "one_process_patterns_per_s": n / one["seconds"],
        "one_process_peak_rss_mb": one["peak_rss_mb"],
        "two_workers_s": dist_s,
        "two_workers_patterns_per_s": n / dist_s,
        "worker_peak_rss_mb": sorted(workers.values()),
        "driver_peak_rss_mb": _vmhwm_mb(),
        "valid_fraction": [one["valid"], float(rs.get_slice("mask").data.mean())],
    }


# ------------------------------------------------------------ 4 throughput
def _worker_costs(path: str, model_bytes: bytes) -> dict:
    """On a worker: what every task pays besides its rows (medians of 5)."""
    import pickle

    import torch

    import py4dstem_ccstae.distributed as dist
    from py4dstem_ccstae.io import open_datacube

    def median_s(fn) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return {
        "open_datacube_s": median_s(lambda: open_datacube(path)),
        "model_unpickle_s": median_s(lambda: pickle.loads(model_bytes)),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "started_with_fixed_mmap_threshold": dist._started_with_fixed_threshold(),
    }


def _keep_fixed_threshold() -> None:
    """On a worker: as before the fix (the mmap threshold dask's setting fixed)."""
    import py4dstem_ccstae.distributed as dist

    dist._MALLOC_CHECKED = True


def _phases(stream: list, wall: float) -> dict:
    """The passes of one cluster run, from its task stream (seconds)."""
    spans: dict = {}
    compute: dict = {}
    transfer = 0.0
    for task in stream:
        name = str(task["key"]).split("-")[0].lstrip("_")
        for ss in task["startstops"]:
            if ss["action"] == "compute":
                lo, hi = spans.get(name, (ss["start"], ss["stop"]))
                spans[name] = (min(lo, ss["start"]), max(hi, ss["stop"]))
                compute[name] = compute.get(name, 0.0) + ss["stop"] - ss["start"]
            elif ss["action"] == "transfer":
                transfer += ss["stop"] - ss["start"]
    first = min(lo for lo, _ in spans.values())
    last = max(hi for _, hi in spans.values())
    stats, pred = spans.get("block_stats"), spans.get("block_predict")
    return {
        "statistics_pass_s": stats[1] - stats[0] if stats else 0.0,
        "prediction_pass_s": pred[1] - pred[0] if pred else 0.0,
        "between_passes_s": pred[0] - stats[1] if stats and pred else 0.0,
        "outside_tasks_s": wall - (last - first),
        "statistics_compute_s": compute.get("block_stats", 0.0),
        "prediction_compute_s": compute.get("block_predict", 0.0),
        "transfer_s": transfer,
        "tasks": {name: sum(1 for t in stream if name in str(t["key"])) for name in spans},
    }


def throughput_part(tmp: Path, model_path: Path, big: int = 128, repeats: int = 3) -> dict:
    """One process, one process in blocks and 2 workers side by side (module docs)."""
    import pickle

    import torch
    from distributed import get_task_stream

    from py4dstem_ccstae import CCSTAE

    path = tmp / f"scan{big}_uint16.h5"
    _write_big(path, big)
    n = big * big
    model = CCSTAE.load(model_path)
    block_rows = max(1, 4096 // big)
    runs: dict = {"one_process": [], "row_blocks": [], "two_workers": [], "before_fix": []}
    phases: dict = {"two_workers": [], "before_fix": []}
    first: dict = {}
    clusters = {"two_workers": _cluster(), "before_fix": _cluster()}
    try:
        for name, (_, client) in clusters.items():
            client.run(lambda: __import__("py4dstem_ccstae.estimator"))  # imports done
            if name == "before_fix":
                client.run(_keep_fixed_threshold)
        costs = clusters["two_workers"][1].run(
            _worker_costs, str(path), pickle.dumps(model)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, (_, client) in clusters.items():  # the first call of a cluster
                t0 = time.perf_counter()
                model.strain_map(path, client=client)
                first[name] = time.perf_counter() - t0
            for _ in range(repeats):  # side by side, alternating
                t0 = time.perf_counter()
                model.strain_map(path)
                runs["one_process"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                model.strain_map(path, block_rows=block_rows)
                runs["row_blocks"].append(time.perf_counter() - t0)
                for name, (_, client) in clusters.items():
                    with get_task_stream(client=client) as ts:
                        t0 = time.perf_counter()
                        model.strain_map(path, client=client)
                        wall = time.perf_counter() - t0
                    runs[name].append(wall)
                    phases[name].append(_phases(ts.data, wall))
        peak = {
            name: sorted(c.run(_vmhwm_mb).values()) for name, (_, c) in clusters.items()
        }
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()
    median = {k: statistics.median(v) for k, v in runs.items()}
    keys = [k for k in phases["two_workers"][0] if k != "tasks"]
    return {
        "scan": [big, big],
        "patterns": [256, 256],
        "dtype": "uint16",
        "file_gb": path.stat().st_size / 1e9,
        "repeats": repeats,
        "block_rows_one_process": block_rows,
        "runs_s": runs,
        "median_s": median,
        "patterns_per_s": {k: n / v for k, v in median.items()},
        "first_call_s": first,
        "phases_median_s": {
            name: {k: statistics.median(p[k] for p in ps) for k in keys}
            for name, ps in phases.items()
        },
        "tasks": phases["two_workers"][0]["tasks"],
        "worker_costs": sorted(costs.values(), key=lambda c: c["open_datacube_s"]),
        "worker_peak_rss_mb": peak,
        "driver_torch_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------- reporting
def _markdown(result: dict) -> str:
    md = ["### Large data: distributed prediction, big detectors, a big scan", ""]
    md.append(
        f"`{result['command']}`, {result['date']}, {result['machine']}, "
        f"torch threads {result['threads']}; git {result['git']}."
    )
    for part, run in result.get("earlier_runs", {}).items():
        md += [
            "",
            f"Part `{part}` from an earlier run: `{run['command']}`, {run['date']}, "
            f"git {run['git']}.",
        ]
    d = result.get("distributed")
    if d:
        md += [
            "",
            "#### Distributed prediction (64x64 scan, 128x128 patterns, 25 % noise)",
            "",
            "| | one process | LocalCluster, 2 workers x 1 thread |",
            "|---|---|---|",
            f"| strain_map, median of 2 (s) | {d['one_process_s']:.1f} | "
            f"{d['two_workers_s']:.1f} |",
            f"| patterns/s | {d['one_process_patterns_per_s']:.0f} | "
            f"{d['two_workers_patterns_per_s']:.0f} |",
            "",
            "Largest difference, cluster against one process, per slice: "
            + ", ".join(f"{k} {v:.1e}" for k, v in d["max_abs_difference"].items())
            + f"; masks identical: {d['masks_identical']}. One worker killed after the "
            f"first block: largest difference {d['killed_run_max_abs_difference']:.1e}, "
            f"masks identical: {d['killed_run_masks_identical']}.",
        ]
    b = result.get("big_detectors")
    if b and "paths" in b:
        md += [
            "",
            "#### Big detectors (48x48 scans, 256x256 patterns): pre-binning rules",
            "",
            "Three models per row, each trained on one input path and mapping the"
            " DataCube with it: the automatic rule (finest factor that brings the"
            " supersampling below 4), the coarsest allowed factor and no binning."
            " b: bin factor, s: supersampling; MAE of the mean strain (e_xx, e_yy,"
            " e_xy averaged, x1e-3) and of theta (deg); patterns/s of `strain_map`"
            " from the DataCube (input pass included), median of 3, side by side.",
            "",
            "| seed | noise % | b (finest / coarsest) | s (finest / coarsest / unbinned) |"
            " strain finest / coarsest / unbinned | theta (deg) |"
            " patterns/s |",
            "|---|---|---|---|---|---|---|",
        ]
        paths = list(b["paths"])
        for r in b["rows"]:
            cells = [r[p] for p in paths]
            md.append(
                f"| {r['seed']} | {r['noise']} | "
                f"{cells[0]['bin_factor']} / {cells[1]['bin_factor']} | "
                + " / ".join(str(c["supersample"]) for c in cells)
                + " | "
                + " / ".join(f"{1e3 * _mean_strain(c['mae']):.3f}" for c in cells)
                + " | "
                + " / ".join(f"{c['mae']['mae_theta_deg']:.4f}" for c in cells)
                + " | "
                + " / ".join(f"{c['patterns_per_s']:.0f}" for c in cells)
                + " |"
            )
        ratios = b["mean_strain_ratios_over_unbinned"]
        for path, rs in ratios.items():
            md += [
                "",
                f"Mean-strain MAE, {path} over unbinned: median "
                f"{statistics.median(rs):.3f}, range {min(rs):.3f}-{max(rs):.3f} "
                f"({len(rs)} cases).",
            ]
    s = result.get("big_scan")
    if s:
        md += [
            "",
            f"#### Big scan on disk ({s['scan'][0]}x{s['scan'][1]} scan, 256x256 uint16, "
            f"{s['file_gb']:.1f} GB EMD)",
            "",
            "| | one process (lazy, row blocks) | LocalCluster, 2 workers x 1 thread |",
            "|---|---|---|",
            f"| strain_map (s) | {s['one_process_s']:.0f} | {s['two_workers_s']:.0f} |",
            f"| patterns/s | {s['one_process_patterns_per_s']:.0f} | "
            f"{s['two_workers_patterns_per_s']:.0f} |",
            f"| peak RSS (VmHWM, MB) | {s['one_process_peak_rss_mb']:.0f} | workers "
            + ", ".join(f"{v:.0f}" for v in s["worker_peak_rss_mb"])
            + f"; driver {s['driver_peak_rss_mb']:.0f} (it also made the file) |",
            f"| valid positions | {s['valid_fraction'][0]:.3f} | "
            f"{s['valid_fraction'][1]:.3f} |",
        ]
    t = result.get("throughput")
    if t:
        md += _throughput_markdown(t)
    return "\n".join(md) + "\n"


def _throughput_markdown(t: dict) -> list[str]:
    cols = ("one_process", "row_blocks", "two_workers", "before_fix")
    med, ph = t["median_s"], t["phases_median_s"]

    def row(label, cells):
        return f"| {label} | " + " | ".join(cells) + " |"

    def phase(key):
        return ["-", "-"] + [f"{ph[c][key]:.1f}" for c in cols[2:]]

    tasks = ", ".join(f"{v} {k}" for k, v in t["tasks"].items())
    cost = t["worker_costs"]
    return [
        "",
        f"#### Where the time goes ({t['scan'][0]}x{t['scan'][1]} scan, 256x256 uint16, "
        f"{t['file_gb']:.1f} GB EMD)",
        "",
        f"`strain_map` from the path, median of {t['repeats']} alternating runs;"
        " the two clusters are `LocalCluster(n_workers=2, threads_per_worker=1)`,"
        " the second with the workers' mmap threshold as dask leaves it (the code"
        " before the fix). Passes from dask's task stream (medians).",
        "",
        "| | one process | one process, row blocks of "
        f"{t['block_rows_one_process']} rows | 2 workers | 2 workers, before the fix |",
        "|---|---|---|---|---|",
        row("strain_map (s)", [f"{med[c]:.1f}" for c in cols]),
        row("patterns/s", [f"{t['patterns_per_s'][c]:.0f}" for c in cols]),
        row("runs (s)", [", ".join(f"{v:.1f}" for v in t["runs_s"][c]) for c in cols]),
        row(
            "first call on the cluster (s)",
            ["-", "-"] + [f"{t['first_call_s'][c]:.1f}" for c in cols[2:]],
        ),
        row("statistics pass (s)", phase("statistics_pass_s")),
        row("prediction pass (s)", phase("prediction_pass_s")),
        row("outside any task: driver, scheduler, transfers (s)", phase("outside_tasks_s")),
        row("statistics tasks' compute, both workers (s)", phase("statistics_compute_s")),
        row("prediction tasks' compute, both workers (s)", phase("prediction_compute_s")),
        row(
            "peak RSS per worker (VmHWM, MB)",
            ["-", "-"]
            + [", ".join(f"{v:.0f}" for v in t["worker_peak_rss_mb"][c]) for c in cols[2:]],
        ),
        "",
        f"Tasks per cluster run: {tasks}. On a worker: the file opened (as every task"
        f" does) in {1e3 * cost[0]['open_datacube_s']:.0f}-"
        f"{1e3 * cost[-1]['open_datacube_s']:.0f} ms, the model unpickled in"
        f" {1e3 * max(c['model_unpickle_s'] for c in cost):.0f} ms; torch threads"
        f" {cost[0]['torch_threads']} (OMP_NUM_THREADS={cost[0]['omp_num_threads']});"
        " started with a fixed mmap threshold (dask's MALLOC_TRIM_THRESHOLD_):"
        f" {cost[0]['started_with_fixed_mmap_threshold']}.",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--tmp", default=None, help="folder for the data files (deleted)")
    ap.add_argument("--out", default="docs/benchmark_results")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="big_detectors data seeds"
    )
    ap.add_argument(
        "--throughput-scan", type=int, default=128, help="throughput: scan side (x 64)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="throughput: repeats")
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the parts already in OUT/large_data.json that are not run now",
    )
    args = ap.parse_args(argv)
    result = _meta.run_meta("large_data.py", argv)
    previous = Path(args.out) / "large_data.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        for part in PARTS:
            if part in old and part not in args.part:
                result[part] = old[part]
                result.setdefault("earlier_runs", {})[part] = {
                    k: old.get("earlier_runs", {}).get(part, {}).get(k, old.get(k))
                    for k in ("command", "date", "git")
                }
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        if "distributed" in args.part:
            result["distributed"] = distributed_part(tmp)
            print(json.dumps(result["distributed"]), flush=True)
        model_path = None
        if "big_detectors" in args.part:
            result["big_detectors"], model_path = big_detectors_part(tmp, tuple(args.seeds))
        if {"big_scan", "throughput"} & set(args.part):
            if model_path is None:  # the model big_detectors would have saved
                model_path = _big_scan_model(tmp)
        if "big_scan" in args.part:
            result["big_scan"] = big_scan_part(tmp, model_path)
            print(json.dumps(result["big_scan"]), flush=True)
        if "throughput" in args.part:
            result["throughput"] = throughput_part(
                tmp, model_path, args.throughput_scan, args.repeats
            )
            print(json.dumps(result["throughput"]), flush=True)
    _meta.write(Path(args.out), "large_data", result, _markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
