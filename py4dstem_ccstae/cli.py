"""The ``py4dstem-ccstae`` command line (parsing and reporting only).

Sub-commands
------------
``demo``
    Simulates a Si polycrystal, adds the paper's background noise, maps it
    with py4DSTEM's own strain pipeline and with a CC-ST-AE trained on it,
    prints both errors against the ground truth and writes one EMD file
    (DataCube, truth, both strain maps, the model) and ``show_strain``
    figures (:mod:`~py4dstem_ccstae.demo`).
``benchmark``
    CC-ST-AE vs py4DSTEM on simulated data across noise levels (tables, plots,
    full-rotation and dynamical cases; :mod:`~py4dstem_ccstae.benchmark`).
``fit INPUT``
    Trains a CC-ST-AE on a py4DSTEM/EMD or raw 4D-STEM file and writes its
    strain map and the model to one EMD file
    (:func:`~py4dstem_ccstae.workflows.run_fit`).
``predict MODEL INPUT [INPUT ...]``
    Applies a saved model to new scans, one output each
    (:func:`~py4dstem_ccstae.workflows.run_predict`,
    :func:`~py4dstem_ccstae.workflows.predict_batch`), optionally on a dask
    cluster (``--scheduler``, ``--workers``).

Each command has its parser builder (``_add_demo``, ...); the argument types
and shared option groups are in :mod:`~py4dstem_ccstae.cli_options`. Bad
arguments print one line and exit with code 2; outputs are written
atomically and never overwrite existing files without ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .cli_options import (  # config_option, reference_arg: re-exported
    Parser,
    add_config_option,
    add_device_option,
    add_output_options,
    add_scan_options,
    add_training_options,
    config_option,
    int_at_least,
    json_object,
    percent,
    percentages,
    predict_options,
    reference_arg,
    training_config,
)
from .demo import demo_output, run_demo, write_demo
from .workflows import (  # re-exported: the command line's workflows
    FORCE_HINT,  # noqa: F401
    OUTPUT_SUFFIX,
    STRAIN_DATAPATH,  # noqa: F401
    default_output,
    parse_reference,
    predict_batch,
    run_fit,
    run_predict,
    write_strain_plot,
)

__all__ = [
    "build_parser",
    "config_option",
    "default_output",
    "main",
    "parse_reference",
    "reference_arg",
    "run_fit",
    "run_predict",
    "write_strain_plot",
]


# ------------------------------------------------------------------ commands
#: The demo's table rows: label and key of :attr:`DemoResult.errors
#: <py4dstem_ccstae.demo.DemoResult.errors>`.
_DEMO_ROWS = (
    ("CC-ST-AE", "ccstae"),
    ("py4DSTEM (rotation-free truth)", "py4dstem"),
    ("py4DSTEM (vs its own formulas)", "py4dstem_linear"),
)


def _demo(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    try:
        emd = demo_output(args.out, force=args.force)
    except FileExistsError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = run_demo(args.scan, args.noise, seed=args.seed, report=print)
    _print_demo_errors(result.errors)
    datapath = write_demo(result, emd, force=args.force, report=print)
    print(f"done in {time.perf_counter() - t0:.0f} s; read back with")
    print(f"  py4DSTEM.read('{emd}', datapath='{datapath}')")
    return 0


def _print_demo_errors(errors: dict) -> None:
    """MAE of both methods against the truth (x1e-3; theta in degrees), one row each."""
    print("\nMAE vs ground truth (x1e-3; theta in degrees), all scan positions:")
    print(f"{'method':<34}{'e_xx':>8}{'e_yy':>8}{'e_xy':>8}{'theta':>8}{'valid':>8}")
    for name, key in _DEMO_ROWS:
        e = errors[key]
        print(
            f"{name:<34}{e['mae_e_xx'] * 1e3:8.2f}{e['mae_e_yy'] * 1e3:8.2f}"
            f"{e['mae_e_xy'] * 1e3:8.2f}{e['mae_theta_deg']:8.3f}{e['valid_fraction']:8.2f}"
        )


def _benchmark_command(argv: list[str]) -> str:
    """The command line that ran ``benchmark`` with ``argv``, shell-quoted."""
    import shlex

    prog = ["py4dstem-ccstae"]
    if sys.argv[1:] == argv and Path(sys.argv[0]).name in ("cli.py", "__main__.py"):
        prog = ["python", "-m", "py4dstem_ccstae.cli"]
    return shlex.join([*prog, *argv])


def _benchmark(args) -> int:
    from .benchmark import (
        PAPER_LEVELS,
        QUICK,
        existing_outputs,
        run_benchmark,
        write_results,
    )
    from .estimator import DEFAULT_CONFIG

    quick = QUICK if args.quick else {}
    scan = args.scan or quick.get("scan", 64)
    levels = args.levels if args.levels is not None else quick.get("levels", PAPER_LEVELS)
    unknown = sorted(set(args.ccstae_config or {}) - set(DEFAULT_CONFIG))
    if unknown:
        print(
            f"benchmark: unknown CC-ST-AE option(s) {unknown}; "
            f"known: {sorted(DEFAULT_CONFIG)}",
            file=sys.stderr,
        )
        return 2
    existing = existing_outputs(args.out)
    if existing and not args.force:
        names = ", ".join(p.name for p in existing)
        print(
            f"benchmark: {args.out} already holds results ({names}); "
            "pass --force to replace them",
            file=sys.stderr,
        )
        return 2
    command = _benchmark_command(["benchmark", *args.argv_])
    print(f"running: {command}", file=sys.stderr)
    result = run_benchmark(
        scan,
        levels,
        seed=args.seed,
        rotation=not args.no_rotation,
        dynamical=not args.no_dynamical,
        dynamical_grains=quick.get("dynamical_grains"),
        ccstae_config=args.ccstae_config,
        progress=True,
    )
    paths = write_results(result, args.out, command, force=args.force)
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in result.rows if r["error"]]
    for r in failed:
        print(
            f"warning: {r['method']} failed ({r['case']}, {r['noise']:g} %): {r['error']}",
            file=sys.stderr,
        )
    return 0


# ------------------------------------------------------------- fit / predict
def _fail(command: str, err: Exception) -> int:
    msg = " ".join(str(err).split())
    print(f"py4dstem-ccstae {command}: error: {msg}", file=sys.stderr)
    return 2


def _report(res: dict, what: str) -> None:
    """What ``fit`` or one ``predict`` did: the data, the times, the files."""
    sx, sy = res["scan_shape"]
    qx, qy = res["pattern_shape"]
    print(f"{what}: {sx}x{sy} scan of {qx}x{qy} patterns from {res['input']}")
    if "train_seconds" in res:
        print(f"trained in {res['train_seconds']:.1f} s; ", end="")
    print(f"total {res['seconds']:.1f} s")
    if what == "fit":
        _report_training(res.get("model"))
    out = res["output"]
    print(f"strain: {out}  ->  py4DSTEM.read('{out}', datapath='{res['strain_datapath']}')")
    if what == "fit":
        print(f"model:  {out}  ->  py4dstem_ccstae.CCSTAE.load('{out}')")
    if res["plot"] is not None:
        print(f"plot:   {res['plot']}")


def _report_training(model) -> None:
    """The fit's lock-on (attempts, encoder sensitivity) and the spots of each base."""
    fitted = getattr(model, "fitted_", None) or {}
    if fitted.get("attempts"):
        n, sens = len(fitted["attempts"]), fitted["encoder_sensitivity"]["mean"]
        print(f"lock-on: {n} training attempt(s), encoder sensitivity {sens:.2f}")
    if not fitted:
        return
    spots = fitted.get("spots") or []
    thr = model.config["spot_threshold"]
    per_base = fitted.get("base_spots") or [spots]
    if len(per_base) > 1:
        counts = ", ".join(
            f"base {k}: {len(sp)}" if sp else f"base {k}: none (invalid)"
            for k, sp in enumerate(per_base)
        )
        print(f"spots:  {counts} (spot_threshold {thr:g})")
    elif not spots:
        print("spots:  fewer than 2 spots found on the base: no refinement")
    elif not model.config["refine"]:
        print(f"spots:  {len(spots)} spots on the base; refinement off (refine=false)")
    else:
        print(f"spots:  {len(spots)} spots of the base refined (spot_threshold {thr:g})")


