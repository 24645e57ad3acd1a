"""Training options side by side: the mask schedule and the loss variants.

Run from the repository root::

    python benchmarks/training_options.py [--levels 25 50]
                                          [--variants '[{}, {"loss": "l1"}]']
                                          [--out DIR]

On the benchmark's noise-sweep data (``polycrystal(scan_shape=(64, 64),
pattern_shape=(128, 128), seed=0)`` with ``add_background_noise(level,
seed=0)``), trains ``CCSTAE(**variant)`` for every variant with the same seed
(0) and the default lock-on retries, in one run, and reports per run: the
training attempts, epochs and time, the encoder's sensitivity, and the MAE of
the encoder's own estimate (``refine_transforms=False``) and of the refined
estimate (the default output) against the simulation's truth, referenced to
the zero-strain grain as in the benchmark. Unlike ``refinement.py``, each
variant trains its own network, so a difference mixes the option's effect
with training's run-to-run chaos (one seed per variant): read differences of
a few percent as noise.

Default variants: the defaults; the paper's shrinking-mask schedule
(``mask_schedule=True``); the robust L1 loss; the Poisson deviance (which
needs ``scaling="linear"``, so the refinement then also works on linear
intensities); the overshoot-weighted MSE (``overshoot=2``).

Writes ``training_options.json`` and ``training_options.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _scores import encoder_and_refined, strain_cell

VARIANTS = [
    {},
    {"mask_schedule": True},
    {"loss": "l1"},
    {"loss": "poisson", "scaling": "linear"},
    {"overshoot": 2.0},
]


def _label(variant: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.items()) or "defaults"


def run(levels, variants, scan: int = 64) -> list[dict]:
    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.simulate import add_background_noise, polycrystal

    clean, truth = polycrystal(scan_shape=(scan, scan), pattern_shape=(128, 128), seed=0)
    ref = truth.get_slice("reference").data.astype(bool)
    rows = []
    for level in levels:
        dc = add_background_noise(clean, level, seed=0) if level else clean
        for variant in variants:
            t0 = time.perf_counter()
            model = CCSTAE(**variant).fit(dc, seed=0, progress=False)
            row = {
                "noise": level,
                "variant": _label(variant),
                "attempts": len(model.fitted_["attempts"]),
                "epochs": len(model.history_),
                "fit_s": time.perf_counter() - t0,
                "sensitivity": model.fitted_["encoder_sensitivity"]["mean"],
                "spots": len(model.fitted_["spots"] or []),
            }
            row.update(encoder_and_refined(model, dc, truth, ref))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(result: dict) -> str:
    lines = [
        "# Training options",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch threads {result['threads']}; git {result['git']}.",
        "",
        f"{result['scan']}x{result['scan']} scan, 128x128 patterns, the benchmark's "
        "noise-sweep data; one training per row (seed 0, default retries); MAE vs "
        "truth (strain x1e-3, theta in degrees), reference = zero-strain grain. "
        "'encoder': the network's own estimate; 'refined': after the per-pattern "
        "refinement (the default output).",
        "",
        "| noise % | options | attempts | epochs | fit s | sensitivity | spots | "
        "encoder e_xx / e_yy / e_xy | refined e_xx / e_yy / e_xy | refined theta deg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['noise']:g} | {r['variant']} | {r['attempts']} | {r['epochs']} | "
            f"{r['fit_s']:.0f} | {r['sensitivity']:.3f} | {r['spots']} | "
            f"{strain_cell(r, 'encoder')} | {strain_cell(r, 'refined')} | "
            f"{r['refined_mae_theta_deg']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from _meta import run_meta, write

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[25.0, 50.0])
    ap.add_argument(
        "--variants",
        type=json.loads,
        default=VARIANTS,
        help="JSON list of CCSTAE option dicts (default: the module docs' list)",
    )
    ap.add_argument("--scan", type=int, default=64, help="scan side (64)")
    ap.add_argument("--out", default="docs/benchmark_results", help="output folder")
    args = ap.parse_args(argv)
    if not isinstance(args.variants, list) or not all(
        isinstance(v, dict) for v in args.variants
    ):
        ap.error("--variants must be a JSON list of objects")
    result = {
        **run_meta("training_options.py", argv),
        "scan": args.scan,
        "rows": run(args.levels, args.variants, args.scan),
    }
    md = markdown(result)
    write(Path(args.out), "training_options", result, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
