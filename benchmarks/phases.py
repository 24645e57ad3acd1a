"""Several bases: sample and vacuum, or two crystals, in one scan.

Run from the repository root::

    python benchmarks/phases.py [--levels 0 50] [--scan 64] [--out DIR]

Data: :func:`py4dstem_ccstae.simulate.phase_mixture` (``scan x scan`` scan,
128x128 patterns, seed 0), a disk covering about 28 % of the scan of the
second phase inside the first, with ``add_background_noise(level, seed=0)``:

* ``Si + vacuum``: a Si polycrystal with a hole (vacuum: the direct beam
  alone), the commonest reason to need more than one base;
* ``Si + MoS2``: two crystals with different lattices and symmetries.

For each case and level, ``CCSTAE(num_bases=2)`` is trained (seed 0, the
default retries) and scored against the truth: the class map's agreement
with the true phase (each class mapped to the phase most of its positions
belong to), whether the vacuum class is reported invalid (``mask`` 0), and
the strain MAE of each crystalline phase over its own positions, every
phase relative to its own reference grain (the ``reference`` slice of the
truth). ``num_bases=1`` on ``Si + vacuum`` is run once per level for
comparison (one base must then explain the vacuum too). py4DSTEM's pipeline
is not run here: this script checks the classes, not the comparison.

Writes ``phases.json`` and ``phases.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

CASES = {"Si + vacuum": ("Si", "vacuum"), "Si + MoS2": ("Si", "MoS2")}
KEYS = ("e_xx", "e_yy", "e_xy")


def score(model, dc, truth, seconds: float) -> dict:
    """Class agreement, validity and per-phase MAE of one fitted model."""
    phase = truth.get_slice("phase").data.astype(int)
    ref = truth.get_slice("reference").data.astype(bool)
    materials = list(truth.metadata["simulation"]["materials"])
    rs = model.strain_map(dc, reference=ref)
    cls = rs.get_slice("class").data.astype(int)
    valid = rs.get_slice("mask").data > 0
    # each class -> the phase most of its positions belong to
    to_phase = {int(k): int(np.bincount(phase[cls == k]).argmax()) for k in np.unique(cls)}
    predicted = np.vectorize(to_phase.get)(cls)
    row = {
        "attempts": len(model.fitted_["attempts"]),
        "epochs": len(model.history_),
        "fit_s": seconds,
        "sensitivity": model.fitted_["encoder_sensitivity"]["mean"],
        "class_agreement": float((predicted == phase).mean()),
        "classes_used": len(to_phase),
    }
    for p, material in enumerate(materials):
        where = phase == p
        if material == "vacuum":
            row["vacuum_invalid"] = float((~valid[where]).mean())
            continue
        row[f"{material}_valid"] = float(valid[where].mean())
        for k in KEYS:
            err = np.abs(rs.get_slice(k).data - truth.get_slice(k).data)[where]
            # an invalid crystal position counts with 0 strain (as the MAE
            # over all pixels of the benchmark)
            err = np.where(np.isnan(err), np.abs(truth.get_slice(k).data[where]), err)
            row[f"{material}_mae_{k}"] = float(err.mean())
    return row


def run(levels, scan: int = 64) -> list[dict]:
    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.simulate import add_background_noise, phase_mixture

    rows = []
    for case, materials in CASES.items():
        clean, truth = phase_mixture((scan, scan), (128, 128), materials=materials, seed=0)
        for level in levels:
            dc = add_background_noise(clean, level, seed=0) if level else clean
            bases = (2, 1) if "vacuum" in materials else (2,)
            for k in bases:
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", RuntimeWarning)
                    model = CCSTAE(num_bases=k).fit(dc, seed=0, progress=False)
                row = {"case": case, "noise": level, "num_bases": k}
                row.update(score(model, dc, truth, time.perf_counter() - t0))
                row["lock_on_warning"] = any("lock on" in str(w.message) for w in caught)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def _mae(row: dict, material: str) -> str:
    if f"{material}_mae_e_xx" not in row:
        return "-"
    return " / ".join(f"{1e3 * row[f'{material}_mae_{k}']:.2f}" for k in KEYS)


def markdown(result: dict) -> str:
    lines = [
        "# Several bases: phases and vacuum",
        "",
        f"Command: `{result['command']}`; {result['date']}; {result['machine']}; "
        f"torch threads {result['threads']}; git {result['git']}.",
        "",
        f"`phase_mixture`, {result['scan']}x{result['scan']} scan, 128x128 patterns, "
        "seed 0: a disk (about 28 % of the scan) of the second phase inside the "
        "first. One training per row (seed 0, default retries). 'agreement': "
        "fraction of positions whose class maps to their true phase; 'vacuum "
        "invalid': fraction of vacuum positions reported invalid (mask 0); strain "
        "MAE x1e-3 (e_xx / e_yy / e_xy) over each crystal's own positions, each "
        "relative to its own reference grain; 'Si valid': fraction of Si positions "
        "with a strain value.",
        "",
        "| case | noise % | num_bases | attempts | fit s | sensitivity | agreement | "
        "vacuum invalid | Si valid | Si MAE | MoS2 MAE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        vac = f"{r['vacuum_invalid']:.3f}" if "vacuum_invalid" in r else "-"
        lines.append(
            f"| {r['case']} | {r['noise']:g} | {r['num_bases']} | {r['attempts']} | "
            f"{r['fit_s']:.0f} | {r['sensitivity']:.3f} | {r['class_agreement']:.3f} | "
            f"{vac} | {r['Si_valid']:.3f} | {_mae(r, 'Si')} | {_mae(r, 'MoS2')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from _meta import run_meta, write

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.0, 50.0])
    ap.add_argument("--scan", type=int, default=64, help="scan side (64)")
    ap.add_argument("--out", default="docs/benchmark_results", help="output folder")
    args = ap.parse_args(argv)
    result = {
        **run_meta("phases.py", argv),
        "scan": args.scan,
        "rows": run(args.levels, args.scan),
    }
    md = markdown(result)
    write(Path(args.out), "phases", result, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