def _fit(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    try:
        res = run_fit(
            args.input,
            datapath=args.datapath,
            reference=args.reference,
            reference_mask=args.reference_mask,
            braggvectors=args.braggvectors,
            device=args.device,
            out=args.out,
            plot=args.plot,
            epochs=args.epochs,
            seed=args.seed,
            force=args.force,
            config=training_config(args.set, args.refine_steps),
            checkpoint=args.checkpoint,
            resume=args.resume,
            frame=args.frame,
        )
    except (ValueError, FileExistsError) as err:
        return _fail("fit", err)
    _report(res, "fit")
    return 0


@contextlib.contextmanager
def _cluster(scheduler: str | None, workers: int | None) -> Iterator[object]:
    """A dask client for ``--scheduler`` / ``--workers`` (None for neither)."""
    if scheduler is None and workers is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a py4DSTEM dependency
        raise ValueError("--scheduler/--workers need dask.distributed installed") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=30)
        except OSError as err:
            raise ValueError(
                f"--scheduler: cannot connect to {scheduler!r} ({err})"
            ) from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _predict(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    inputs = args.input
    try:
        if len(inputs) > 1 and (args.out or args.plot):
            raise ValueError(
                "--out/--plot: only with one INPUT; with several, outputs go beside "
                "each input or into --out-dir (and --plot-all writes their PNGs)"
            )
        if args.out_dir is not None and (args.out or args.plot):
            raise ValueError("--out-dir: give either --out/--plot or --out-dir")
        with _cluster(args.scheduler, args.workers) as client:
            scans = dict(predict_options(args), client=client)
            if len(inputs) == 1 and args.out_dir is None:
                res = run_predict(
                    args.model, inputs[0], out=args.out, plot=args.plot, **scans
                )
                _report(res, "predict")
                return 0
            records = predict_batch(
                args.model,
                inputs,
                out_dir=args.out_dir,
                plot=args.plot_all,
                report=_report_scan,
                **scans,
            )
    except (ValueError, FileExistsError) as err:
        return _fail("predict", err)
    failed = [r for r in records if not r["ok"]]
    print(f"predict: {len(records) - len(failed)} of {len(records)} scans mapped", end="")
    print(f", {len(failed)} failed" if failed else "")
    return 1 if failed else 0


def _report_scan(rec: dict) -> None:
    """One line per scan of a batch."""
    if rec["ok"]:
        sx, sy = rec["scan_shape"]
        print(
            f"ok      {rec['input']} ({sx}x{sy}, {rec['seconds']:.1f} s) -> {rec['output']}"
        )
    else:
        print(f"FAILED  {rec['input']}: {rec['error']}", file=sys.stderr)


# ------------------------------------------------------------------- parsers
def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="simulate a noisy polycrystal and map its strain (built-in data, no input)",
        description=(
            "Simulate a Si polycrystal with ground truth, add background noise, run "
            "py4DSTEM's strain pipeline and the CC-ST-AE, print MAE vs truth for both "
            "and write DIR/demo.h5 (DataCube + truth + both strain maps + the model) "
            "and DIR/strain_*.png."
        ),
    )
    demo.add_argument("--out", default="demo_out", metavar="DIR", help="output folder")
    demo.add_argument(
        "--scan", type=int_at_least(2), default=48, metavar="N", help="scan size N x N (48)"
    )
    demo.add_argument(
        "--noise",
        type=percent,
        default=25.0,
        metavar="PCT",
        help="background noise %% (25)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--force", action="store_true", help="overwrite DIR/demo.h5")
    demo.set_defaults(func=_demo)


