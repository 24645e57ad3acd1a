"""The ``py4dstem-ccstae`` command line (parsing and reporting only).

Sub-commands
------------
``demo``
    Simulates a Si polycrystal, adds the paper's background noise, runs
    py4DSTEM's own strain pipeline on it, prints errors against the ground
    truth and writes one EMD file (DataCube, truth, py4DSTEM strain map) plus a
    ``show_strain`` figures; fits the CC-ST-AE on the same data and reports
    both side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line with exit code 2."""

    def error(self, message):  # pragma: no cover - exercised via subprocess
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if v < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {v}")
    return v


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
    model = CCSTAE().fit(dc, seed=args.seed, device="auto", progress=True)
    ours = model.strain_map(dc, reference=ref)
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
    model.save(out / "demo_model.h5", overwrite=True)
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


def _benchmark(args) -> int:
    from .benchmark import PAPER_LEVELS, QUICK_LEVELS, run_benchmark, write_results

    levels = args.levels or (QUICK_LEVELS if args.quick else PAPER_LEVELS)
    scan = args.scan or (24 if args.quick else 64)
    command = "py4dstem-ccstae benchmark " + " ".join(args.argv_)
    rows = run_benchmark(scan, levels, seed=args.seed, progress=True)
    md = write_results(rows, args.out, command.strip())
    print(md.read_text())
    print(f"written: {md} (+ .csv, .json)")
    return 0


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
            "and write DIR/demo.h5 (DataCube + truth + both strain maps), "
            "DIR/demo_model.h5 and DIR/strain_*.png."
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
        help="background noise % (25)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--force", action="store_true", help="overwrite DIR/demo.h5")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser(
        "benchmark",
        help="CC-ST-AE vs py4DSTEM on simulated data across noise levels",
        description=(
            "Simulate a Si polycrystal, add the paper's background noise at each level, "
            "run CC-ST-AE and py4DSTEM's pipeline on identical data in one process and "
            "write DIR/benchmark.md, .csv and .json."
        ),
    )
    bench.add_argument("--quick", action="store_true", help="24x24 scan, noise 0 and 50 %%")
    bench.add_argument("--scan", type=_positive_int, default=None, metavar="N")
    bench.add_argument(
        "--levels", type=_levels, default=None, metavar="P,P,..", help="noise percentages"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--out", default="benchmark_out", metavar="DIR")
    bench.set_defaults(func=_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv_ = argv[1:]
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
