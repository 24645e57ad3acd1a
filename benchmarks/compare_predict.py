"""Prediction speed of this checkout against another one, side by side in one run.

Run from the repository root::

    git worktree add /tmp/base <rev> --detach
    python benchmarks/compare_predict.py --baseline /tmp/base [--rounds 3]
                                         [--repeats 3] [--level 25] [--out DIR]

One model is trained with this checkout (the simulator's default 64x64
polycrystal, 128x128 patterns, ``--level`` % background noise, seed 0) and
saved, or ``--model`` is loaded. Then, for ``--rounds`` rounds, a fresh
subprocess per checkout (``PYTHONPATH`` = the checkout; baseline first, then
this one, so slow drifts of a shared machine hit both alike) loads the model
and times ``--repeats`` times each:

* ``predict`` on prepared inputs (``DiffractionInputs``; these are lazy, so
  the resampling of every batch is included), with and without the
  per-pattern refinement;
* ``strain_map`` straight from the DataCube (the calibrated input pass that
  measures the mean pattern is included: what a notebook user waits for).

Reported: the median over all rounds and repeats per checkout, the ratio
baseline / this (> 1: this checkout is faster), and how far the two
checkouts' transforms differ (max |A_this - A_baseline| over the scan, and
both MAEs against the truth): a speed-up must not change the answer.

Writes ``compare_predict.json`` and ``compare_predict.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import json, sys, time
import numpy as np
import torch
from py4dstem_ccstae import CCSTAE, DiffractionInputs, __file__ as where
from py4dstem_ccstae.metrics import strain_errors
from py4dstem_ccstae.simulate import add_background_noise, polycrystal

model_path, a_out = sys.argv[1], sys.argv[4]
level, repeats = float(sys.argv[2]), int(sys.argv[3])
m = CCSTAE.load(model_path)
clean, truth = polycrystal(scan_shape=(64, 64), seed=0)
dc = add_background_noise(clean, level, seed=0)
ref = truth.get_slice("reference").data.astype(bool)
inputs = m._inputs(dc)

def timed(f):
    f()  # warm-up (allocations, thread pool)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return out

res = {
    "code": where,
    "threads": torch.get_num_threads(),
    "predict_refined_s": timed(lambda: m.predict(inputs)),
    "predict_encoder_only_s": timed(lambda: m.predict(inputs, refine_transforms=False)),
    "strain_map_datacube_s": timed(lambda: m.strain_map(dc, reference=ref)),
}
A = m.predict(inputs)["A"]
np.save(a_out, A)
e = strain_errors(m.strain_map(inputs, reference=ref), truth)
res["mae"] = {k: e["mae_" + k] for k in ("e_xx", "e_yy", "e_xy")}
print(json.dumps(res))
"""

_TIMINGS = {
    "predict_refined_s": "`predict`, refined (prepared inputs)",
    "predict_encoder_only_s": "`predict`, encoder only (prepared inputs)",
    "strain_map_datacube_s": "`strain_map` from the DataCube (incl. input pass)",
}


def _train(model_path: Path, level: float) -> float:
    import time

    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    clean, _ = polycrystal(scan_shape=(64, 64), seed=0)
    dc = add_background_noise(clean, level, seed=0)
    t0 = time.perf_counter()
    CCSTAE().fit(dc, seed=0, device="cpu", progress=False).save(model_path)
    return time.perf_counter() - t0


