#!/usr/bin/env python
"""Map strain in every 4D-STEM file of a folder with one CC-ST-AE model.

For facility staff: point it at a folder of py4DSTEM/EMD files (one scan
each) and it writes, for every file, a strain map readable by plain py4DSTEM,
plus a summary table. A short use of the library's workflows:
:func:`~py4dstem_ccstae.workflows.run_fit` for the model,
:func:`~py4dstem_ccstae.workflows.predict_batch` for the scans; the options
shared with ``py4dstem-ccstae fit`` are declared by
:mod:`py4dstem_ccstae.cli_options`.

What it does
------------
1. Lists ``FOLDER/PATTERN`` (default ``*.h5``), sorted by name. Outputs of
   this script (``*_ccstae.h5``) are never taken as inputs.
2. The model: ``--model FILE`` (anything ``CCSTAE.load`` reads, e.g. a
   ``py4dstem-ccstae fit`` output) or, without it, a model trained on the
   first file that reads (``run_fit``; later files are only predicted). The
   trained model is also saved as ``OUT/ccstae_model.h5``; a later run
   reuses that file instead of training again (``--force`` retrains).
3. For every file: ``OUT/<stem>_ccstae.h5`` holding the RealSlice
   ``ccstae/ccstae_strain`` (``e_xx, e_yy, e_xy, theta, mask, class,
   error``; strains as fractions, ``theta`` in radians, py4DSTEM's
   conventions), optionally ``OUT/<stem>_ccstae.png`` (``--plots``).
   Existing outputs are skipped unless ``--force``.
4. A file that fails (unreadable, no DataCube, reference outside the scan,
   ...) is reported and the run goes on (``predict_batch`` does this).
5. ``OUT/summary.csv``: one row per file with ``status`` (``fitted``,
   ``predicted``, ``skipped``, ``failed``), the output path, the time (s),
   the scan shape, the median ``e_xx, e_yy, e_xy`` (fractions) and
   ``theta`` (degrees) over the scan (read back from the output), and the
   error message of a failed file.

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


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (see the module docstring)."""
    from py4dstem_ccstae import cli_options as opt

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
    opt.add_scan_options(p)  # --datapath, --reference | --reference-mask, --frame
    opt.add_device_option(p, "training and inference")
    opt.add_training_options(p)  # --epochs, --seed, --refine-steps
    opt.add_config_option(p)  # --set KEY=VALUE
    p.add_argument("--plots", action="store_true", help="also write <stem>_ccstae.png")
    p.add_argument(
        "--force", action="store_true", help="redo existing outputs (and retrain)"
    )
    return p


def _error(message: str) -> int:
    print(f"batch_process.py: error: {message}", file=sys.stderr)
    return 2


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _inputs(folder: Path, pattern: str, out: Path) -> list[Path]:
    """The files to map: ``folder/pattern``, sorted, without this script's outputs."""
    from py4dstem_ccstae.workflows import OUTPUT_SUFFIX

    excluded = {(out / MODEL_FILE).resolve(), (out / SUMMARY_FILE).resolve()}
    return [
        f
        for f in sorted(folder.glob(pattern))
        if f.is_file()
        and not f.name.endswith(OUTPUT_SUFFIX)
        and f.resolve() not in excluded
    ]


def _medians(strain) -> dict:
    """Median strain components over the scan (fractions; theta in degrees)."""
    med = {
        k: float(np.nanmedian(strain.get_slice(k).data)) for k in ("e_xx", "e_yy", "e_xy")
    }
    med["theta_deg"] = float(np.degrees(np.nanmedian(strain.get_slice("theta").data)))
    return {f"median_{k}": f"{v:.6g}" for k, v in med.items()}


def _mapped(row: dict, scan_shape, strain, seconds: float) -> None:
    """Fill a summary row of a mapped file."""
    row.update(scan_rx=scan_shape[0], scan_ry=scan_shape[1], **_medians(strain))
    row["seconds"] = f"{seconds:.2f}"


def _write_summary(path: Path, rows: list[dict]) -> None:
    from py4dstem_ccstae.io import atomic_write

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    with atomic_write(path, overwrite=True, argname="summary") as tmp:
        Path(tmp).write_text(buf.getvalue())


