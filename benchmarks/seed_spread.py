"""Run-to-run spread of training: one simulator case fitted with several seeds.

Run from the repository root::

    python benchmarks/seed_spread.py [--rotation full] [--level 0] \\
        [--equivariance 0 0.1] [--seeds 0 1 2] [--out DIR] [--stem NAME]

Data: the simulator sweep's scan (``polycrystal(scan_shape=(64, 64),
pattern_shape=(128, 128), seed=0, rotation_range=ROTATION)``; ``--rotation
full``: the sweep's full-rotation case, theta scored modulo the lattice's
4-fold symmetry), with ``add_background_noise(level, seed=0)`` when
``--level`` > 0. For every weight of the equivariance term and every
training seed (``fit(seed=...)``), ``CCSTAE(equivariance=w)`` (all other
options default) is fitted and its strain map scored against the truth
relative to the reference grain, as the sweep scores it. The table gives
each fit's MAE, attempts and time, and per weight the range over seeds: a
difference between two single trainings smaller than that range is not
evidence of a change.

Writes ``DIR/NAME.json`` and ``DIR/NAME.md`` (NAME: ``--stem``, default
``seed_spread``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _meta import run_meta, write  # noqa: E402

KEYS = ("mae_e_xx", "mae_e_yy", "mae_e_xy", "mae_theta_deg")


def run(rotation: str, level: float, weights, seeds) -> list[dict]:
    """One row per (weight, seed): MAE of the strain map, attempts, seconds."""
    import warnings

    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.metrics import strain_errors
    from py4dstem_ccstae.noise import add_background_noise
    from py4dstem_ccstae.simulate import polycrystal

    rot = rotation if rotation == "full" else float(rotation)
    clean, truth = polycrystal(
        scan_shape=(64, 64), pattern_shape=(128, 128), seed=0, rotation_range=rot
    )
    symmetry = int(truth.metadata["simulation"]["symmetry"]) if rot == "full" else 1
    dc = add_background_noise(clean, level, seed=0) if level else clean
    ref = truth.get_slice("reference").data.astype(bool)
    rows = []
    for w in weights:
        for seed in seeds:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = CCSTAE(equivariance=w)
                inputs = model.prepare(dc)
                model.fit(inputs, seed=seed, progress=False)
                rs = model.strain_map(inputs, reference=ref)
            e = strain_errors(rs, truth, symmetry=symmetry)
            row = {"equivariance": w, "seed": seed, **{k: float(e[k]) for k in KEYS}}
            row.update(
                attempts=len(model.fitted_["attempts"]),
                sensitivity=float(model.fitted_["encoder_sensitivity"]["mean"]),
                seconds=time.perf_counter() - t0,
            )
            print(row, flush=True)
            rows.append(row)
    return rows


def markdown(res: dict) -> str:
    lines = [
        f"Command: `{res['command']}`; {res['date']}; git {res['git']}; "
        f"torch threads {res['threads']}.",
        "",
        "| equivariance | seed | e_xx / e_yy / e_xy (x1e-3) | theta (deg) | attempts "
        "| sensitivity | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['equivariance']:g} | {r['seed']} | "
            + " / ".join(f"{1e3 * r[k]:.3f}" for k in KEYS[:3])
            + f" | {r['mae_theta_deg']:.4f} | {r['attempts']} | {r['sensitivity']:.2f} "
            f"| {r['seconds']:.0f} |"
        )
    lines += ["", "Range over seeds, per weight:", ""]
    for w, rng in res["ranges"].items():
        parts = [
            f"{k.replace('mae_', '')} {lo:.4g}-{hi:.4g}" for k, (lo, hi) in rng.items()
        ]
        lines.append(
            f"- equivariance {w}: " + "; ".join(parts) + " (strain x1e-3 as above)"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rotation", default="full", help="'full' or a half-range in deg")
    ap.add_argument("--level", type=float, default=0.0, help="noise, percent")
    ap.add_argument("--equivariance", type=float, nargs="+", default=[0.0, 0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="docs/benchmark_results")
    ap.add_argument("--stem", default="seed_spread")
    args = ap.parse_args(argv)
    res = {
        **run_meta("seed_spread.py", argv),
        "rotation": args.rotation,
        "level": args.level,
    }
    res["rows"] = run(args.rotation, args.level, args.equivariance, args.seeds)
    res["ranges"] = {}
    for w in args.equivariance:
        sel = [r for r in res["rows"] if r["equivariance"] == w]
        res["ranges"][f"{w:g}"] = {
            k: [
                min(r[k] for r in sel) * (1 if k == "mae_theta_deg" else 1e3),
                max(r[k] for r in sel) * (1 if k == "mae_theta_deg" else 1e3),
            ]
            for k in KEYS
        }
    md = markdown(res)
    write(Path(args.out), args.stem, res, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
