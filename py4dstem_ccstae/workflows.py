"""Library workflows: map one scan, or many, from files to EMD outputs.

What the command line runs, usable from Python and batch scripts alike (the
command line only parses arguments and reports, :mod:`~py4dstem_ccstae.cli`):

* :func:`run_fit` - train on one file, write its strain map and the model.
* :func:`run_predict` - apply a model to one file, write its strain map.
* :func:`predict_batch` - apply one model to many files (optionally on a dask
  cluster), one output file per scan; a scan that fails is reported and the
  batch goes on.

Every argument is checked and every output reserved
(:func:`~py4dstem_ccstae.io.reserve_output`) before the work; outputs are
written atomically and never replace an existing file unless ``force``.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "FORCE_HINT",
    "OUTPUT_SUFFIX",
    "STRAIN_DATAPATH",
    "default_output",
    "parse_reference",
    "predict_batch",
    "run_fit",
    "run_predict",
    "write_strain_plot",
]


OUTPUT_SUFFIX = "_ccstae.h5"
STRAIN_DATAPATH = "ccstae/ccstae_strain"


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


def _check_frame(frame) -> None:
    """``--frame`` (``strain_map``'s ``frame``), checked before any work."""
    from .estimator import FRAMES

    if frame not in FRAMES:
        raise ValueError(f"--frame: must be one of {', '.join(FRAMES)}, got {frame!r}")


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
        # the checks reserve_output makes again when it claims the file (the
        # same helpers, the same messages), here before anything is read
        from .io import OutputExistsError, _check_target, _exists_message

        _check_target(p, flag)
        if p.exists() and not force:
            raise OutputExistsError(_exists_message(p, flag, FORCE_HINT))


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
    frame: str = "auto",
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
    frame : {"auto", "common", "class"}
        With several bases, the frame of each class's strain
        (:meth:`CCSTAE.strain_map <py4dstem_ccstae.CCSTAE.strain_map>`).

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
    _check_frame(frame)
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
        inputs = model.prepare(dc, bv)  # read once, for fit and the map
        try:
            model.fit(
                inputs,
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
        strain = model.strain_map(inputs, reference=ref, frame=frame)
        info = _run_info(
            "fit",
            input,
            datapath,
            reference,
            reference_mask,
            dc,
            seed=int(seed),
            device=str(next(model.net_.parameters()).device),
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
    client=None,
    frame: str = "auto",
) -> dict:
    """Apply a saved (or in-memory) model to a scan; write its strain map to EMD.

    What ``py4dstem-ccstae predict`` runs for one INPUT.

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
    client : distributed.Client, optional
        Map the scan on this dask cluster: it is opened lazily and every task
        reads its own rows (:mod:`~py4dstem_ccstae.distributed`).
    frame : {"auto", "common", "class"}
        As in :func:`run_fit`.

    Returns
    -------
    dict
        ``output``, ``plot``, ``strain_datapath``, ``scan_shape``,
        ``seconds`` (s), ``strain``.
    """
    from .estimator import CCSTAE
    from .io import open_datacube, read_datacube
    from .train import resolve_device

    t0 = time.perf_counter()
    input = Path(input)
    out = default_output(input) if out is None else Path(out)
    model_path = None if isinstance(model, CCSTAE) else Path(model)
    outputs = {"--out": out, "--plot": plot}
    _check_frame(frame)
    _check_outputs({"INPUT": input, "MODEL": model_path}, outputs, force)
    resolve_device(device)
    if model_path is not None:
        try:
            model = CCSTAE.load(model_path, device=device)
        except ValueError as err:
            raise ValueError(f"MODEL: {str(err).removeprefix('path: ')}") from None
    with _reserved(outputs, force):
        if client is None:
            dc = read_datacube(input, datapath)
        else:
            if not input.is_file():
                raise ValueError(f"input: {str(input)!r} is not a file")
            dc = open_datacube(input, datapath)  # lazily: the workers read it
        scan = tuple(int(n) for n in dc.data.shape[:2])
        ref = _resolve_reference(reference, reference_mask, scan)
        if client is None:
            strain = model.strain_map(dc, reference=ref, frame=frame)
        else:
            strain = model.strain_map(
                input, reference=ref, client=client, datapath=datapath, frame=frame
            )
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


def predict_batch(
    model,
    inputs: Sequence[str | os.PathLike],
    *,
    out_dir: str | os.PathLike | None = None,
    datapath: str | None = None,
    reference: str | None = None,
    reference_mask: str | os.PathLike | None = None,
    device: str = "auto",
    plot: bool = False,
    force: bool = False,
    client=None,
    report=None,
    frame: str = "auto",
) -> list[dict]:
    """Map many scans with one model; one output file per scan.

    Each scan runs :func:`run_predict` (its outputs reserved before the work,
    written atomically); a scan that fails (unreadable or corrupt input, an
    output that exists without ``force``, a scan the model refuses) is
    reported and the batch goes on with the next one.

    Parameters
    ----------
    model : str, PathLike or CCSTAE
        Loaded once (a file :meth:`CCSTAE.load <py4dstem_ccstae.CCSTAE.load>`
        reads, or a fitted model).
    inputs : sequence of str or PathLike
        The scans (py4DSTEM/EMD or raw files).
    out_dir : str or PathLike, optional
        Folder of the outputs ``<stem>_ccstae.h5`` (and ``<stem>_ccstae.png``
        with ``plot``); default: beside each input.
    datapath, reference, reference_mask, device, force, frame
        As in :func:`run_predict`, for every scan.
    plot : bool
        Also write a ``show_strain`` PNG per scan.
    client : distributed.Client, optional
        Map every scan on this dask cluster (row blocks of each scan run in
        parallel; :mod:`~py4dstem_ccstae.distributed`).
    report : callable, optional
        Called with each scan's record as soon as it is done (e.g. to print).

    Returns
    -------
    list of dict
        Per input, in order: ``input``, ``ok``, ``output`` (None if failed),
        ``error`` (the message, None if ok), ``seconds``, ``scan_shape``.

    Raises
    ------
    ValueError
        Only for arguments common to the batch (the model, ``out_dir``, two
        inputs with the same output file); per-scan failures are reported.
    """
    from .estimator import CCSTAE
    from .train import resolve_device

    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("inputs: no input file given")
    resolve_device(device)
    if not isinstance(model, CCSTAE):
        try:
            model = CCSTAE.load(model, device=device)
        except ValueError as err:
            raise ValueError(f"MODEL: {str(err).removeprefix('path: ')}") from None
    if out_dir is not None:
        out_dir = Path(out_dir)
        if not out_dir.is_dir():
            raise ValueError(f"--out-dir: {str(out_dir)!r} is not a folder")
    outs = [
        default_output(p) if out_dir is None else out_dir / (p.stem + OUTPUT_SUFFIX)
        for p in inputs
    ]
    seen: dict = {}
    for p, o in zip(inputs, outs, strict=True):
        key = o.resolve()
        if key in seen:
            raise ValueError(
                f"inputs: {str(p)!r} and {str(seen[key])!r} would both write {str(o)!r}"
            )
        seen[key] = p
    records = []
    for p, o in zip(inputs, outs, strict=True):
        t0 = time.perf_counter()
        rec = {"input": p, "ok": False, "output": None, "error": None, "scan_shape": None}
        try:
            res = run_predict(
                model,
                p,
                datapath=datapath,
                reference=reference,
                reference_mask=reference_mask,
                device=device,
                out=o,
                plot=o.with_suffix(".png") if plot else None,
                force=force,
                client=client,
                frame=frame,
            )
            rec.update(ok=True, output=res["output"], scan_shape=res["scan_shape"])
        except Exception as err:  # noqa: BLE001 - one bad scan must not stop the batch
            msg = " ".join(str(err).split()) or type(err).__name__
            if not isinstance(err, (ValueError, FileExistsError)):
                msg = f"{type(err).__name__}: {msg}"
            rec["error"] = msg
        rec["seconds"] = time.perf_counter() - t0
        records.append(rec)
        if report is not None:
            report(rec)
    return records