def _fit_first(
    todo: list[Path], rows: dict, out: Path, args, config: dict, scan: dict, say
):
    """Train on the first file of ``todo`` that reads (taken off ``todo``); None if none."""
    from py4dstem_ccstae.workflows import run_fit

    while todo:
        f, t0 = todo.pop(0), time.perf_counter()
        try:
            res = run_fit(
                f,
                out=rows[f]["output"],
                plot=Path(rows[f]["output"]).with_suffix(".png") if args.plots else None,
                epochs=args.epochs,
                seed=args.seed,
                progress=False,
                config=config,
                **scan,
            )
        except Exception as err:  # report the bad file and go on with the others
            rows[f].update(status="failed", output="", message=_one_line(err))
            rows[f]["seconds"] = f"{time.perf_counter() - t0:.2f}"
            say(f, f"FAILED: {rows[f]['message']}")
            continue
        model_file = out / MODEL_FILE
        res["model"].save(model_file, overwrite=True)
        rows[f].update(
            status="fitted", message=f"model trained here, saved as {model_file}"
        )
        _mapped(rows[f], res["scan_shape"], res["strain"], time.perf_counter() - t0)
        say(f, f"fitted -> {Path(rows[f]['output']).name}")
        return res["model"]
    return None


def _predict_rest(model, todo: list[Path], rows: dict, out: Path, args, scan: dict, say):
    """Map ``todo`` with ``predict_batch``; fill each file's row as soon as it is done."""
    import py4DSTEM

    from py4dstem_ccstae.workflows import STRAIN_DATAPATH, predict_batch

    def report(rec: dict) -> None:
        row = rows[rec["input"]]
        if rec["ok"]:
            strain = py4DSTEM.read(str(rec["output"]), datapath=STRAIN_DATAPATH)
            row["status"] = "predicted"
            _mapped(row, rec["scan_shape"], strain, rec["seconds"])
            say(rec["input"], f"predicted -> {rec['output'].name}")
        else:
            row.update(status="failed", output="", message=rec["error"])
            row["seconds"] = f"{rec['seconds']:.2f}"
            say(rec["input"], f"FAILED: {rec['error']}")

    if todo:
        predict_batch(model, todo, out_dir=out, plot=args.plots, report=report, **scan)


def main(argv: list[str] | None = None) -> int:
    """Run the batch; returns the exit code (0 ok, 1 some files failed, 2 bad args)."""
    import matplotlib

    matplotlib.use("Agg")
    from py4dstem_ccstae import CCSTAE
    from py4dstem_ccstae.cli_options import predict_options, training_config
    from py4dstem_ccstae.workflows import OUTPUT_SUFFIX

    args = build_parser().parse_args(argv)
    folder = Path(args.folder)
    out = Path(args.out) if args.out else folder / "ccstae"
    if not folder.is_dir():
        return _error(f"FOLDER {str(folder)!r} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return _error(f"--out: {_one_line(err)}")
    files = _inputs(folder, args.pattern, out)
    if not files:
        return _error(f"no files match {args.pattern!r} in {str(folder)!r}")
    rows = {
        f: {"input": str(f), "output": str(out / (f.stem + OUTPUT_SUFFIX))} for f in files
    }
    if len({r["output"] for r in rows.values()}) < len(files):
        return _error("two input files have the same name stem (one output each)")
    try:
        config = training_config(args.set, args.refine_steps)
        CCSTAE(**config)  # a bad option fails here, not after the first file
    except (TypeError, ValueError) as err:
        return _error(f"--set: {err}")
    model = None
    if args.model or ((out / MODEL_FILE).exists() and not args.force):
        source = Path(args.model) if args.model else out / MODEL_FILE
        try:
            model = CCSTAE.load(source, device=args.device)
        except ValueError as err:
            return _error(f"--model: {err}")
        print(f"model: {source}")

    scan = predict_options(args)
    number = {f: i for i, f in enumerate(files, 1)}

    def say(f: Path, text: str) -> None:
        print(f"[{number[f]}/{len(files)}] {f.name}: {text}")

    t_all = time.perf_counter()
    todo = []
    for f in files:
        if Path(rows[f]["output"]).exists() and not args.force:
            rows[f].update(status="skipped", message="output exists (use --force to redo)")
            say(f, "skipped (output exists)")
        else:
            todo.append(f)
    if model is None:
        model = _fit_first(todo, rows, out, args, config, scan, say)
    _predict_rest(model, todo, rows, out, args, scan, say)

    summary = out / SUMMARY_FILE
    _write_summary(summary, list(rows.values()))
    counts = {
        s: sum(r["status"] == s for r in rows.values())
        for s in ("fitted", "predicted", "skipped", "failed")
    }
    print(
        f"done in {time.perf_counter() - t_all:.1f} s: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + f"; summary: {summary}"
    )
    for r in rows.values():
        if r["status"] == "failed":
            print(f"  failed: {r['input']}: {r['message']}", file=sys.stderr)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
