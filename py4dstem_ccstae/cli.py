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
    strain map and the model to one EMD file (:func:`run_fit`).
``predict MODEL INPUT``
    Applies a saved model to a new scan (:func:`run_predict`).

Bad arguments print one line and exit with code 2; outputs are written
atomically and never overwrite existing files without ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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
OUTPUT_SUFFIX = "_ccstae.h5"
STRAIN_DATAPATH = "ccstae/ccstae_strain"


def reference_arg(text: str) -> str:
    """argparse ``type=`` for ``--reference``: check the ``R0:R1,C0:C1`` syntax.

    Bounds are checked against the scan by :func:`parse_reference`.
    """
    try:
        _parse_ranges(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _parse_ranges(text: str) -> tuple[tuple[int | None, int | None], ...]:
    bad = (
        f"expected R0:R1,C0:C1 (scan rows R0..R1-1, columns C0..C1-1; "
        f"ends may be left out), got {text!r}"
    )
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(bad)
    ranges = []
    for part in parts:
        ends = part.split(":")
        if len(ends) != 2:
            raise ValueError(bad)
        try:
            lo, hi = (int(e) if e.strip() else None for e in ends)
        except ValueError:
            raise ValueError(bad) from None
        if (lo is not None and lo < 0) or (hi is not None and hi < 0):
            raise ValueError(f"reference indices must be >= 0, got {text!r}")
        if lo is not None and hi is not None and hi <= lo:
            raise ValueError(f"reference range {part!r} is empty (end <= start)")
        ranges.append((lo, hi))
    return tuple(ranges)


def parse_reference(text: str, scan_shape: tuple[int, int]) -> np.ndarray:
    """Reference mask from ``"R0:R1,C0:C1"`` (scan rows and columns, end exclusive).

    Parameters
    ----------
    text : str
        Two Python-style ranges of scan positions; either end may be left out
        (``":4,10:"``). Indices are scan pixels, 0-based.
    scan_shape : (int, int)
        ``(Rx, Ry)`` of the data.

    Returns
    -------
    ndarray of bool, shape ``scan_shape``
        True inside the rectangle.

    Raises
    ------
    ValueError
        Bad syntax, or a range outside the scan.
    """
    ranges = _parse_ranges(text)
    mask = np.zeros(tuple(scan_shape), bool)
    for (lo, hi), n, axis in zip(ranges, scan_shape, ("rows", "columns"), strict=True):
        if (lo or 0) >= n or (hi is not None and hi > n):
            raise ValueError(
                f"--reference: {axis} {'' if lo is None else lo}:"
                f"{'' if hi is None else hi} outside the scan ({n} {axis})"
            )
    (r0, r1), (c0, c1) = ranges
    mask[r0:r1, c0:c1] = True
    return mask


def _reference_mask_file(
    path: str | os.PathLike, scan_shape: tuple[int, int]
) -> np.ndarray:
    from ._validation import check_reference

    try:
        mask = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--reference-mask: cannot read {str(path)!r} as .npy: {err}"
        ) from None
    if mask.dtype != bool:
        raise ValueError(
            f"--reference-mask: expected a bool array, got dtype {mask.dtype} "
            f"in {str(path)!r}"
        )
    return check_reference(mask, scan_shape, name="--reference-mask")


def _resolve_reference(reference, reference_mask, scan_shape) -> np.ndarray | None:
    if reference is not None and reference_mask is not None:
        raise ValueError("--reference and --reference-mask are mutually exclusive")
    if reference is not None:
        return parse_reference(reference, scan_shape)
    if reference_mask is not None:
        return _reference_mask_file(reference_mask, scan_shape)
    return None


def default_output(input: str | os.PathLike) -> Path:
    """``<folder>/<stem>_ccstae.h5`` beside the input file."""
    input = Path(input)
    return input.with_name(input.stem + OUTPUT_SUFFIX)