def _child(src: Path, model: Path, level: float, repeats: int, a_out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model), str(level), str(repeats), str(a_out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=a_out.parent,  # not a checkout: `python -c` puts the cwd first on sys.path
    )
    if proc.returncode:
        raise RuntimeError(f"child for {src} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = (src / "py4dstem_ccstae").resolve()
    if Path(res["code"]).resolve().parent != expected:
        raise RuntimeError(f"child imported {res['code']}, expected the code in {expected}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="checkout to compare against")
    ap.add_argument("--rounds", type=int, default=3, help="subprocesses per checkout (3)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per subprocess (3)")
    ap.add_argument("--level", type=float, default=25.0, help="background noise %% (25)")
    ap.add_argument("--out", default="docs/benchmark_results", help="output folder")
    ap.add_argument(
        "--model",
        help="use this saved model instead of training one (both checkouts must load it)",
    )
    args = ap.parse_args(argv)
    this = Path(__file__).resolve().parent.parent
    base = Path(args.baseline).resolve()
    if not (base / "py4dstem_ccstae" / "__init__.py").is_file():
        ap.error(f"--baseline {str(base)!r} holds no py4dstem_ccstae package")
    if args.rounds < 1 or args.repeats < 1:
        ap.error("--rounds and --repeats must be >= 1")

    from _meta import git_describe, run_meta, write

    base_rev = subprocess.run(
        ["git", "-C", str(base), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = Path(tmp)
        if args.model:
            model, fit_s = Path(args.model).resolve(), None
        else:
            model = tmp / "model.h5"
            print(f"training one model at {args.level:g} % noise ...", flush=True)
            fit_s = _train(model, args.level)
        for r in range(args.rounds):
            for name, src in (("baseline", base), ("this", this)):
                res = _child(src, model, args.level, args.repeats, tmp / f"A_{name}.npy")
                runs[name].append(res)
                print(
                    f"round {r + 1} {name}: "
                    + ", ".join(f"{k} {statistics.median(res[k]):.2f} s" for k in _TIMINGS),
                    flush=True,
                )
        A_this, A_base = np.load(tmp / "A_this.npy"), np.load(tmp / "A_baseline.npy")
        dA = float(np.abs(A_this - A_base).max())

    n = 64 * 64
    rows = {}
    for key in _TIMINGS:
        med = {
            name: statistics.median([t for res in runs[name] for t in res[key]])
            for name in runs
        }
        rows[key] = {
            "baseline_s": med["baseline"],
            "this_s": med["this"],
            "baseline_patterns_per_s": n / med["baseline"],
            "this_patterns_per_s": n / med["this"],
            "speedup": med["baseline"] / med["this"],
        }
    result = {
        **run_meta("compare_predict.py", argv),
        "baseline": {"path": str(base), "git": base_rev or "unknown"},
        "this": git_describe(),
        "level": args.level,
        "fit_s": fit_s,
        "timings": rows,
        "max_abs_dA": dA,
        "mae": {name: runs[name][-1]["mae"] for name in runs},
        "runs": runs,
    }
    md = [
        "# Prediction speed against an earlier checkout",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch threads {result['threads']}; this checkout git {result['this']}, "
        f"baseline git {result['baseline']['git']}.",
        "",
        f"64x64 scan, 128x128 patterns, {args.level:g} % noise; one model ("
        + (f"`{args.model}`" if args.model else f"trained here in {fit_s:.0f} s")
        + f") predicted by both; {args.rounds} alternating subprocesses per checkout "
        f"x {args.repeats} timings, medians.",
        "",
        "| what | baseline s | this s | baseline patterns/s | this patterns/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in _TIMINGS.items():
        r = rows[key]
        md.append(
            f"| {label} | {r['baseline_s']:.2f} | {r['this_s']:.2f} | "
            f"{r['baseline_patterns_per_s']:.0f} | {r['this_patterns_per_s']:.0f} | "
            f"{r['speedup']:.2f}x |"
        )
    mb, mt = result["mae"]["baseline"], result["mae"]["this"]
    md += [
        "",
        f"Same answer: max |A_this - A_baseline| = {dA:.1e}; MAE x1e-3 (e_xx / e_yy / "
        f"e_xy, reference grain) baseline "
        + " / ".join(f"{mb[k] * 1e3:.4f}" for k in ("e_xx", "e_yy", "e_xy"))
        + ", this "
        + " / ".join(f"{mt[k] * 1e3:.4f}" for k in ("e_xx", "e_yy", "e_xy"))
        + ".",
        "",
    ]
    write(Path(args.out), "compare_predict", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
