"""Training time, inference throughput and streaming peak memory of the CC-ST-AE.

Run from the repository root::

    python benchmarks/speed_memory.py [--big 256] [--repeats 3] [--out DIR]
                                      [--memory-only]

1. Speed (in this process): a 64x64 scan of 128x128 patterns (the simulator's
   default polycrystal, 25 % background noise). Times ``CCSTAE().fit`` once,
   ``predict`` on the prepared inputs ``--repeats`` times with and without
   the per-pattern refinement, and ``strain_map`` straight from the DataCube
   (its calibrated input pass included) ``--repeats`` times; reports medians
   and patterns/s, side by side in one run.
2. Memory (in a fresh subprocess): a ``--big`` x ``--big`` scan of 128x128
   **uint16** patterns in a numpy memmap on disk (the 64x64 simulation tiled,
   with its own noise), predicted with a model trained on the 64x64 scan. The
   target of the adapters issue is a 256x256 scan under 2 GB.

   Peak RSS is the child's ``VmHWM`` (``/proc/self/status``), *not*
   ``getrusage``'s ``ru_maxrss``: Linux carries the parent's peak RSS over
   fork/exec into the child's ``ru_maxrss`` (here the parent has trained a
   model and written the memmap), which made earlier runs report the parent's
   peak. RSS is split into anonymous memory (``RssAnon``: real allocations)
   and file-backed pages (``RssFile``: shared libraries and memmap pages mapped
   into the process, reclaimable page cache); their peaks are sampled every
   ``_SAMPLE_S`` seconds by a thread, before and during ``strain_map``.

Writes ``speed_memory.json`` and ``speed_memory.md`` to ``--out``. With
``--memory-only`` the timed part is skipped (the model is still trained once)
and the memory result is only printed; no file is written.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _speed(repeats: int, model_path: Path) -> dict:
    import torch

    from py4dstem_ccstae import CCSTAE, DiffractionInputs
    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    clean, _ = polycrystal(scan_shape=(64, 64), seed=0)
    dc = add_background_noise(clean, 25, seed=0)
    n = 64 * 64
    t0 = time.perf_counter()
    inputs = DiffractionInputs.from_datacube(dc, size=64)
    t_inputs = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = CCSTAE().fit(inputs, seed=0, device="cpu", progress=False)
    t_fit = time.perf_counter() - t0
    model.save(model_path, overwrite=True)
    res = {"patterns": n, "threads": torch.get_num_threads(), "inputs_s": t_inputs}
    res["fit_s"] = t_fit
    res["epochs_run"] = len(model.history_)
    timed = {
        "predict_encoder_only": lambda: model.predict(inputs, refine_transforms=False),
        "predict_refined": lambda: model.predict(inputs, refine_transforms=True),
        # what a notebook user waits for: from the DataCube, input pass included
        "strain_map_datacube": lambda: model.strain_map(dc),
    }
    for key, run in timed.items() if repeats else ():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        res[f"{key}_s_median"] = statistics.median(times)
        res[f"{key}_s_all"] = times
        res[f"{key}_patterns_per_s"] = n / statistics.median(times)
    return res


def _write_memmap(path: Path, big: int) -> None:
    """Tile the 64x64 simulation (uint16 counts, noisy) into a big memmap."""
    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    clean, _ = polycrystal(scan_shape=(64, 64), seed=0)
    mm = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint16, shape=(big, big, 128, 128)
    )
    for i in range(0, big, 64):
        for j in range(0, big, 64):
            noisy = add_background_noise(clean, 25, seed=i * big + j)
            counts = np.rint(noisy.data * 1e5 / noisy.data.sum((-1, -2), keepdims=True))
            mm[i : i + 64, j : j + 64] = np.clip(counts, 0, 65535).astype(np.uint16)
    mm.flush()
    del mm
    cal = clean.calibration
    meta = {
        "Q_pixel_size": float(cal.get_Q_pixel_size()),
        "Q_pixel_units": cal.get_Q_pixel_units(),
        "origin": [float(v) for v in np.asarray(cal.get_origin_mean())],
    }
    path.with_suffix(".json").write_text(json.dumps(meta))


_SAMPLE_S = 0.05

_PREDICT_CHILD = """
import json, resource, sys, threading, time
import numpy as np