def _check_outputs(inputs: dict, outputs: dict, force: bool) -> None:
    """Fail before any work if an output is impossible or would clobber something."""
    seen = {}
    for flag, p in outputs.items():
        if p is None:
            continue
        p = Path(p)
        for iflag, ip in inputs.items():
            if ip is not None and Path(ip).exists() and p.resolve() == Path(ip).resolve():
                raise ValueError(f"{flag}: {str(p)!r} is the {iflag} file; choose another")
        if p.resolve() in seen:
            raise ValueError(f"{flag}: {str(p)!r} is also {seen[p.resolve()]}")
        seen[p.resolve()] = flag
        folder = p.parent if str(p.parent) else Path(".")
        if not folder.is_dir():
            raise ValueError(f"{flag}: folder {str(folder)!r} does not exist")
        if p.is_dir():
            raise ValueError(f"{flag}: {str(p)!r} is a folder")
        if p.exists() and not force:
            from .io import OutputExistsError

            raise OutputExistsError(f"{flag}: {str(p)!r} exists; {FORCE_HINT}")


#: What an "output exists" error of the command line advises.
FORCE_HINT = "pass --force to overwrite it"


@contextlib.contextmanager
def _reserved(outputs: dict, force: bool) -> Iterator[None]:
    """Claim every output (``{flag: path}``) before the work, for the whole block.

    :func:`~py4dstem_ccstae.io.reserve_output`: the folder is probed by
    creating a file in it, an existing output needs ``force``, and another
    command writing the same new file fails now, not after its training.
    """
    from .io import reserve_output

    with contextlib.ExitStack() as stack:
        for flag, p in outputs.items():
            if p is not None:
                stack.enter_context(
                    reserve_output(p, overwrite=force, argname=flag, exists_hint=FORCE_HINT)
                )
        yield


def _save_result(out: Path, root, force: bool) -> None:
    """Write the output EMD file; if that fails after the work, keep the result.

    A write that fails although the output was reserved (disk full, the
    folder removed or remounted read-only meanwhile) saves the result to a
    new file in the system's temporary folder and says where (ValueError).
    """
    from .io import OutputExistsError, save_emd

    try:
        save_emd(out, root, overwrite=force, argname="--out", exists_hint=FORCE_HINT)
    except (OSError, ValueError) as err:
        if isinstance(err, OutputExistsError):
            raise
        import tempfile

        fd, rescue = tempfile.mkstemp(prefix=f"{out.stem}-", suffix=".h5")
        os.close(fd)
        save_emd(rescue, root, overwrite=True)
        reason = " ".join(str(err).split())
        raise ValueError(
            f"--out: writing {str(out)!r} failed ({reason}); the result was saved to "
            f"{rescue!r} instead"
        ) from None


