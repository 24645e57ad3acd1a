"""Where a prediction runs: row blocks of a scan on a ``dask.distributed`` cluster.

*What* is computed lives in :mod:`~py4dstem_ccstae.adapters` (the inputs) and
:mod:`~py4dstem_ccstae.estimator` (the prediction); this module only splits a
scan into row blocks, ships the work and gathers the results, so that
``CCSTAE.predict(data, client=client)`` equals the single-process
``CCSTAE.predict(data)`` to float32 rounding.

The chain, for a scan of ``Rx`` rows split into blocks of ``block_rows`` rows:

1. the driver opens the data (lazily for a path) and plans the inputs'
   geometry from the calibration and the model (field of view, ring, detector
   matrix; :meth:`DiffractionInputs.plan`); a missing origin is measured block
   by block on the workers and fitted by a plane in the driver;
2. every block task resamples its rows and returns their sums (and, for
   ``scaling="log"``, each pattern's median): the driver combines them into
   the scan's intensity scale exactly as one process does
   (:meth:`DiffractionInputs.finish`);
3. every block task predicts its rows with the model (sent to the workers
   once, ``client.scatter(..., broadcast=True)``) and returns transforms,
   classes, errors and validity; the driver assembles them in scan order.
   The reference lattice of :meth:`CCSTAE.strain_map` is computed afterwards
   from the assembled transforms, as in one process.

Data: with a path, each task opens the file itself (an EMD DataCube through
h5py, a raw file through ``py4DSTEM.import_file(mem="MEMMAP")``), so no
pattern data travel through the scheduler or the driver. An in-memory
DataCube is scattered block by block. Tasks are pure functions of their
block: dask retries a failed task (``retries``) and recomputes the blocks of a
worker that died, so no result is lost. A pass that needs only some rows (the
statistics of a large scan, a training subset) runs only the blocks that hold
them.

Worker processes: dask's nannies start their workers with
``MALLOC_TRIM_THRESHOLD_`` set (``distributed.nanny.pre-spawn-environ``),
which also fixes glibc's mmap threshold at 128 KiB: every temporary array
larger than that (torch's and numpy's, in the resampling, the encoder and the
refinement) is then a fresh ``mmap`` whose pages fault in on first use, and a
block task ran 2.4x slower than the same code in a plain process. Every task
therefore first restores the threshold glibc would have reached by itself
(:func:`_restore_mmap_threshold`, once per process); the trim threshold dask
chose is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

import numpy as np

from .calibration import calibrated_origin, fit_origins, measure_origins, probe_radius

__all__ = ["predict_blocks", "row_blocks", "training_patterns"]

#: Default patterns per block task (rows = max(1, this // Ry)).
BLOCK_PATTERNS = 4096

#: Times dask retries a block task that raised (a dead worker's tasks are
#: recomputed regardless).
RETRIES = 2

#: glibc's ``M_MMAP_THRESHOLD`` (``mallopt``), and the largest value its
#: dynamic threshold reaches on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20

#: Environment variables with which glibc fixes (no longer adapts) its mmap
#: threshold, when ``MALLOC_MMAP_THRESHOLD_`` itself is not set.
_FIXING_VARIABLES = (b"MALLOC_TRIM_THRESHOLD_", b"MALLOC_TOP_PAD_")

#: Whether :func:`_restore_mmap_threshold` has run in this process.
_MALLOC_CHECKED = False


def row_blocks(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    """``[(r0, r1), ...]`` half-open row ranges of at most ``block_rows`` rows."""
    return [(r0, min(r0 + block_rows, n_rows)) for r0 in range(0, n_rows, block_rows)]


# ---------------------------------------------------------- worker process
def _started_with_fixed_threshold() -> bool:
    """Whether this process started with glibc's mmap threshold fixed, not adaptive.

    Read from ``/proc/self/environ``, the environment the process was started
    with (what glibc read; ``os.environ`` may have changed since: dask's
    ``LocalCluster`` writes its workers' variables into the driver's).
    False where there is no such file (not Linux).
    """
    try:
        names = {
            item.split(b"=", 1)[0]
            for item in Path("/proc/self/environ").read_bytes().split(b"\0")
        }
    except OSError:
        return False
    return b"MALLOC_MMAP_THRESHOLD_" not in names and any(
        name in names for name in _FIXING_VARIABLES
    )


def _restore_mmap_threshold() -> bool:
    """Set glibc's mmap threshold to :data:`MMAP_THRESHOLD` where it was fixed (once).

    A process started with ``MALLOC_TRIM_THRESHOLD_`` (as dask's nannies start
    their workers) or ``MALLOC_TOP_PAD_``, and without
    ``MALLOC_MMAP_THRESHOLD_``, keeps glibc's initial 128 KiB mmap threshold
    for good: every larger temporary array is a fresh mapping whose pages
    fault in on first use (measured: a block's prediction 2.4x slower). The
    threshold is set to the 32 MiB that glibc's adaptive threshold reaches by
    itself; the trim threshold is not changed. Nothing is done elsewhere
    (other processes, other C libraries, other systems).

    Returns
    -------
    bool
        Whether the threshold was set now.
    """
    global _MALLOC_CHECKED
    if _MALLOC_CHECKED:
        return False
    _MALLOC_CHECKED = True
    if not _started_with_fixed_threshold():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


# ------------------------------------------------------------------ sources
class _Source:
    """How a task gets its rows: a file it opens itself, or a scattered block."""

    def __init__(self, path: str | None = None, datapath: str | None = None):
        self.path = path
        self.datapath = datapath

    def rows(self, r0: int, r1: int, block=None):
        """Rows ``r0:r1`` of the data (lazy for a file), indexed ``[rx, ry0:ry1]``."""
        if block is not None:
            return block
        from .io import open_datacube

        dc = open_datacube(self.path, self.datapath)
        return _RowSlice(dc.data, r0, r1)


class _RowSlice:
    """Rows ``r0:r1`` of a 4-D array-like, read only when indexed (h5py, memmap)."""

    def __init__(self, data, r0: int, r1: int):
        self._data, self._r0 = data, int(r0)
        self.shape = (int(r1) - int(r0), *data.shape[1:])
        self.dtype = data.dtype
        self.ndim = 4

    def __getitem__(self, key):
        rx, rest = key[0], key[1:]
        return self._data[(self._r0 + int(rx), *rest)]


# -------------------------------------------------------------- block tasks
def _in_rows(flat: np.ndarray, r0: int, r1: int, Ry: int) -> np.ndarray:
    """The flat scan indices of ``flat`` in rows ``r0:r1``, relative to row ``r0``."""
    return flat[(flat >= r0 * Ry) & (flat < r1 * Ry)] - r0 * Ry


def _block_origin(source: _Source, r0: int, r1: int, radius: float, block=None):
    """Measured (unfitted) origins of rows ``r0:r1``, (rows * Ry, 2)."""
    _restore_mmap_threshold()
    data = source.rows(r0, r1, block)
    n = data.shape[0] * data.shape[1]
    return measure_origins(data, np.arange(n), data.shape[1], radius)


def _block_stats(source: _Source, r0: int, r1: int, plan, subset, block=None) -> dict:
    """Statistics of rows ``r0:r1`` (:meth:`DiffractionInputs.accumulate`).

    ``subset``: the scan's flat statistics indices (None: every pattern).
    """
    _restore_mmap_threshold()
    inputs = plan.rows(r0, r1, source.rows(r0, r1, block))
    if subset is None:
        return inputs.accumulate()
    return inputs.accumulate(_in_rows(subset, r0, r1, plan.scan_shape[1]))


def _block_predict(
    source: _Source, r0: int, r1: int, inputs, model, refine_transforms, block=None
) -> dict:
    """``model.predict`` of rows ``r0:r1`` and the warnings it raised."""
    _restore_mmap_threshold()
    part = inputs.rows(r0, r1, source.rows(r0, r1, block))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = dict(model.predict(part, refine_transforms=refine_transforms))
    pred["warnings"] = [(w.category.__name__, str(w.message)) for w in caught]
    return pred


# ------------------------------------------------------------------ driver
def _open(data, datapath):
    """(DataCube, source, scattered): ``data`` opened lazily if it is a path."""
    from ._validation import check_datacube
    from .io import open_datacube

    if isinstance(data, (str, os.PathLike)):
        path = str(Path(data).resolve())
        return open_datacube(path, datapath), _Source(path, datapath), False
    if datapath is not None:
        raise ValueError("datapath: only used when data is a file path")
    return check_datacube(data, "data"), _Source(), True


def _gather(client, futures: list, resubmit=None) -> list:
    """Results of ``futures`` in order, each collected as it completes.

    A future that fails after dask's own retries (e.g. its scattered block was
    on a worker that died) is submitted again once through ``resubmit(i)``.
    """
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    again: set[int] = set()
    out: list = [None] * len(futures)
    pending = as_completed(futures)
    for fut in pending:
        i = index[fut.key]
        try:
            out[i] = fut.result()
        except Exception:
            if resubmit is None or i in again:
                raise
            again.add(i)
            new = resubmit(i)
            index[new.key] = i
            pending.add(new)
    return out


class _Blocks:
    """A scan split into row blocks, and where their tasks run (``client`` or here)."""

    def __init__(self, data, client=None, datapath=None, block_rows=None):
        self.client = client
        self.dc, self.source, self.in_memory = _open(data, datapath)
        Rx, Ry = (int(v) for v in self.dc.data.shape[:2])
        self.scan_shape = (Rx, Ry)
        if block_rows is None:
            block_rows = max(1, BLOCK_PATTERNS // Ry)
            if client is not None:
                # at least two blocks per worker, so that every worker has work
                workers = max(1, len(client.scheduler_info().get("workers", {})))
                block_rows = max(1, min(block_rows, -(-Rx // (2 * workers))))
        if (
            isinstance(block_rows, bool)
            or not isinstance(block_rows, (int, np.integer))
            or block_rows < 1
        ):
            raise ValueError(f"block_rows must be an int >= 1, got {block_rows!r}")
        self.blocks = row_blocks(Rx, int(block_rows))
        if self.in_memory and client is None:
            self.source = _MemorySource(self.dc.data)  # here: no copies of the DataCube

    def holding(self, flat: np.ndarray | None) -> list[int] | None:
        """Indices of the blocks that hold any of the flat scan indices ``flat``.

        None (every block) when ``flat`` is None.
        """
        if flat is None:
            return None
        rows = np.unique(np.asarray(flat, dtype=np.int64) // self.scan_shape[1])
        return [
            i
            for i, (r0, r1) in enumerate(self.blocks)
            if np.any((rows >= r0) & (rows < r1))
        ]

    def run(self, fn, *args, only: list[int] | None = None) -> list:
        """``fn(source, r0, r1, *args)`` for every block, results in block order.

        ``only``: the indices of the blocks to run (default: all).
        """
        client = self.client
        blocks = self.blocks if only is None else [self.blocks[i] for i in only]
        if client is None:
            return [fn(self.source, r0, r1, *args) for r0, r1 in blocks]

        def submit(i):
            r0, r1 = blocks[i]
            kw = {}
            if self.in_memory:  # straight to a worker, not through the scheduler
                kw["block"] = client.scatter(np.asarray(self.dc.data[r0:r1]))
            return client.submit(
                fn, self.source, r0, r1, *args, retries=RETRIES, pure=False, **kw
            )

        return _gather(client, [submit(i) for i in range(len(blocks))], submit)

    def shared(self, obj):
        """``obj`` sent to every worker once (a future), or itself here."""
        return obj if self.client is None else self.client.scatter(obj, broadcast=True)

    def inputs(self, options: dict, braggvectors=None):
        """Finished :class:`DiffractionInputs` of the scan for ``options``.

        The geometry is planned from the calibration; a missing origin is
        measured per block and fitted over the whole scan, and the intensity
        statistics are summed over the blocks, as one process does. The
        result reads the scan's data (lazily for a file) in this process.
        """
        from .adapters import DiffractionInputs

        dc, shape = self.dc, self.scan_shape
        origin, measured = calibrated_origin(dc.calibration, shape), False
        if origin is None:
            warnings.warn(
                "datacube has no origin calibration: measuring it per pattern (centre "
                "of mass of the brightest disk, py4DSTEM's get_origin) block by block "
                "and fitting a plane; the datacube's calibration is not modified",
                UserWarning,
                stacklevel=4,
            )
            radius = probe_radius(dc.data, shape, 256)
            meas = np.concatenate(self.run(_block_origin, radius))
            origin, measured = fit_origins(meas, shape), True
        plan = DiffractionInputs.plan(
            dc, origin=origin, origin_measured=measured, **options
        )
        # the same statistics as one process: every pattern, or the spread
        # subset of a scan too large for the cache (stats_indices)
        subset = plan.stats_indices()
        stats = self.run(
            _block_stats, self.shared(plan.detached()), subset, only=self.holding(subset)
        )
        return plan.finish(stats)


def _block_rows_batch(source: _Source, r0: int, r1: int, inputs, flat, block=None):
    """Network inputs of the flat scan indices ``flat`` that lie in rows ``r0:r1``."""
    _restore_mmap_threshold()
    part = inputs.rows(r0, r1, source.rows(r0, r1, block))
    return part.batch(_in_rows(flat, r0, r1, inputs.scan_shape[1]))


def training_patterns(
    data,
    options: dict,
    train_idx_of,
    *,
    braggvectors=None,
    client=None,
    datapath=None,
    block_rows=None,
):
    """Inputs and training patterns of a scan read block by block (``CCSTAE.fit``).

    Parameters
    ----------
    data : py4DSTEM.DataCube, str or PathLike
        As in :func:`predict_blocks`.
    options : dict
        :meth:`DiffractionInputs.from_datacube` keyword arguments.
    train_idx_of : callable
        ``n_patterns -> sorted flat indices`` of the training set.
    braggvectors, client, datapath, block_rows
        As in :meth:`CCSTAE.fit` and :func:`predict_blocks`.

    Returns
    -------
    (DiffractionInputs, ndarray, ndarray)
        The scan's inputs, the training indices and their network inputs
        (n, size, size) float32, in index order.
    """
    blocks = _Blocks(data, client=client, datapath=datapath, block_rows=block_rows)
    inputs = blocks.inputs(options, braggvectors)
    train_idx = np.asarray(train_idx_of(inputs.n_patterns))
    parts = blocks.run(
        _block_rows_batch,
        blocks.shared(inputs.detached()),
        train_idx,
        only=blocks.holding(train_idx) or None,  # no index: every block, all empty
    )
    return inputs, train_idx, np.concatenate(parts)


def predict_blocks(
    model,
    data,
    *,
    client=None,
    datapath: str | None = None,
    refine_transforms: bool | None = None,
    block_rows: int | None = None,
) -> dict:
    """:meth:`CCSTAE.predict` of ``data`` split into row blocks (module docs).

    Parameters
    ----------
    model : CCSTAE
        A fitted model.
    data : py4DSTEM.DataCube, str or PathLike
        A DataCube (scattered block by block to a cluster), or a file: an EMD
        file (``datapath`` when it holds several DataCubes) or a raw format
        ``py4DSTEM.import_file`` memory-maps; each task reads its own rows.
    client : distributed.Client, optional
        Where the blocks run. None: in this process, block by block (a path
        is then read lazily, one block in memory at a time).
    datapath : str, optional
        The DataCube inside an EMD file.
    refine_transforms : bool, optional
        As in :meth:`CCSTAE.predict`.
    block_rows : int, optional
        Scan rows per task; default ``max(1, 4096 // Ry)`` rows, fewer on a
        cluster so that every worker gets at least two blocks.

    Returns
    -------
    dict
        As :meth:`CCSTAE.predict`; equal to the single-process result to
        float32 rounding.
    """
    model._require_fitted()
    blocks = _Blocks(data, client=client, datapath=datapath, block_rows=block_rows)
    inputs = blocks.inputs(model._input_options())
    parts = blocks.run(
        _block_predict,
        blocks.shared(inputs.detached()),
        blocks.shared(model),
        refine_transforms,
    )
    seen = set()
    kinds = {"UserWarning": UserWarning, "RuntimeWarning": RuntimeWarning}
    for part in parts:
        for category, message in part.pop("warnings"):
            if message not in seen:
                seen.add(message)
                warnings.warn(message, kinds.get(category, UserWarning), stacklevel=3)
    from .fitted import Prediction

    return Prediction(
        *(
            np.concatenate([p[key] for p in parts])
            for key in ("A", "class", "error", "valid")
        )
    )


class _MemorySource(_Source):
    """In this process: rows of an array already in memory (or memory-mapped)."""

    def __init__(self, data):
        super().__init__()
        self._array = data

    def rows(self, r0: int, r1: int, block=None):
        return _RowSlice(self._array, r0, r1) if block is None else block