def _add_benchmark(sub) -> None:
    from .benchmark import DYNAMICAL_LEVELS, PAPER_LEVELS, QUICK

    bench = sub.add_parser(
        "benchmark",
        help="CC-ST-AE vs py4DSTEM on simulated data across noise levels",
        description=(
            "The paper's Figure 3 protocol: simulate a Si polycrystal (64x64 scan, "
            "128x128 patterns), add the paper's background noise at "
            + ", ".join(f"{v:g}" for v in PAPER_LEVELS)
            + " %, run CC-ST-AE and py4DSTEM's pipeline on identical data in one "
            "process; also a full-rotation case (clean) and a dynamical (Bloch-wave) "
            "case at " + ", ".join(f"{v:g}" for v in DYNAMICAL_LEVELS) + " %. Writes "
            "DIR/benchmark.md, .csv, .json, DIR/mae_vs_noise.png and "
            "DIR/strain_maps.png; existing results are never replaced without "
            "--force. The full run is long on a CPU: time one level first "
            "(--levels 25 --no-rotation --no-dynamical)."
        ),
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help=f"reduced run for CI: {QUICK['scan']}x{QUICK['scan']} scan, noise "
        + ",".join(f"{v:g}" for v in QUICK["levels"])
        + f" %%, dynamical case with {QUICK['dynamical_grains']} grains",
    )
    bench.add_argument(
        "--scan",
        type=int_at_least(2),
        default=None,
        metavar="N",
        help=f"scan size N x N for every case (64; --quick {QUICK['scan']})",
    )
    bench.add_argument(
        "--levels",
        type=percentages,
        default=None,
        metavar="P,P,..",
        help="noise percentages of the sweep (the paper's 13 levels)",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed (0)")
    bench.add_argument(
        "--no-rotation", action="store_true", help="skip the full-rotation case"
    )
    bench.add_argument(
        "--no-dynamical", action="store_true", help="skip the dynamical (Bloch-wave) case"
    )
    bench.add_argument(
        "--ccstae-config",
        type=json_object,
        default=None,
        metavar="JSON",
        help="CC-ST-AE option overrides, e.g. '{\"epochs\": 10}' (the model defaults)",
    )
    bench.add_argument(
        "--out", default="benchmark_out", metavar="DIR", help="output folder"
    )
    bench.add_argument("--force", action="store_true", help="replace existing results")
    bench.set_defaults(func=_benchmark)


def _add_input(p: argparse.ArgumentParser, several: bool = False) -> None:
    """The positional INPUT (one, or with ``several`` one or more)."""
    p.add_argument(
        "input",
        metavar="INPUT",
        nargs="+" if several else None,
        help="py4DSTEM/EMD file (calibration read from it) or a raw 4D-STEM file "
        "py4DSTEM.import_file reads (.dm4, .mib, .raw, ...)"
        + ("; several: one output per scan, a failed scan is reported" if several else ""),
    )


def _add_fit(sub) -> None:
    fit = sub.add_parser(
        "fit",
        help="train a CC-ST-AE on a 4D-STEM file and map its strain",
        description=(
            "Train a CC-ST-AE on INPUT and write its strain map (RealSlice "
            "'ccstae_strain': e_xx, e_yy, e_xy, theta, mask, class, error; strains "
            "as fractions, theta in radians, py4DSTEM's conventions) and the model "
            "to one EMD file readable by plain py4DSTEM. Existing outputs are never "
            "overwritten without --force. Bad arguments exit with code 2."
        ),
    )
    _add_input(fit)
    add_scan_options(fit)
    fit.add_argument(
        "--braggvectors",
        metavar="P",
        help="BraggVectors datapath inside INPUT, or an EMD file holding one "
        "(sets the ring mask from the Bragg spacing)",
    )
    add_device_option(fit, "training")
    add_output_options(fit, "the strain map and the model")
    add_training_options(fit)
    fit.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="write a training checkpoint here after every epoch (atomically); "
        "with --resume, continue from it (a killed fit resumes with the same result)",
    )
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue training from --checkpoint FILE if it exists",
    )
    add_config_option(fit)
    fit.set_defaults(func=_fit)