def _read_braggvectors(spec: str | None, input: Path):
    """BraggVectors from a datapath inside ``input`` or from another EMD file.

    The calibrations stored with them (origin, ellipse, Q pixel size, Q/R
    rotation: normally the DataCube's) are applied, as the adapter expects.
    """
    if spec is None:
        return None
    import h5py
    import py4DSTEM

    from .io import is_emd_file

    if Path(spec).is_file():
        path, datapath = Path(spec), None
    elif is_emd_file(input):
        path, datapath = input, spec.strip("/")
    else:
        raise ValueError(
            f"--braggvectors: {spec!r} is neither a file nor a datapath in an EMD INPUT"
        )
    if not is_emd_file(path):
        raise ValueError(f"--braggvectors: {str(path)!r} is not a py4DSTEM/EMD file")
    found: list[str] = []
    with h5py.File(path, "r") as f:
        if datapath is not None and datapath not in f:
            raise ValueError(f"--braggvectors: no {datapath!r} in {str(path)!r}")

        def visit(name, obj):
            if (
                isinstance(obj, h5py.Group)
                and obj.attrs.get("python_class") == "BraggVectors"
            ):
                found.append(name)

        start = f[datapath] if datapath else f
        if start.attrs.get("python_class") == "BraggVectors":
            found.append(datapath)
        else:
            start.visititems(visit)
            prefix = f"{datapath}/" if datapath else ""
            found = [prefix + n for n in found]
    if len(found) != 1:
        raise ValueError(
            f"--braggvectors: expected one BraggVectors in {str(path)!r}"
            f"{' under ' + repr(datapath) if datapath else ''}, found {len(found)}"
        )
    bv = py4DSTEM.read(str(path), datapath=found[0], tree=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            bv.setcal()  # apply every calibration found (origin, ellipse, pixel, rotation)
        except AssertionError as err:
            raise ValueError(f"--braggvectors: cannot calibrate: {err}") from None
    return bv


def _output_root(strain, model, info: dict):
    """One EMD tree: root ``ccstae`` with the strain RealSlice (and the model)."""
    from emdfile import Metadata, Root

    root = model.to_emd().root if model is not None else Root(name="ccstae")
    root.force_add_to_tree(strain)
    root.metadata = Metadata(name="ccstae_run", data=info)
    return root


def _nice(value: float, floor: float) -> float:
    """Round up to 1, 2 or 5 x 10^k (colour-bar limits), at least ``floor``."""
    if not np.isfinite(value) or value <= floor:
        return floor
    e = 10 ** np.floor(np.log10(value))
    return float(next(m * e for m in (1, 2, 5, 10) if m * e >= value))


def write_strain_plot(strain, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save :func:`py4DSTEM.visualize.show_strain` of ``strain`` as a PNG, atomically.

    Colour limits: the 99th percentile of ``|e|`` (percent) and of
    ``|theta|`` (degrees), rounded up to 1, 2 or 5 x 10^k.
    """
    import matplotlib.pyplot as plt
    import py4DSTEM

    from .io import atomic_write

    e = np.stack([strain.get_slice(k).data for k in ("e_xx", "e_yy", "e_xy")])
    theta = strain.get_slice("theta").data
    v = _nice(float(np.nanpercentile(np.abs(e), 99)) * 100, 0.1)
    t = _nice(float(np.degrees(np.nanpercentile(np.abs(theta), 99))), 0.1)
    fig, _ = py4DSTEM.visualize.show_strain(
        strain, vrange=[-v, v], vrange_theta=[-t, t], show_gvects=False, returnfig=True
    )
    try:
        with atomic_write(
            path, overwrite=overwrite, argname="--plot", exists_hint=FORCE_HINT
        ) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def _run_info(command, input, datapath, reference, reference_mask, dc, **extra) -> dict:
    from . import __version__

    cal = dc.calibration
    return {
        "command": command,
        "version": __version__,
        "input": str(Path(input).resolve()),
        "datapath": datapath or "",
        "reference": reference
        or (f"mask file {reference_mask}" if reference_mask else "all positions"),
        "scan_shape": [int(n) for n in dc.data.shape[:2]],
        "pattern_shape": [int(n) for n in dc.data.shape[2:]],
        "R_pixel_size": float(cal.get_R_pixel_size()),
        "R_pixel_units": str(cal.get_R_pixel_units()),
        **extra,
    }


def run_fit(
    input: str | os.PathLike,
    *,
    datapath: str | None = None,
    reference: str | None = None,
    reference_mask: str | os.PathLike | None = None,
    braggvectors: str | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    epochs: int | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    config: dict | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> dict:
    """Train a CC-ST-AE on one file; write its strain map and the model to one EMD file.

    What ``py4dstem-ccstae fit`` runs. Every argument is checked (and the
    input read) before training; outputs are written atomically.

    Parameters
    ----------
    input : str or PathLike
        py4DSTEM/EMD file (calibration read from it) or a raw format
        :func:`py4DSTEM.import_file` reads.
    datapath : str, optional
        The DataCube inside an EMD ``input`` (default: its only DataCube).
    reference : str, optional
        ``"R0:R1,C0:C1"``: the unstrained reference rectangle, scan pixels,
        end exclusive (see :func:`parse_reference`). Default: all positions.
    reference_mask : str or PathLike, optional
        ``.npy`` file with a bool array of the scan shape (instead of
        ``reference``).
    braggvectors : str, optional
        A BraggVectors datapath inside ``input``, or an EMD file holding one;
        sets the model's ring mask.
    device : {"auto", "cpu", "cuda"}
        Training device.
    out : str or PathLike, optional
        Output EMD file; default ``<input folder>/<input stem>_ccstae.h5``.
    plot : str or PathLike, optional
        PNG of :func:`py4DSTEM.visualize.show_strain`.
    epochs : int, optional
        Training epochs (default: :data:`~py4dstem_ccstae.estimator.DEFAULT_CONFIG`).
    seed : int
        Random seed (training is deterministic on CPU for a given seed).
    force : bool
        Overwrite existing ``out``/``plot`` (and a ``checkpoint`` file that is
        not a training checkpoint).
    progress : bool
        Show per-epoch progress.
    config : dict, optional
        Further :class:`~py4dstem_ccstae.CCSTAE` options.
    checkpoint : str or PathLike, optional
        Training checkpoint written after every epoch
        (:meth:`CCSTAE.fit <py4dstem_ccstae.CCSTAE.fit>`).
    resume : bool
        Continue from ``checkpoint`` (a fit killed mid-training resumes
        where it stopped, with the same result).

    Returns
    -------
    dict
        ``output``, ``plot`` (Path or None), ``strain_datapath``,
        ``scan_shape``, ``train_seconds``, ``seconds`` (s), ``model``
        (the fitted :class:`~py4dstem_ccstae.CCSTAE`).

    Raises
    ------
    ValueError
        Any bad argument or unreadable input (message names the option); a
        folder in which no output file can be created (probed before
        training). If the final write still fails, the result is saved to
        the system's temporary folder and the error says where.
    FileExistsError
        An output exists and ``force`` is False, or another process is
        writing it (also a ValueError), found before training.
    """
    from .estimator import CCSTAE
    from .io import read_datacube
    from .train import resolve_device

    t0 = time.perf_counter()
    input = Path(input)
    out = default_output(input) if out is None else Path(out)
    outputs = {"--out": out, "--plot": plot}
    _check_outputs({"INPUT": input}, outputs, force)
    if checkpoint is not None and any(
        p is not None and Path(p).resolve() == Path(checkpoint).resolve()
        for p in (input, out, plot)
    ):
        raise ValueError(f"--checkpoint: {str(checkpoint)!r} is also an input or output")
    if resume and checkpoint is None:
        raise ValueError("--resume needs --checkpoint FILE")
    resolve_device(device)
    cfg = dict(config or {})
    if epochs is not None:
        cfg["epochs"] = epochs
    model = CCSTAE(**cfg)
    with _reserved(outputs, force):
        dc = read_datacube(input, datapath)
        scan = tuple(int(n) for n in dc.data.shape[:2])
        ref = _resolve_reference(reference, reference_mask, scan)
        bv = _read_braggvectors(braggvectors, input)
        t1 = time.perf_counter()
        try:
            model.fit(
                dc,
                braggvectors=bv,
                seed=seed,
                device=device,
                progress=progress,
                checkpoint=checkpoint,
                resume=resume,
                overwrite=force,
            )
        except ValueError as err:
            msg = str(err)
            if msg.startswith("checkpoint:"):
                msg = "--checkpoint:" + msg.removeprefix("checkpoint:")
                msg = msg.replace("overwrite=True", "--force").replace(
                    "resume=False", "without --resume"
                )
                raise ValueError(msg) from None
            raise
        train_s = time.perf_counter() - t1
        strain = model.strain_map(dc, reference=ref)
        info = _run_info(
            "fit",
            input,
            datapath,
            reference,
            reference_mask,
            dc,
            seed=int(seed),
            device=str(next(model.net.parameters()).device),
            braggvectors=braggvectors or "",
            train_seconds=train_s,
        )
        _save_result(out, _output_root(strain, model, info), force)
        if plot is not None:
            write_strain_plot(strain, plot, overwrite=force)
    return {
        "input": input,
        "output": out,
        "plot": None if plot is None else Path(plot),
        "strain_datapath": STRAIN_DATAPATH,
        "scan_shape": scan,
        "pattern_shape": tuple(int(n) for n in dc.data.shape[2:]),
        "train_seconds": train_s,
        "seconds": time.perf_counter() - t0,
        "model": model,
        "strain": strain,
    }


def run_predict(
    model,
    input: str | os.PathLike,
    *,
    datapath: str | None = None,
    reference: str | None = None,
    reference_mask: str | os.PathLike | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    force: bool = False,
) -> dict:
    """Apply a saved (or in-memory) model to a scan; write its strain map to EMD.

    What ``py4dstem-ccstae predict`` runs.

    Parameters
    ----------
    model : str, PathLike or CCSTAE
        A file :meth:`CCSTAE.load <py4dstem_ccstae.CCSTAE.load>` reads (a
        ``fit`` output, a saved model, or a data file with a model appended),
        or a fitted model.
    input, datapath, reference, reference_mask, out, plot, force
        As in :func:`run_fit`. The output holds the strain map only.
    device : {"auto", "cpu", "cuda"}
        Inference device.

    Returns
    -------
    dict
        ``output``, ``plot``, ``strain_datapath``, ``scan_shape``,
        ``seconds`` (s), ``strain``.
    """
    from .estimator import CCSTAE
    from .io import read_datacube
    from .train import resolve_device

    t0 = time.perf_counter()
    input = Path(input)
    out = default_output(input) if out is None else Path(out)
    model_path = None if isinstance(model, CCSTAE) else Path(model)
    outputs = {"--out": out, "--plot": plot}
    _check_outputs({"INPUT": input, "MODEL": model_path}, outputs, force)
    resolve_device(device)
    if model_path is not None:
        try:
            model = CCSTAE.load(model_path, device=device)
        except ValueError as err:
            raise ValueError(f"MODEL: {str(err).removeprefix('path: ')}") from None
    with _reserved(outputs, force):
        dc = read_datacube(input, datapath)
        scan = tuple(int(n) for n in dc.data.shape[:2])
        ref = _resolve_reference(reference, reference_mask, scan)
        strain = model.strain_map(dc, reference=ref)
        info = _run_info(
            "predict",
            input,
            datapath,
            reference,
            reference_mask,
            dc,
            model="" if model_path is None else str(model_path.resolve()),
        )
        _save_result(out, _output_root(strain, None, info), force)
        if plot is not None:
            write_strain_plot(strain, plot, overwrite=force)
    return {
        "input": input,
        "output": out,
        "plot": None if plot is None else Path(plot),
        "strain_datapath": STRAIN_DATAPATH,
        "scan_shape": scan,
        "pattern_shape": tuple(int(n) for n in dc.data.shape[2:]),
        "seconds": time.perf_counter() - t0,
        "strain": strain,
    }


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
        )
    except (ValueError, FileExistsError) as err:
        return _fail("fit", err)
    _report(res, "fit")
    return 0


def _predict(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    try:
        res = run_predict(
            args.model,
            args.input,
            datapath=args.datapath,
            reference=args.reference,
            reference_mask=args.reference_mask,
            device=args.device,
            out=args.out,
            plot=args.plot,
            force=args.force,
        )
    except (ValueError, FileExistsError) as err:
        return _fail("predict", err)
    _report(res, "predict")
    return 0


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        metavar="INPUT",
        help="py4DSTEM/EMD file (calibration read from it) or a raw 4D-STEM file "
        "py4DSTEM.import_file reads (.dm4, .mib, .raw, ...)",
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
            "strain map of INPUT to an EMD file. Existing outputs are never "
            "overwritten without --force. Bad arguments exit with code 2."
        ),
    )
    pred.add_argument("model", metavar="MODEL", help="EMD file holding a CCSTAE model")
    _add_data_options(pred)
    pred.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="inference device (auto: CUDA if available)",
    )
    _add_output_options(pred, "the strain map")
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