def status():
    try:
        with open("/proc/self/status") as f:
            d = {k: int(v.split()[0]) / 1024.0 for k, _, v in
                 (line.partition(":") for line in f)
                 if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
    except OSError:
        d = {}
    if "VmHWM" not in d:  # no /proc: lifetime maximum (may include the parent's)
        d["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return d

peak = {"RssAnon": 0.0, "RssFile": 0.0}
def sample():
    while True:
        now = status()
        for k in peak:
            peak[k] = max(peak[k], now.get(k, float("nan")))
        time.sleep(SAMPLE_S)
threading.Thread(target=sample, daemon=True).start()

from py4DSTEM import DataCube
from py4dstem_ccstae import CCSTAE
path, model_path = sys.argv[1], sys.argv[2]
meta = json.load(open(path[:-4] + ".json"))
data = np.load(path, mmap_mode="r")
dc = DataCube(data=data)
dc.calibration.set_Q_pixel_size(meta["Q_pixel_size"])
dc.calibration.set_Q_pixel_units(meta["Q_pixel_units"])
dc.calibration.set_origin(tuple(meta["origin"]))
model = CCSTAE.load(model_path)
time.sleep(2 * SAMPLE_S)
before = {**status(), **{"peak_" + k: v for k, v in peak.items()}}
peak.update(RssAnon=0.0, RssFile=0.0)
t0 = time.perf_counter()
rs = model.strain_map(dc)
sec = time.perf_counter() - t0
time.sleep(2 * SAMPLE_S)
after = status()
print(json.dumps({
    "scan": list(data.shape[:2]),
    "file_gb": data.nbytes / 1e9,
    "seconds": sec,
    "patterns_per_s": data.shape[0] * data.shape[1] / sec,
    "sample_s": SAMPLE_S,
    "peak_rss_mb_before_predict": before["VmHWM"],
    "anon_mb_before_predict": before.get("RssAnon"),
    "peak_anon_mb_before_predict": before["peak_RssAnon"],
    "peak_file_mb_before_predict": before["peak_RssFile"],
    "peak_rss_mb": after["VmHWM"],
    "peak_anon_mb": peak["RssAnon"],
    "peak_file_mb": peak["RssFile"],
    "ru_maxrss_mb_incl_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    / 1024.0,
    "finite_fraction": float(np.isfinite(rs.get_slice("e_xx").data).mean()),
}))
""".replace("SAMPLE_S", repr(_SAMPLE_S))


def _memory(big: int, model_path: Path, tmp: Path) -> dict:
    """Write the memmap and predict it in a fresh subprocess; its memory figures."""
    print(f"memory: writing a {big}x{big} uint16 memmap ...", flush=True)
    mm_path = tmp / "big.npy"
    _write_memmap(mm_path, big)
    proc = subprocess.run(
        [sys.executable, "-c", _PREDICT_CHILD, str(mm_path), str(model_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    memory = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(memory, indent=1), flush=True)
    return memory


def _fmt_mb(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.0f} MB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=256, help="side of the memmap scan (256)")
    ap.add_argument("--repeats", type=int, default=3, help="timed predict repeats (3)")
    ap.add_argument("--out", default="docs/benchmark_results", help="output folder")
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="skip the timed part (still trains the model once); print the "
        "memory result, write no file",
    )
    args = ap.parse_args(argv)
    if args.big % 64:
        ap.error("--big must be a multiple of 64")
    if args.memory_only:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            tmp = Path(tmp)
            print("training the 64x64 model ...", flush=True)
            _speed(0, tmp / "model.h5")
            _memory(args.big, tmp / "model.h5", tmp)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import py4DSTEM
    import torch

    from py4dstem_ccstae import __version__

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        model_path = tmp / "model.h5"
        print("speed: 64x64 scan ...", flush=True)
        speed = _speed(args.repeats, model_path)
        print(json.dumps(speed, indent=1), flush=True)
        memory = _memory(args.big, model_path, tmp)

    from _meta import run_meta

    result = {
        **run_meta("speed_memory.py", argv),
        "versions": {
            "py4dstem_ccstae": __version__,
            "py4DSTEM": py4DSTEM.__version__,
            "torch": torch.__version__,
        },
        "speed": speed,
        "memory": memory,
    }
    (out / "speed_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    s, m = speed, memory
    md = [
        "# CC-ST-AE speed and streaming memory",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch {torch.__version__}, {s['threads']} threads, CPU.",
        "",
        "| quantity (64x64 scan, 128x128 patterns, 25 % noise) | value |",
        "|---|---|",
        f"| building the inputs (resampling) | {s['inputs_s']:.1f} s |",
        f"| training (`fit`, {s['epochs_run']} epochs) | {s['fit_s']:.1f} s |",
        f"| predict, encoder only (median of {args.repeats}) | "
        f"{s['predict_encoder_only_s_median']:.2f} s = "
        f"{s['predict_encoder_only_patterns_per_s']:.0f} patterns/s |",
        f"| predict with refinement (median of {args.repeats}) | "
        f"{s['predict_refined_s_median']:.2f} s = "
        f"{s['predict_refined_patterns_per_s']:.0f} patterns/s |",
        f"| `strain_map` from the DataCube, refined, input pass included (median of "
        f"{args.repeats}) | {s['strain_map_datacube_s_median']:.2f} s = "
        f"{s['strain_map_datacube_patterns_per_s']:.0f} patterns/s |",
        "",
        f"| streaming (`strain_map` on a {m['scan'][0]}x{m['scan'][1]} uint16 memmap, "
        f"{m['file_gb']:.2f} GB on disk) | value |",
        "|---|---|",
        f"| wall time | {m['seconds']:.0f} s ({m['patterns_per_s']:.0f} patterns/s) |",
        "| peak RSS before `strain_map` (memmap wrapped in a DataCube, calibrated, "
        f"model loaded) | {_fmt_mb(m['peak_rss_mb_before_predict'])} |",
        "| of which anonymous (allocations), peak before `strain_map` | "
        f"{_fmt_mb(m['peak_anon_mb_before_predict'])} |",
        f"| peak RSS of the whole process (`VmHWM`) | {_fmt_mb(m['peak_rss_mb'])} |",
        "| peak anonymous RSS during `strain_map` (`RssAnon`, sampled every "
        f"{m['sample_s'] * 1000:.0f} ms) | {_fmt_mb(m['peak_anon_mb'])} |",
        "| peak file-backed RSS during `strain_map` (`RssFile`: libraries and "
        f"mapped memmap pages) | {_fmt_mb(m['peak_file_mb'])} |",
        "",
    ]
    (out / "speed_memory.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