def _add_predict(sub) -> None:
    pred = sub.add_parser(
        "predict",
        help="apply a saved CC-ST-AE model to a new 4D-STEM file",
        description=(
            "Load the model in MODEL (a 'fit' output, a file written by "
            "CCSTAE.save, or a data file with a model appended) and write the "
            "strain map of every INPUT to an EMD file of its own. Existing outputs "
            "are never overwritten without --force. Bad arguments exit with code 2; "
            "a batch in which some scans failed (each reported) exits with code 1. "
            "--scheduler/--workers map the scans on a dask cluster."
        ),
    )
    pred.add_argument("model", metavar="MODEL", help="EMD file holding a CCSTAE model")
    _add_input(pred, several=True)
    add_scan_options(pred)
    add_device_option(pred, "inference")
    add_output_options(pred, "the strain map")
    pred.add_argument(
        "--out-dir",
        metavar="DIR",
        help=f"folder for the outputs <stem>{OUTPUT_SUFFIX} (default: beside each INPUT)",
    )
    pred.add_argument(
        "--plot-all",
        action="store_true",
        help="with several INPUTs (or --out-dir): a show_strain PNG beside each output",
    )
    where = pred.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="map on this running dask.distributed cluster (e.g. tcp://host:8786)",
    )
    where.add_argument(
        "--workers",
        type=int_at_least(1),
        metavar="N",
        help="start a local dask cluster of N worker processes for this command",
    )
    pred.set_defaults(func=_predict)


def build_parser() -> argparse.ArgumentParser:
    """The ``py4dstem-ccstae`` parser: one sub-command per builder."""
    parser = Parser(
        prog="py4dstem-ccstae",
        description="CC-ST-AE strain mapping for 4D-STEM (py4DSTEM extension).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_demo, _add_benchmark, _add_fit, _add_predict):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv_ = argv[1:]
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
