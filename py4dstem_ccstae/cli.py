"""The ``py4dstem-ccstae`` command line (parsing and reporting only).

Sub-commands
------------
``demo``
    Simulates a Si polycrystal, adds the paper's background noise, runs
    py4DSTEM's own strain pipeline on it, prints errors against the ground
    truth and writes one EMD file (DataCube, truth, py4DSTEM strain map) plus a
    ``show_strain`` figures; fits the CC-ST-AE on the same data and reports
    both side by side.
``fit``
    Trains a CC-ST-AE on a py4DSTEM/EMD or raw file and writes the strain map
    and the model to one EMD file.
``predict``
    Applies a saved model to a new scan.
``benchmark``
    CC-ST-AE vs py4DSTEM on simulated data across noise levels (tables, plots,
    full-rotation and dynamical cases).
``fit INPUT``
    Trains a CC-ST-AE on a py4DSTEM/EMD or raw 4D-STEM file and writes its
    strain map and the model to one EMD file
    (:func:`~py4dstem_ccstae.workflows.run_fit`).
``predict MODEL INPUT [INPUT ...]``
    Applies a saved model to new scans, one output each
    (:func:`~py4dstem_ccstae.workflows.run_predict`,
    :func:`~py4dstem_ccstae.workflows.predict_batch`), optionally on a dask
    cluster (``--scheduler``, ``--workers``).

Bad arguments print one line and exit with code 2; outputs are written
atomically and never overwrite existing files without ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .estimator import FRAMES
from .workflows import (  # re-exported: the command line's workflows
    FORCE_HINT,  # noqa: F401
    OUTPUT_SUFFIX,
    STRAIN_DATAPATH,  # noqa: F401
    _parse_ranges,
    default_output,
    parse_reference,
    predict_batch,
    run_fit,
    run_predict,
    write_strain_plot,
)

__all__ = [
    "build_parser",
    "default_output",
    "main",
    "parse_reference",
    "reference_arg",
    "run_fit",
    "run_predict",
    "write_strain_plot",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line with exit code 2."""

    def error(self, message):  # pragma: no cover - exercised via subprocess
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(low: int):
    """argparse ``type=``: an integer >= ``low`` (one clear line otherwise)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(2)  # scan sizes
_count = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _percent(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 100], got {text!r}"
        ) from None
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 100], got {v}")
    return v


def _demo(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import py4DSTEM

    from .baseline import py4dstem_strain
    from .estimator import CCSTAE
    from .io import save_emd
    from .metrics import strain_errors
    from .simulate import add_background_noise, polycrystal, truth_transform

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emd = out / "demo.h5"
    if emd.exists() and not args.force:
        print(f"demo: {emd} exists; pass --force to overwrite", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    print(f"[1/5] simulating a {args.scan}x{args.scan} Si polycrystal (128x128 patterns)")
    clean, truth = polycrystal(scan_shape=(args.scan, args.scan), seed=args.seed)
    print(f"[2/5] adding {args.noise:g} % Poisson background noise (1e5 e-/probe)")
    dc = add_background_noise(clean, args.noise, seed=args.seed)
    ref = truth.get_slice("reference").data.astype(bool)
    print("[3/5] running py4DSTEM's strain pipeline (disk detection, lattice fit)")
    base, details = py4dstem_strain(dc, reference=ref, return_details=True)
    print("[4/5] training the CC-ST-AE (CPU is enough; progress per epoch)")
    model = CCSTAE()
    inputs = model.prepare(dc)  # read once, for fit and the map
    model.fit(inputs, seed=args.seed, device="auto", progress=True)
    ours = model.strain_map(inputs, reference=ref)
    lin = truth_transform(truth).strain_linear()
    err = strain_errors(base, truth)
    err_lin = strain_errors(base, truth, truth_values=lin)
    err_ours = strain_errors(ours, truth)

    print("\nMAE vs ground truth (x1e-3; theta in degrees), all scan positions:")
    print(f"{'method':<34}{'e_xx':>8}{'e_yy':>8}{'e_xy':>8}{'theta':>8}{'valid':>8}")
    for name, e in (
        ("CC-ST-AE", err_ours),
        ("py4DSTEM (rotation-free truth)", err),
        ("py4DSTEM (vs its own formulas)", err_lin),
    ):
        print(
            f"{name:<34}{e['mae_e_xx'] * 1e3:8.2f}{e['mae_e_yy'] * 1e3:8.2f}"
            f"{e['mae_e_xy'] * 1e3:8.2f}{e['mae_theta_deg']:8.3f}{e['valid_fraction']:8.2f}"
        )

    print(f"\n[5/5] writing {emd} and figures")
    dc.name = "datacube"
    truth.name = "truth"
    for node in (truth, base, ours):
        dc.tree(graft=node)
    save_emd(emd, dc, overwrite=args.force)
    model.save(emd, append=True)  # the model next to the DataCube, same file
    for name, rs in (("truth", truth), ("py4dstem", base), ("ccstae", ours)):
        fig, _ = py4DSTEM.visualize.show_strain(
            rs, vrange=[-3, 3], vrange_theta=[-6, 6], show_gvects=False, returnfig=True
        )
        fig.savefig(out / f"strain_{name}.png", dpi=80)
        plt.close("all")
    datapath = f"{dc.root.name}/{dc.name}/{ours.name}"
    print(f"done in {time.perf_counter() - t0:.0f} s; read back with")
    print(f"  py4DSTEM.read('{emd}', datapath='{datapath}')")
    return 0


def _levels(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated percentages, got {text!r}"
        ) from None
    if not vals or any(not 0 <= v <= 100 for v in vals):
        raise argparse.ArgumentTypeError(f"percentages must be in [0, 100], got {text!r}")
    return vals


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


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
def reference_arg(text: str) -> str:
    """argparse ``type=`` for ``--reference``: check the ``R0:R1,C0:C1`` syntax.

    Bounds are checked against the scan by :func:`parse_reference`.
    """
    try:
        _parse_ranges(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _fail(command: str, err: Exception) -> int:
    msg = " ".join(str(err).split())
    print(f"py4dstem-ccstae {command}: error: {msg}", file=sys.stderr)
    return 2


def _report(res: dict, what: str) -> None:
    sx, sy = res["scan_shape"]
    qx, qy = res["pattern_shape"]
    print(f"{what}: {sx}x{sy} scan of {qx}x{qy} patterns from {res['input']}")
    if "train_seconds" in res:
        print(f"trained in {res['train_seconds']:.1f} s; ", end="")
    print(f"total {res['seconds']:.1f} s")
    fitted = getattr(res.get("model"), "fitted_", None) or {}
    if what == "fit" and fitted.get("attempts"):
        n, sens = len(fitted["attempts"]), fitted["encoder_sensitivity"]["mean"]
        print(f"lock-on: {n} training attempt(s), encoder sensitivity {sens:.2f}")
    if what == "fit" and fitted:
        spots = fitted.get("spots") or []
        thr = res["model"].config["spot_threshold"]
        per_base = fitted.get("base_spots") or [spots]
        if len(per_base) > 1:
            counts = ", ".join(
                f"base {k}: {len(sp)}" if sp else f"base {k}: none (invalid)"
                for k, sp in enumerate(per_base)
            )
            print(f"spots:  {counts} (spot_threshold {thr:g})")
        elif not spots:
            print("spots:  fewer than 2 spots found on the base: no refinement")
        elif not res["model"].config["refine"]:
            print(f"spots:  {len(spots)} spots on the base; refinement off (refine=false)")
        else:
            print(
                f"spots:  {len(spots)} spots of the base refined (spot_threshold {thr:g})"
            )
    out = res["output"]
    print(f"strain: {out}  ->  py4DSTEM.read('{out}', datapath='{res['strain_datapath']}')")
    if what == "fit":
        print(f"model:  {out}  ->  py4dstem_ccstae.CCSTAE.load('{out}')")
    if res["plot"] is not None:
        print(f"plot:   {res['plot']}")


def _refine_config(steps: int | None) -> dict:
    if steps is None:
        return {}
    return {"refine": steps > 0, "refine_steps": max(steps, 1)}


def _fit_config(options: list | None, refine_steps: int | None) -> dict:
    """CCSTAE options of ``--set`` and ``--refine-steps``; ValueError if they disagree."""
    cfg = dict(options or [])
    extra = _refine_config(refine_steps)
    for key, value in extra.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(
                f"--refine-steps {refine_steps} contradicts --set {key}="
                f"{json.dumps(cfg[key])}; give one of them"
            )
    return {**cfg, **extra}


def config_option(text: str) -> tuple[str, object]:
    """argparse ``type=`` for ``--set KEY=VALUE``: a CCSTAE option and its value.

    ``VALUE`` is read as JSON (``3``, ``0.5``, ``true``, ``null``,
    ``[0.2, 1.5]``) and otherwise kept as a string (``loss=l1``).
    """
    import json

    from .estimator import DEFAULT_CONFIG

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key not in DEFAULT_CONFIG:
        raise argparse.ArgumentTypeError(
            f"unknown option {key!r}; options: {', '.join(sorted(DEFAULT_CONFIG))}"
        )
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if isinstance(parsed, list):
        parsed = tuple(parsed)
    return key, parsed


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
            config=_fit_config(args.set, args.refine_steps),
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
            if len(inputs) == 1 and args.out_dir is None:
                res = run_predict(
                    args.model,
                    inputs[0],
                    datapath=args.datapath,
                    reference=args.reference,
                    reference_mask=args.reference_mask,
                    device=args.device,
                    out=args.out,
                    plot=args.plot,
                    force=args.force,
                    client=client,
                    frame=args.frame,
                )
                _report(res, "predict")
                return 0
            records = predict_batch(
                args.model,
                inputs,
                out_dir=args.out_dir,
                datapath=args.datapath,
                reference=args.reference,
                reference_mask=args.reference_mask,
                device=args.device,
                plot=args.plot_all,
                force=args.force,
                client=client,
                report=_report_scan,
                frame=args.frame,
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


def _add_data_options(p: argparse.ArgumentParser, several: bool = False) -> None:
    p.add_argument(
        "input",
        metavar="INPUT",
        nargs="+" if several else None,
        help="py4DSTEM/EMD file (calibration read from it) or a raw 4D-STEM file "
        "py4DSTEM.import_file reads (.dm4, .mib, .raw, ...)"
        + ("; several: one output per scan, a failed scan is reported" if several else ""),
    )
    p.add_argument(
        "--datapath",
        metavar="P",
        help="DataCube inside an EMD INPUT, e.g. 'root/datacube' "
        "(default: its only DataCube)",
    )
    ref = p.add_mutually_exclusive_group()
    ref.add_argument(
        "--reference",
        type=reference_arg,
        metavar="R0:R1,C0:C1",
        help="unstrained reference region: scan rows R0..R1-1 and columns C0..C1-1 "
        "(0-based; ends may be omitted, e.g. ':10,:10'); default: all positions",
    )
    ref.add_argument(
        "--reference-mask",
        metavar="FILE",
        help=".npy file with a bool array of the scan shape (Rx, Ry): the reference region",
    )
    p.add_argument(
        "--frame",
        choices=FRAMES,
        default="auto",
        help="with several bases: classes that show one lattice in one frame relative "
        "to the reference (auto, common) or each class relative to itself (class); "
        "default auto",
    )


def _add_output_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--out",
        metavar="FILE",
        help=f"output EMD file with {what} (default: INPUT folder, <stem>{OUTPUT_SUFFIX})",
    )
    p.add_argument("--plot", metavar="FILE", help="also write a show_strain PNG here")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def _add_fit_predict(sub) -> None:
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
    _add_data_options(fit)
    fit.add_argument(
        "--braggvectors",
        metavar="P",
        help="BraggVectors datapath inside INPUT, or an EMD file holding one "
        "(sets the ring mask from the Bragg spacing)",
    )
    fit.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="training device (auto: CUDA if available)",
    )
    _add_output_options(fit, "the strain map and the model")
    fit.add_argument(
        "--epochs", type=_count, default=None, metavar="N", help="training epochs (30)"
    )
    fit.add_argument(
        "--seed", type=_nonnegative_int, default=0, metavar="N", help="random seed (0)"
    )
    fit.add_argument(
        "--refine-steps",
        type=_nonnegative_int,
        default=None,
        metavar="N",
        help="per-pattern refinement steps after training (default: CCSTAE's; "
        "0: no refinement, faster, less accurate); stored in the model and used "
        "by 'predict'",
    )
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
    fit.add_argument(
        "--set",
        type=config_option,
        action="append",
        metavar="KEY=VALUE",
        help="any CCSTAE option (docs: Configuration), repeatable, e.g. "
        "--set size=96 --set loss=l1 --set ring=[0.2,1.5]; VALUE is read as JSON, "
        "else as a string",
    )
    fit.set_defaults(func=_fit)

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
    _add_data_options(pred, several=True)
    pred.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="inference device (auto: CUDA if available)",
    )
    _add_output_options(pred, "the strain map")
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
        type=_count,
        metavar="N",
        help="start a local dask cluster of N worker processes for this command",
    )
    pred.set_defaults(func=_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="py4dstem-ccstae",
        description="CC-ST-AE strain mapping for 4D-STEM (py4DSTEM extension).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
        "--scan", type=_positive_int, default=48, metavar="N", help="scan size N x N (48)"
    )
    demo.add_argument(
        "--noise",
        type=_percent,
        default=25.0,
        metavar="PCT",
        help="background noise %% (25)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--force", action="store_true", help="overwrite DIR/demo.h5")
    demo.set_defaults(func=_demo)

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
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"scan size N x N for every case (64; --quick {QUICK['scan']})",
    )
    bench.add_argument(
        "--levels",
        type=_levels,
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
        type=_json_object,
        default=None,
        metavar="JSON",
        help="CC-ST-AE option overrides, e.g. '{\"epochs\": 10}' (the model defaults)",
    )
    bench.add_argument(
        "--out", default="benchmark_out", metavar="DIR", help="output folder"
    )
    bench.add_argument("--force", action="store_true", help="replace existing results")
    bench.set_defaults(func=_benchmark)

    _add_fit_predict(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv_ = argv[1:]
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
