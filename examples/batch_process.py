#!/usr/bin/env python
"""Map strain in every 4D-STEM file of a folder with one CC-ST-AE model.

For facility staff: point it at a folder of py4DSTEM/EMD files (one scan
each) and it writes, for every file, a strain map readable by plain py4DSTEM,
plus a summary table.

What it does
------------
1. Lists ``FOLDER/PATTERN`` (default ``*.h5``), sorted by name. Outputs of
   this script (``*_ccstae.h5``) are never taken as inputs.
2. The model: ``--model FILE`` (anything ``CCSTAE.load`` reads, e.g. a
   ``py4dstem-ccstae fit`` output) or, without it, a model trained on the
   first file that reads (``py4dstem-ccstae fit``; later files are only
   predicted). The trained model is also saved as ``OUT/ccstae_model.h5``; a
   later run reuses that file instead of training again (``--force``
   retrains).
3. For every file: ``OUT/<stem>_ccstae.h5`` holding the RealSlice
   ``ccstae/ccstae_strain`` (``e_xx, e_yy, e_xy, theta, mask, class,
   error``; strains as fractions, ``theta`` in radians, py4DSTEM's
   conventions), optionally ``OUT/<stem>_ccstae.png`` (``--plots``).
   Existing outputs are skipped unless ``--force``.
4. A file that fails (unreadable, no DataCube, reference outside the scan,
   ...) is reported and the run goes on.
5. ``OUT/summary.csv``: one row per file with ``status`` (``fitted``,
   ``predicted``, ``skipped``, ``failed``), the output path, the time (s),
   the scan shape, the median ``e_xx, e_yy, e_xy`` (fractions) and
   ``theta`` (degrees) over the scan, and the error message of a failed file.

Exit code: 0 if every file was processed or skipped, 1 if any failed, 2 for
bad arguments.

Examples
--------
Train on the first scan, apply to all, reference = top-left 10x10 positions::

    python examples/batch_process.py /data/session42 --reference 0:10,0:10

Use an existing model, only the files of one sample, outputs elsewhere::

    python examples/batch_process.py /data/session42 --pattern "sampleB_*.h5" \\
        --model /models/si_ccstae.h5 --out /scratch/strain --plots

Read a result::

    import py4DSTEM
    strain = py4DSTEM.read("OUT/scan01_ccstae.h5", datapath="ccstae/ccstae_strain")
    py4DSTEM.visualize.show_strain(strain, vrange=[-2, 2], vrange_theta=[-3, 3])
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np

MODEL_FILE = "ccstae_model.h5"
SUMMARY_FILE = "summary.csv"
COLUMNS = (
    "input",
    "status",
    "output",
    "seconds",
    "scan_rx",
    "scan_ry",
    "median_e_xx",
    "median_e_yy",
    "median_e_xy",
    "median_theta_deg",
    "message",
)


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            )
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    from py4dstem_ccstae.cli import config_option, reference_arg

    p = argparse.ArgumentParser(
        prog="batch_process.py",
        description=(
            "Map strain with one CC-ST-AE model in every py4DSTEM/EMD file of FOLDER "
            "matching PATTERN; write OUT/<stem>_ccstae.h5 per file and OUT/summary.csv. "
            "Trains on the first readable file unless --model is given. Existing "
            "outputs are skipped unless --force; failed files are reported and "
            "skipped."
        ),
    )
    p.add_argument("folder", metavar="FOLDER", help="folder holding the input files")
    p.add_argument(
        "--pattern", default="*.h5", help="glob pattern of the inputs in FOLDER ('*.h5')"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output folder, created if missing (default: FOLDER/ccstae)",
    )
    p.add_argument(
        "--model",
        metavar="FILE",
        help="use this saved model instead of training one on the first file",
    )
    p.add_argument(
        "--datapath",
        metavar="P",
        help="DataCube datapath inside each file (default: each file's only DataCube)",
    )
    ref = p.add_mutually_exclusive_group()
    ref.add_argument(
        "--reference",
        type=reference_arg,
        metavar="R0:R1,C0:C1",
        help="reference region of every scan: rows R0..R1-1, columns C0..C1-1 "
        "(default: all positions)",
    )
    ref.add_argument(
        "--reference-mask",
        metavar="FILE",
        help=".npy bool array of the scan shape, used for every file",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA if available",
    )
    p.add_argument(
        "--epochs", type=_count(1), default=None, metavar="N", help="training epochs (30)"
    )
    p.add_argument(
        "--refine-steps",
        type=_count(0),
        default=None,
        metavar="N",
        help="per-pattern refinement steps (default: CCSTAE's; 0: none)",
    )
    p.add_argument(
        "--set",
        type=config_option,
        action="append",
        metavar="KEY=VALUE",
        help="any CCSTAE option for training (docs: Configuration), repeatable, as "
        "in 'py4dstem-ccstae fit --set'",
    )
    p.add_argument("--seed", type=_count(0), default=0, metavar="N", help="random seed (0)")
    p.add_argument("--plots", action="store_true", help="also write <stem>_ccstae.png")
    p.add_argument(
        "--force", action="store_true", help="redo existing outputs (and retrain)"
    )
    return p


def _medians(strain) -> dict:
    """Median strain components over the scan (fractions; theta in degrees)."""
    med = {
        k: float(np.nanmedian(strain.get_slice(k).data)) for k in ("e_xx", "e_yy", "e_xy")
    }
    med["theta_deg"] = float(np.degrees(np.nanmedian(strain.get_slice("theta").data)))
    return {f"median_{k}": f"{v:.6g}" for k, v in med.items()}


def _write_summary(path: Path, rows: list[dict]) -> None:
    from py4dstem_ccstae.io import atomic_write

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    with atomic_write(path, overwrite=True, argname="summary") as tmp:
        Path(tmp).write_text(buf.getvalue())


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the batch; returns the exit code (0 ok, 1 some files failed, 2 bad args)."""
    import matplotlib

    matplotlib.use("Agg")
    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.cli import OUTPUT_SUFFIX, run_fit, run_predict

    args = build_parser().parse_args(argv)
    folder = Path(args.folder)
    out = Path(args.out) if args.out else folder / "ccstae"
    if not folder.is_dir():
        print(
            f"batch_process.py: error: FOLDER {str(folder)!r} is not a folder",
            file=sys.stderr,
        )
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"batch_process.py: error: --out: {_one_line(err)}", file=sys.stderr)
        return 2
    model_file = out / MODEL_FILE
    excluded = {model_file.resolve(), (out / SUMMARY_FILE).resolve()}
    files = [
        f
        for f in sorted(folder.glob(args.pattern))
        if f.is_file()
        and not f.name.endswith(OUTPUT_SUFFIX)
        and f.resolve() not in excluded
    ]
    if not files:
        print(
            f"batch_process.py: error: no files match {args.pattern!r} in {str(folder)!r}",
            file=sys.stderr,
        )
        return 2

    model = None
    if args.model or (model_file.exists() and not args.force):
        source = Path(args.model) if args.model else model_file
        try:
            model = CCSTAE.load(source, device=args.device)
        except ValueError as err:
            print(f"batch_process.py: error: --model: {err}", file=sys.stderr)
            return 2
        print(f"model: {source}")

    common = dict(
        datapath=args.datapath,
        reference=args.reference,
        reference_mask=args.reference_mask,
        device=args.device,
        force=args.force,
    )
    refine = dict(args.set or [])
    if args.refine_steps is not None:
        refine.update(refine=args.refine_steps > 0, refine_steps=max(args.refine_steps, 1))
    try:
        CCSTAE(**refine)  # a bad option fails here, not after the first file
    except (TypeError, ValueError) as err:
        print(f"batch_process.py: error: --set: {err}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    t_all = time.perf_counter()
    for i, f in enumerate(files, 1):
        target = out / (f.stem + OUTPUT_SUFFIX)
        plot = out / (f.stem + "_ccstae.png") if args.plots else None
        row = {"input": str(f), "output": str(target)}
        print(f"[{i}/{len(files)}] {f.name}: ", end="", flush=True)
        if target.exists() and not args.force:
            row.update(status="skipped", message="output exists (use --force to redo)")
            print("skipped (output exists)")
            rows.append(row)
            continue
        t0 = time.perf_counter()
        try:
            if model is None:
                res = run_fit(
                    f,
                    out=target,
                    plot=plot,
                    epochs=args.epochs,
                    seed=args.seed,
                    progress=False,
                    config=refine,
                    **common,
                )
                model = res["model"]
                model.save(model_file, overwrite=True)
                row["status"] = "fitted"
                row["message"] = f"model trained here, saved as {model_file}"
            else:
                res = run_predict(model, f, out=target, plot=plot, **common)
                row["status"] = "predicted"
        except Exception as err:  # report the bad file and go on with the others
            row.update(status="failed", output="", message=_one_line(err))
            print(f"FAILED: {row['message']}")
        else:
            row.update(
                scan_rx=res["scan_shape"][0],
                scan_ry=res["scan_shape"][1],
                **_medians(res["strain"]),
            )
            print(f"{row['status']} -> {target.name}")
        row["seconds"] = f"{time.perf_counter() - t0:.2f}"
        rows.append(row)

    summary = out / SUMMARY_FILE
    _write_summary(summary, rows)
    counts = {
        s: sum(r["status"] == s for r in rows)
        for s in ("fitted", "predicted", "skipped", "failed")
    }
    print(
        f"done in {time.perf_counter() - t_all:.1f} s: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + f"; summary: {summary}"
    )
    for r in rows:
        if r["status"] == "failed":
            print(f"  failed: {r['input']}: {r['message']}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
