"""What the file workflows check, read and write around the work.

The steps :mod:`~py4dstem_ccstae.workflows` shares between fitting and
predicting, in the order they run: the reference region from
``"R0:R1,C0:C1"`` or a ``.npy`` mask (:func:`parse_reference`), the output
names (:func:`default_output`: ``<stem>_ccstae.h5`` beside the input), every
output checked and reserved before the work (:func:`~py4dstem_ccstae.io.reserve_output`),
BraggVectors read calibrated, and at the end the output EMD tree (root
``ccstae``: the strain RealSlice, the run record, the model if fitted) written
atomically, with a rescue copy if the write fails, and a ``show_strain`` PNG
(:func:`write_strain_plot`). Error messages name the command line's options
(``--out``, ``--reference``, ...), which the library's keywords mirror.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "FORCE_HINT",
    "OUTPUT_SUFFIX",
    "STRAIN_DATAPATH",
    "default_output",
    "parse_reference",
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
    import py4DSTEM

    from .io import find_groups, is_emd_file

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
    try:
        found = find_groups(
            path,
            lambda group: group.attrs.get("python_class") == "BraggVectors",
            datapath,
            descend_matches=False,
        )
    except ValueError:
        raise ValueError(f"--braggvectors: no {datapath!r} in {str(path)!r}") from None
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


def _write_outputs(out: Path, plot, strain, model, info: dict, force: bool) -> None:
    """The output EMD file (strain map, run record, ``model`` unless None), then the PNG."""
    _save_result(out, _output_root(strain, model, info), force)
    if plot is not None:
        write_strain_plot(strain, plot, overwrite=force)


def _result(input: Path, out: Path, plot, dc, strain, t0: float, **extra) -> dict:
    """A workflow's return value: its files, the data's shape, ``extra``, the time (s)."""
    return {
        "input": input,
        "output": out,
        "plot": None if plot is None else Path(plot),
        "strain_datapath": STRAIN_DATAPATH,
        "scan_shape": tuple(int(n) for n in dc.data.shape[:2]),
        "pattern_shape": tuple(int(n) for n in dc.data.shape[2:]),
        **extra,
        "seconds": time.perf_counter() - t0,
        "strain": strain,
    }
