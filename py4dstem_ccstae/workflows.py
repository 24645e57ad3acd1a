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
written atomically and never replace an existing file unless ``force``. The
steps around the work (reference, outputs, BraggVectors, the output tree)
are in :mod:`~py4dstem_ccstae.workflow_io`; its public names are re-exported
here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from .workflow_io import (  # re-exported: what the workflows' callers use
    FORCE_HINT,
    OUTPUT_SUFFIX,
    STRAIN_DATAPATH,
    _check_frame,
    _check_outputs,
    _read_braggvectors,
    _reserved,
    _resolve_reference,
    _result,
    _run_info,
    _write_outputs,
    default_output,
    parse_reference,
    write_strain_plot,
)

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
        _write_outputs(out, plot, strain, model, info, force)
    return _result(input, out, plot, dc, strain, t0, train_seconds=train_s, model=model)


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
    model = _load_model(model if model_path is None else model_path, device)
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
        _write_outputs(out, plot, strain, None, info, force)
    return _result(input, out, plot, dc, strain, t0)


def _load_model(model, device: str):
    """``model`` if it is a CCSTAE, else the model in that file (errors name MODEL)."""
    from .estimator import CCSTAE

    if isinstance(model, CCSTAE):
        return model
    try:
        return CCSTAE.load(model, device=device)
    except ValueError as err:
        raise ValueError(f"MODEL: {str(err).removeprefix('path: ')}") from None


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
    from .train import resolve_device

    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("inputs: no input file given")
    resolve_device(device)
    model = _load_model(model, device)
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
