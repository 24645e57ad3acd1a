"""Calibrated, resampled network inputs from a py4DSTEM ``DataCube``, streamed.

:class:`DiffractionInputs` turns a calibrated ``DataCube`` into square
``size x size`` patterns sampled on a regular grid of *calibrated* reciprocal
vectors, intensity-scaled to values of order 1, read ``batch_size`` patterns at
a time (the DataCube's data may be a numpy array, a ``numpy.memmap`` or an
``h5py.Dataset``).

Memory
------
Only one batch of patterns is held at a time (resampled
:data:`_RESAMPLE_CHUNK` patterns at a time), so memory does not grow with the
scan, except for an optional cache of the resampled patterns that is kept
only while it stays under ``cache_mb`` (:meth:`DiffractionInputs.from_datacube`;
256 MB by default, e.g. a 64x64 scan at ``size=64`` takes 67 MB): it saves
reading and resampling the data again for every later pass (fit, predict).
Pages of a ``numpy.memmap`` that have been read stay mapped into the
process and count in its resident set (RSS) until the kernel reclaims them; so
after every read from a shared (``'r'``, ``'r+'``, ``'w+'``) memmap the mapping's
pages are released with ``madvise(MADV_DONTNEED)`` (they stay in the OS page
cache; nothing is discarded). A ``'c'`` (copy-on-write) memmap is left alone.

Geometry
--------
Output pixel ``(i, j)`` (``i`` = row = ``qx``, ``j`` = column = ``qy``) is the
calibrated reciprocal vector::

    q = ((i - (size - 1) / 2) * dq, (j - (size - 1) / 2) * dq),  dq = 2 * q_max / size

in the DataCube's Q units (A^-1, or detector pixels when the units are
``'pixels'``). The output pixel ``(size - 1) / 2`` (between pixels for even
``size``) is ``q = 0``. For scan position ``(rx, ry)`` it is sampled at the
detector location (row, column; pixel ``k`` centred at coordinate ``k``)::

    p = origin(rx, ry) + inv(C) @ q

with ``C = detector_matrix(q_pixel_size, ellipse, QR_rotation, QR_flip)``
(:func:`py4dstem_ccstae.calibration.detector_matrix`, py4DSTEM's calibration order
origin -> ellipse -> pixel size -> Q/R rotation). Every calibration is undone,
so ``qx`` of the output is parallel to the scan axis ``Rx`` and a lattice
vector ``g`` (A^-1) of the calibrated frame appears at output pixel
``g / dq + (size - 1) / 2``. Zero outside the detector.

Sampling is *area-averaged* (anti-aliased): each output pixel is the mean of
``s x s`` bilinear samples spread evenly over its ``dq x dq`` footprint, with
``s = ceil(dq / d_min)`` (:attr:`DiffractionInputs.supersample`) and ``d_min``
the smallest detector pixel size in Q units (smallest singular value of
``C``). Point sampling at a step larger than the detector pixel aliases the
disk edges, and the aliasing differs from grain to grain (it depends on where
the disks fall on the output grid), which biased strain by 1-2e-3 per grain.
With ``dq <= d_min`` (``s = 1``) this is plain bilinear sampling.

Pre-binning
-----------
When the area averaging would need ``s >= 4`` sub-samples per output pixel
(large detectors, e.g. 256x256 or 512x512 at ``size=64``), the detector is
first binned by ``b`` (:func:`_bin_factor`: the largest integer with ``b *
d_max <= dq``), averaging ``b x b`` blocks (trailing rows and columns that
fill no block are dropped), and resampled from the binned detector. The
calibration is carried through exactly: binned pixel ``k`` spans raw pixels
``b k ... b k + b - 1``, so a raw coordinate ``o`` (the origin) is ``(o - (b -
1) / 2) / b`` binned, the detector matrix is ``b C`` (pixel size x ``b``),
ellipse and Q/R rotation unchanged. :attr:`DiffractionInputs.bin_factor`
records ``b``; ``prebin=False`` turns it off.

Intensities
-----------
Scaling (applied to the resampled patterns) is one of ``'linear'`` (``x``),
``'sqrt'`` (``sqrt(x)``), ``'power'`` (``x ** power``) and ``'log'``
(``log1p(x / m)``, ``m`` = :attr:`DiffractionInputs.log_reference`, the median
over batches of each batch's median positive resampled value). The scaled
values are divided by one global :attr:`DiffractionInputs.intensity_scale`,
the 99.9th percentile of the scaled mean (linear) resampled pattern. The mean
is over every pattern of a scan that fits the cache (``cache_mb``), else over
whole scan rows spread evenly over it, at least 4096 patterns
(:meth:`DiffractionInputs.stats_indices`).
"""

from __future__ import annotations

import copy
import math
import mmap
import numbers
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ._validation import check_datacube, check_number
from .calibration import detector_matrix

__all__ = ["DiffractionInputs", "SCALINGS"]

#: Intensity scalings understood by :meth:`DiffractionInputs.from_datacube`.
SCALINGS = ("linear", "sqrt", "log", "power")

#: Fraction of the largest inscribed circle used for the default ``q_max``.
_Q_MAX_MARGIN = 0.98
#: Percentile of the scaled mean pattern used as the global intensity scale.
_SCALE_PERCENTILE = 99.9
#: Most patterns resampled at once (bounds the sampling grids' memory).
_RESAMPLE_CHUNK = 256


# ------------------------------------------------------------------- validation
def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return int(value)


def _check_ring(ring) -> tuple[float, float]:
    try:
        pair = tuple(ring)
    except TypeError:
        raise TypeError(f"ring must be a pair (inner, outer), got {ring!r}") from None
    if len(pair) != 2:
        raise ValueError(f"ring must be a pair (inner, outer), got {ring!r}")
    inner = check_number(pair[0], "ring inner radius", low=0.0)
    outer = check_number(pair[1], "ring outer radius", low=0.0, low_open=True)
    if inner >= outer:
        raise ValueError(f"ring must have inner < outer, got ({inner}, {outer})")
    return inner, outer


def _check_block(block: np.ndarray, name: str = "datacube") -> None:
    """Raise if a block of patterns holds NaN/Inf or negative values.

    Unsigned integers (detector counts) pass without a look at the values.
    """
    if np.issubdtype(block.dtype, np.unsignedinteger) or block.dtype == bool:
        return
    if np.issubdtype(block.dtype, np.floating) and not np.all(np.isfinite(block)):
        raise ValueError(f"{name} data must be finite, found NaN or Inf")
    if block.size and block.min() < 0:
        raise ValueError(f"{name} data must be non-negative, found min {block.min():.4g}")


# --------------------------------------------------------------------- reading
def _shared_mapping(data) -> mmap.mmap | None:
    """The shared ``mmap.mmap`` behind a numpy memmap (or a view of one), else None.

    Follows ``.base`` to the mapping; None unless a ``numpy.memmap`` on the way
    has a shared mode (``'r'``, ``'r+'`` or ``'w+'``; ``'c'`` is private).
    """
    mode = None
    obj = data
    while isinstance(obj, np.ndarray):
        if isinstance(obj, np.memmap) and mode is None:
            mode = obj.mode
        obj = obj.base
    if isinstance(obj, mmap.mmap) and mode in ("r", "r+", "w+"):
        return obj
    return None


def _release_pages(data) -> None:
    """Drop the read pages of a shared numpy memmap from this process's RSS.

    ``madvise(MADV_DONTNEED)`` on a shared file mapping unmaps its pages from
    the process only: they stay in the page cache (and are written back if
    dirty) and are mapped again on the next access. No-op for anything else.
    """
    mapping = _shared_mapping(data)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None or mapping.closed:
        return
    try:
        mapping.madvise(advice)
    except (OSError, ValueError):  # pragma: no cover - platform dependent
        pass


def _read_patterns(data, indices: np.ndarray, Ry: int) -> np.ndarray:
    """Patterns at flat scan ``indices`` (row-major over [Rx, Ry]), shape (n, Qx, Qy).

    Reads one contiguous slice ``data[rx, ry0:ry1]`` per scan row touched (sorted,
    as h5py needs), so only the requested patterns' rows are read.
    """
    uniq, inverse = np.unique(indices, return_inverse=True)
    rx_all, ry_all = np.divmod(uniq, Ry)
    chunks = []
    for rx in np.unique(rx_all):
        ry = ry_all[rx_all == rx]
        lo, hi = int(ry.min()), int(ry.max())
        block = np.asarray(data[int(rx), lo : hi + 1])
        chunks.append(block[ry - lo])
    out = np.concatenate(chunks, axis=0)
    _release_pages(data)
    return out[inverse]


def _iter_flat(n: int, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, batch_size):
        yield np.arange(start, min(start + batch_size, n))


# ---------------------------------------------------------------------- origin
def _measure_origin(data, scan_shape, batch_size: int) -> np.ndarray:
    """Origin per position (Rx, Ry, 2), detector pixels, as py4DSTEM measures it.

    Per pattern: the maximum of the pattern smoothed by a Gaussian of width
    ``r``, then the centre of mass within ``1.2 r`` of it (py4DSTEM's
    ``get_origin``); ``r`` is the probe radius from ``get_probe_size`` on the
    maximum of the first batch with signal (:func:`_probe_radius`). The
    measured origins (:func:`_measure_patterns`) are then fitted by a plane
    (py4DSTEM's ``fit_origin``; a constant for a single row or column) over
    the patterns with signal (:func:`_fit_measured`).
    """
    Rx, Ry = scan_shape
    r = _probe_radius(data, scan_shape, batch_size)
    meas = np.concatenate(
        [_measure_patterns(data, idx, Ry, r) for idx in _iter_flat(Rx * Ry, batch_size)]
    )
    return _fit_measured(meas, scan_shape)


def _probe_radius(data, scan_shape, batch_size: int) -> float | None:
    """Probe radius (detector pixels) from the first batch with signal; None if none."""
    from py4DSTEM.process.calibration import get_probe_size

    Rx, Ry = scan_shape
    for idx in _iter_flat(Rx * Ry, batch_size):
        dp = _read_patterns(data, idx, Ry)
        _check_block(dp)
        if dp.max() > 0:
            r = float(get_probe_size(dp.max(axis=0).astype(np.float64))[0])
            return r if np.isfinite(r) and r > 0 else None
    return None


def _measure_patterns(data, indices: np.ndarray, Ry: int, r: float | None) -> np.ndarray:
    """Measured origins (n, 2) of the patterns at flat ``indices``; NaN without signal."""
    if r is None:
        return np.full((len(indices), 2), np.nan)
    dp = _read_patterns(data, indices, Ry)
    _check_block(dp)
    n, Qx, Qy = dp.shape
    sm = gaussian_filter(dp.astype(np.float64), (0, r, r), mode="nearest")
    peak = np.stack(np.unravel_index(sm.reshape(n, -1).argmax(1), (Qx, Qy)), -1)
    ii = np.arange(Qx)[None, :, None]
    jj = np.arange(Qy)[None, None, :]
    near = np.hypot(ii - peak[:, 0, None, None], jj - peak[:, 1, None, None]) < 1.2 * r
    w = dp * near
    tot = w.sum((1, 2))
    out = np.empty((n, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 0] = (w * ii).sum((1, 2)) / tot
        out[:, 1] = (w * jj).sum((1, 2)) / tot
    return out


def _fit_measured(meas: np.ndarray, scan_shape) -> np.ndarray:
    """Plane (or constant) fit (Rx, Ry, 2) of measured origins ``meas`` (Rx * Ry, 2).

    Blank patterns (NaN: no signal) have no origin: the fit uses the others;
    ValueError if every pattern is blank.
    """
    from py4DSTEM.process.calibration import fit_origin

    Rx, Ry = scan_shape
    ok = np.isfinite(meas).all(1).reshape(Rx, Ry)
    if not ok.any():
        raise ValueError(
            "datacube has no origin calibration and no pattern with signal to "
            "measure it from (every pattern is zero); set the origin with "
            "datacube.calibration.set_origin"
        )
    qx0, qy0 = meas[:, 0].reshape(Rx, Ry), meas[:, 1].reshape(Rx, Ry)
    rows, cols = np.nonzero(ok)
    plane = np.unique(rows).size >= 2 and np.unique(cols).size >= 2
    qx0_fit, qy0_fit, _, _ = fit_origin(
        (np.where(ok, qx0, 0.0), np.where(ok, qy0, 0.0)),
        mask=ok,
        fitfunction="plane" if plane else "constant",
    )
    return np.stack([qx0_fit, qy0_fit], -1).astype(np.float64)


def _checked_calibration(cal) -> tuple[float, str, tuple | None, float, bool]:
    """Q pixel size, units, ellipse, Q/R rotation and flip, validated once here.

    Raises ValueError naming the calibration entry when it is not a finite
    positive pixel size, a single finite ellipse with positive axes, or a
    finite rotation (missing entries take py4DSTEM's defaults: 1 pixel, no
    ellipse, no rotation).
    """
    qps = cal.get_Q_pixel_size()
    qps = 1.0 if qps is None else qps
    if (
        isinstance(qps, bool)
        or not isinstance(qps, numbers.Real)
        or not (np.isfinite(qps) and qps > 0)
    ):
        raise ValueError(
            f"datacube calibration: Q pixel size must be a finite number > 0, got {qps!r} "
            "(set it with datacube.calibration.set_Q_pixel_size)"
        )
    units = cal.get_Q_pixel_units() or "pixels"
    ellipse = cal.get_ellipse()
    if ellipse is not None:
        if any(np.ndim(v) for v in ellipse):
            raise ValueError(
                "datacube has a per-position ellipse calibration; only a single "
                "ellipse (a, b, theta) is supported"
            )
        try:
            ellipse = tuple(float(v) for v in ellipse)
            a, b, theta = ellipse
        except (TypeError, ValueError):
            raise ValueError(
                "datacube calibration: the ellipse must be three numbers (a, b, theta), "
                f"got {cal.get_ellipse()!r}"
            ) from None
        if not (np.isfinite(ellipse).all() and a > 0 and b > 0):
            raise ValueError(
                "datacube calibration: the ellipse (a, b, theta) needs finite values "
                f"and a, b > 0, got {ellipse}"
            )
    rot = cal.get_QR_rotation()
    rot = 0.0 if rot is None else float(rot)
    if not np.isfinite(rot):
        raise ValueError(f"datacube calibration: Q/R rotation must be finite, got {rot}")
    return float(qps), units, ellipse, rot, bool(cal.get_QR_flip())


def _calibrated_origin(cal, scan_shape) -> np.ndarray | None:
    origin = cal.get_origin()
    if origin is None:
        return None
    qx0, qy0 = (np.broadcast_to(np.asarray(v, np.float64), scan_shape) for v in origin)
    out = np.stack([qx0, qy0], -1).copy()
    if not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out).all(-1))
        raise ValueError(
            f"datacube calibration: the origin is not finite at {len(bad)} scan "
            f"position(s), e.g. {tuple(int(v) for v in bad[0])} (fit it again, or "
            "clear it with datacube.calibration.set_origin(None) to have it measured)"
        )
    return out


# ----------------------------------------------------------------- Bragg peaks
def _bragg_summary(bv, scan_shape, direct_tol: float) -> tuple[float, np.ndarray]:
    """Median shortest non-direct Bragg length and median spot vectors.

    Calibrated vectors ``bv.cal[rx, ry]`` shorter than ``direct_tol`` are taken
    as the direct beam. Returns the median over positions of each position's
    shortest remaining length, and the medians of the vector clusters (greedy,
    radius a quarter of that length) found in at least half the positions,
    sorted by length then angle.
    """
    Rx, Ry = scan_shape
    shortest, pooled = [], []
    for rx in range(Rx):
        for ry in range(Ry):
            v = bv.cal[rx, ry]
            q = np.stack([np.asarray(v.qx, float), np.asarray(v.qy, float)], -1)
            q = q[np.hypot(q[:, 0], q[:, 1]) > direct_tol]
            if len(q):
                shortest.append(np.hypot(q[:, 0], q[:, 1]).min())
                pooled.append(q)
    if not shortest:
        raise ValueError("braggvectors holds no Bragg vectors besides the direct beam")
    g_min = float(np.median(shortest))
    q = np.concatenate(pooled)
    tol = 0.25 * g_min
    free = np.ones(len(q), bool)
    peaks = []
    while free.any():
        seed = q[np.argmax(free)]
        members = free & (np.hypot(*(q - seed).T) < tol)
        centre = np.median(q[members], axis=0)
        members = free & (np.hypot(*(q - centre).T) < tol)
        members[np.argmax(free)] = True  # always consume the seed
        free &= ~members
        if members.sum() >= 0.5 * Rx * Ry:
            peaks.append(np.median(q[members], axis=0))
    peaks = np.array(peaks, dtype=np.float64).reshape(-1, 2)
    order = np.lexsort((np.arctan2(peaks[:, 1], peaks[:, 0]), np.hypot(*peaks.T)))
    return g_min, peaks[order]


# ------------------------------------------------------------------------ main
class DiffractionInputs:
    """Calibrated, resampled, intensity-scaled patterns of a DataCube, streamed.

    Build with :meth:`from_datacube`; see the module docs for the geometry and
    intensity conventions. Patterns are produced on demand from the DataCube's
    data (never all held unless :meth:`to_array` is called).

    Attributes
    ----------
    scan_shape : (int, int)
        ``(Rx, Ry)``.
    n_patterns : int
        ``Rx * Ry``; flat index ``rx * Ry + ry`` (row-major).
    size : int
        Output patterns are ``(size, size)``.
    q_max : float
        Half-width of the output field of view, Q units.
    dq : float
        ``2 * q_max / size``, Q units per output pixel.
    units : str
        The DataCube's Q pixel units (``'A^-1'`` or ``'pixels'``).
    scaling : str
        One of :data:`SCALINGS`; ``power`` is the exponent used by ``'power'``
        (``0.5`` for ``'sqrt'``, ``1`` for ``'linear'``, None for ``'log'``).
    log_reference : float or None
        ``m`` in ``log1p(x / m)`` (``'log'`` only).
    intensity_scale : float
        Global divisor applied after scaling.
    ring : (float, float)
        ``(inner, outer)`` radii of :attr:`mask`, Q units.
    ring_source : str
        ``'user'``, ``'braggvectors'`` or ``'direct_beam'`` (where ``inner``
        came from).
    mask : ndarray, bool (size, size)
        True where ``inner <= |q| <= outer``.
    direct_beam_radius : float
        Radius where the mean pattern's centre disk falls below half its
        maximum, Q units.
    bragg_peaks : ndarray (n, 2) or None
        Median calibrated Bragg vectors (Q units) when ``braggvectors`` given.
    origin : ndarray (Rx, Ry, 2)
        Direct-beam origin used, detector pixels (row, column).
    origin_measured : bool
        True when the DataCube had no origin and it was measured.
    detector_matrix : ndarray (2, 2)
        ``C`` (detector pixel offsets -> Q units).
    batch_size : int
        Patterns read at a time by :meth:`iter_batches` (and construction).
    mean_resampled : ndarray float64 (size, size)
        Mean resampled pattern before intensity scaling.
    bin_factor : int
        Detector pre-binning factor ``b`` (1: none; module docs).
    supersample : int
        Sub-samples per output pixel and axis of the area averaging (on the
        binned detector).
    """

    def __init__(
        self,
        data,
        *,
        scan_shape: tuple[int, int],
        origin: np.ndarray,
        C: np.ndarray,
        size: int,
        q_max: float,
        units: str,
        batch_size: int,
        prebin: bool = True,
    ) -> None:
        self._data = data
        self.scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
        self.n_patterns = self.scan_shape[0] * self.scan_shape[1]
        self.origin = origin
        self.origin_measured = False
        self.detector_matrix = C
        self.size = size
        self.q_max = q_max
        self.dq = 2.0 * q_max / size
        self.units = units
        self.batch_size = batch_size
        self.scaling = "linear"
        self.power: float | None = 1.0
        self.log_reference: float | None = None
        self.intensity_scale = 1.0
        self.ring: tuple[float, float] = (0.0, q_max)
        self.ring_source = "user"
        self.mask = np.ones((size, size), bool)
        self.direct_beam_radius = float("nan")
        self.bragg_peaks: np.ndarray | None = None
        self.mean_resampled = np.zeros((size, size))
        self._mean_input: np.ndarray | None = None
        # ring and Bragg vectors of a plan() that finish() has not completed
        self._pending: dict | None = None
        # resampled patterns (n_patterns, size, size) float32 when cached
        self._cache: np.ndarray | None = None
        # detector offsets inv(C) @ q of every output pixel, (size, size, 2)
        t = (np.arange(size) - (size - 1) / 2.0) * self.dq
        q = np.stack(np.meshgrid(t, t, indexing="ij"), -1)
        self._q = q
        # pre-binning of large detectors (module docs: Pre-binning), then area
        # averaging: s x s sub-samples per output pixel, on a fine grid whose
        # s x s blocks are the output pixels, in binned detector pixels
        self.prebin = bool(prebin)
        self.bin_factor = _bin_factor(self.dq, C) if self.prebin else 1
        Cb = C * self.bin_factor
        d_min = float(np.linalg.svd(Cb, compute_uv=False).min())
        self.supersample = max(1, math.ceil(self.dq / d_min - 1e-6))
        s = self.supersample
        j = np.arange(size * s)
        tf = ((j + 0.5) / s - 0.5 - (size - 1) / 2.0) * self.dq
        qf = np.stack(np.meshgrid(tf, tf, indexing="ij"), -1)
        # binned-detector offsets inv(C b) @ q of every sub-sample, (size*s, size*s, 2)
        self._offsets = torch.from_numpy(qf @ np.linalg.inv(Cb).T)
        # ((Qx, Qy), offsets in grid_sample's normalised (x, y), float32); lazy
        self._unit_offsets: tuple | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def from_datacube(
        cls,
        datacube,
        braggvectors=None,
        *,
        size: int = 64,
        q_max: float | None = None,
        scaling: str = "sqrt",
        power: float = 0.5,
        ring: tuple[float, float] | None = None,
        batch_size: int = 256,
        prebin: bool = True,
        cache_mb: float | None = None,
        units: str | None = None,
    ) -> DiffractionInputs:
        """Network inputs for a calibrated DataCube.

        Parameters
        ----------
        datacube : py4DSTEM.DataCube
            ``[Rx, Ry, Qx, Qy]``, non-negative finite intensities; data may be a
            numpy array, memmap or h5py Dataset. Its calibration supplies the Q
            pixel size and units, origin (per position), ellipse, Q/R rotation
            and flip; it is never modified.
        braggvectors : py4DSTEM.BraggVectors, optional
            Calibrated Bragg vectors (``braggvectors.cal``) with the same scan
            shape; sets the ring's inner radius to half the median shortest
            Bragg vector length (unless ``ring`` is given) and
            :attr:`bragg_peaks`.
        size : int
            Output patterns are ``size x size``, in [16, 512].
        q_max : float, optional
            Half-width of the field of view, Q units (> 0). Default: 0.98 x the
            largest radius whose circle about the origin stays on the detector
            at every scan position.
        scaling : {"linear", "sqrt", "log", "power"}
            Intensity scaling (module docs).
        power : float
            Exponent for ``scaling="power"``, > 0.
        ring : (float, float), optional
            Mask radii ``(inner, outer)``, Q units, ``0 <= inner < outer``.
            Default: inner = 1.5 x the direct-beam radius of the mean resampled
            pattern (or from ``braggvectors``), outer = 0.95 x ``q_max``.
        batch_size : int
            Patterns read at a time, >= 1.
        prebin : bool
            Pre-bin large detectors before resampling (module docs:
            Pre-binning; only when area averaging would need >= 4 x 4
            sub-samples per output pixel). Default True.
        cache_mb : float, optional
            Keep the resampled patterns (float32, before intensity scaling) in
            memory when they take at most this many MB (default
            :data:`CACHE_MB`, 256; a 64x64 scan at ``size=64``: 67 MB): the
            construction pass fills the cache and later batches are served
            from it instead of reading and resampling the DataCube again (the
            same values, bit for bit). Larger scans are streamed, and their
            construction pass reads only the spread rows of
            :meth:`stats_indices` (at least 4096 patterns); ``0`` never
            caches. A cached object is a snapshot: later changes to the
            DataCube's data are not seen.
        units : str, optional
            The Q units ``q_max`` and ``ring`` are given in (a fitted model's
            units): a DataCube calibrated in other units is refused
            (ValueError) instead of being sampled over a field of view of
            another meaning (e.g. 1.2 pixels instead of 1.2 A^-1).

        Returns
        -------
        DiffractionInputs

        Warns
        -----
        UserWarning
            When the DataCube has no origin calibration and it is measured
            (see :func:`_measure_origin`); the DataCube is left unchanged.
        """
        cache_mb = (
            CACHE_MB if cache_mb is None else check_number(cache_mb, "cache_mb", low=0.0)
        )
        self = cls.plan(
            datacube,
            braggvectors,
            size=size,
            q_max=q_max,
            scaling=scaling,
            power=power,
            ring=ring,
            batch_size=batch_size,
            prebin=prebin,
            units=units,
        )
        # one pass: mean resampled pattern (and the log reference), and the
        # cache when it fits (float32 holds the resampled values exactly);
        # a scan too large for the cache: the statistics of a spread subset
        cache = None
        subset = self.stats_indices(cache_mb)
        if subset is None:
            cache = np.empty((self.n_patterns, self.size, self.size), np.float32)
        stats = self.accumulate(subset, cache=cache)
        self._cache = cache
        return self.finish([stats])

    def stats_indices(self, cache_mb: float | None = None) -> np.ndarray | None:
        """Flat indices whose statistics set the intensity scale; None for all.

        A scan whose resampled patterns fit in ``cache_mb`` MB uses every
        pattern (it is read once anyway, to fill the cache). A larger scan
        uses whole scan rows spread evenly over it, at least
        :data:`STATS_PATTERNS` patterns, so that it is not read twice in
        full (the statistics pass would otherwise cost as much as the
        prediction's own pass; whole rows, because rows are what is read).
        """
        cache_mb = CACHE_MB if cache_mb is None else cache_mb
        if self.n_patterns * self.size**2 * 4 <= cache_mb * 1e6:
            return None
        Rx, Ry = self.scan_shape
        k = min(Rx, -(-STATS_PATTERNS // Ry))
        rows = np.unique(np.linspace(0, Rx - 1, k).round().astype(np.int64))
        return (rows[:, None] * Ry + np.arange(Ry)[None]).ravel()

    @classmethod
    def plan(
        cls,
        datacube,
        braggvectors=None,
        *,
        size: int = 64,
        q_max: float | None = None,
        scaling: str = "sqrt",
        power: float = 0.5,
        ring: tuple[float, float] | None = None,
        batch_size: int = 256,
        prebin: bool = True,
        units: str | None = None,
        origin: np.ndarray | None = None,
        origin_measured: bool = False,
    ) -> DiffractionInputs:
        """The inputs' geometry from the calibration, before any pass over the data.

        :meth:`from_datacube` is ``plan`` + :meth:`accumulate` over every
        pattern + :meth:`finish`. Split, the pass can run block by block
        elsewhere (:mod:`~py4dstem_ccstae.distributed`): ``plan.rows(r0, r1,
        data).accumulate()`` per block, then ``plan.finish(all_stats)``. The
        result is not usable before :meth:`finish`.

        Parameters
        ----------
        datacube, braggvectors, size, q_max, scaling, power, ring, batch_size, prebin, units
            As in :meth:`from_datacube`.
        origin : ndarray (Rx, Ry, 2), optional
            The origin to use (detector pixels) instead of the calibration's,
            e.g. one measured block by block. Default: the calibration's, or
            measured here (with a warning) when it has none.
        origin_measured : bool
            Record ``origin`` as measured (:attr:`origin_measured`).
        """
        datacube = check_datacube(datacube, "datacube")
        size = _check_int(size, "size", 16, 512)
        batch_size = _check_int(batch_size, "batch_size", 1)
        if q_max is not None:
            q_max = check_number(q_max, "q_max", low=0.0, low_open=True)
        if not isinstance(scaling, str) or scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        power = check_number(power, "power", low=0.0, low_open=True)
        if ring is not None:
            ring = _check_ring(ring)
        if not isinstance(prebin, (bool, np.bool_)):
            raise ValueError(f"prebin must be True or False, got {prebin!r}")

        data = datacube.data
        Rx, Ry, Qx, Qy = (int(v) for v in data.shape)
        scan_shape = (Rx, Ry)
        if braggvectors is not None:
            if not hasattr(braggvectors, "cal") or not hasattr(braggvectors, "Rshape"):
                raise TypeError(
                    "braggvectors must be a py4DSTEM.BraggVectors, "
                    f"got {type(braggvectors).__name__}"
                )
            bshape = tuple(int(v) for v in braggvectors.Rshape)
            if bshape != scan_shape:
                raise ValueError(
                    f"braggvectors scan shape {bshape} does not match the datacube "
                    f"scan shape {scan_shape}"
                )

        # calibration -> detector matrix
        cal = datacube.calibration
        expected_units = units
        qps, units, ellipse, rot, flip = _checked_calibration(cal)
        if expected_units is not None and units != expected_units:
            raise ValueError(
                f"datacube calibration: Q pixel units are {units!r}, but the model "
                f"works in {expected_units!r} (it was fitted on data calibrated in "
                f"{expected_units}): calibrate the DataCube as the training data was "
                "(datacube.calibration.set_Q_pixel_size and set_Q_pixel_units), so "
                "that the model's field of view means the same"
            )
        C = detector_matrix(qps, ellipse, rot, flip)

        measured = bool(origin_measured)
        if origin is not None:
            origin = np.asarray(origin, dtype=np.float64)
            if origin.shape != (Rx, Ry, 2) or not np.isfinite(origin).all():
                raise ValueError(
                    f"origin must be a finite array of shape {(Rx, Ry, 2)}, got "
                    f"shape {origin.shape}"
                )
        else:
            origin = _calibrated_origin(cal, scan_shape)
            measured = origin is None
        if origin is None:
            warnings.warn(
                "datacube has no origin calibration: measuring it per pattern "
                "(centre of mass of the brightest disk, py4DSTEM's get_origin) and "
                "fitting a plane; the datacube's calibration is not modified",
                UserWarning,
                stacklevel=2,
            )
            origin = _measure_origin(data, scan_shape, batch_size)

        if q_max is not None:
            # the field of view (+-q_max) must reach the detector somewhere:
            # beyond its farthest corner there are no pixels at all (and a
            # huge q_max would make the resampling's supersampling explode)
            corners = np.array([[0, 0], [0, Qy - 1], [Qx - 1, 0], [Qx - 1, Qy - 1]], float)
            far = np.linalg.norm(origin.reshape(-1, 1, 2) - corners, axis=-1).max()
            reach = float(np.linalg.svd(C, compute_uv=False).max()) * float(far)
            if q_max > reach:
                raise ValueError(
                    f"q_max={q_max:g} {units} lies beyond the detector, whose farthest "
                    f"corner is {reach:.4g} {units} from the origin at this calibration: "
                    "pass a smaller q_max (or None: automatic)"
                )
        if q_max is None:
            edge = np.minimum.reduce(
                [
                    origin[..., 0],
                    Qx - 1 - origin[..., 0],
                    origin[..., 1],
                    Qy - 1 - origin[..., 1],
                ]
            )
            smin = float(np.linalg.svd(C, compute_uv=False).min())
            q_max = _Q_MAX_MARGIN * float(edge.min()) * smin
            if q_max <= 0:
                raise ValueError(
                    "datacube origin lies outside the detector at some scan positions; "
                    "cannot choose q_max"
                )

        self = cls(
            data,
            scan_shape=scan_shape,
            origin=origin,
            C=C,
            size=size,
            q_max=q_max,
            units=units,
            batch_size=batch_size,
            prebin=prebin,
        )
        self.origin_measured = measured
        self.scaling = scaling
        self.power = {"linear": 1.0, "sqrt": 0.5, "power": power, "log": None}[scaling]
        # what finish() needs besides the pass's statistics
        self._pending = {"ring": ring, "braggvectors": braggvectors}
        return self

    def accumulate(self, indices=None, cache: np.ndarray | None = None) -> dict:
        """One pass over the patterns at flat ``indices`` (default: all).

        Returns the statistics :meth:`finish` combines: ``total`` (size,
        size) float64 sum of the resampled patterns, ``n`` their number and,
        for ``scaling="log"``, ``medians``: each pattern's median positive
        resampled value (patterns without one left out). ``cache`` (n_patterns,
        size, size) float32, if given, receives the resampled patterns.
        """
        idx_all = np.arange(self.n_patterns) if indices is None else np.asarray(indices)
        idx_all = idx_all.astype(np.int64, copy=False)
        total = np.zeros((self.size, self.size))
        medians = []
        for s in range(0, len(idx_all), self.batch_size):
            idx = idx_all[s : s + self.batch_size]
            res = self._resample(idx)
            if cache is not None:
                cache[idx] = res
            total += res.sum(0)
            if self.scaling == "log":
                pos = np.where(res > 0, res, np.nan).reshape(len(idx), -1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
                    m = np.nanmedian(pos, axis=1)
                medians.append(m[np.isfinite(m)])
        return {
            "total": total,
            "n": len(idx_all),
            "medians": np.concatenate(medians) if medians else None,
        }

    def finish(self, stats: list[dict]) -> DiffractionInputs:
        """Complete a :meth:`plan` from the statistics of :meth:`accumulate` passes.

        Sets :attr:`mean_resampled`, :attr:`log_reference` (median over
        patterns of each pattern's median positive value), the
        :attr:`intensity_scale` (99.9th percentile of the scaled mean
        pattern), :attr:`direct_beam_radius` and the ring :attr:`mask`.
        Returns ``self``.
        """
        pending = self._pending
        if pending is None:
            raise RuntimeError("finish: these inputs are already finished")
        size, q_max, units, C = self.size, self.q_max, self.units, self.detector_matrix
        ring, braggvectors = pending["ring"], pending["braggvectors"]
        total = np.zeros((size, size))
        n = 0
        medians = []
        for st in stats:
            total += st["total"]
            n += st["n"]
            if st.get("medians") is not None:
                medians.append(st["medians"])
        self.mean_resampled = total / n
        if self.scaling == "log":
            medians = np.concatenate(medians) if medians else np.zeros(0)
            if not medians.size:
                raise ValueError("datacube data are all zero inside the field of view")
            self.log_reference = float(np.median(medians))
        scaled_mean = self._scale(self.mean_resampled)
        scale = float(np.percentile(scaled_mean, _SCALE_PERCENTILE))
        if not scale > 0:
            raise ValueError("datacube data are all zero inside the field of view")
        self.intensity_scale = scale

        # ring mask
        self.direct_beam_radius = self._direct_beam_radius(self.mean_resampled)
        if braggvectors is not None:
            direct_tol = 3.0 * float(np.linalg.svd(C, compute_uv=False).max())
            g_min, self.bragg_peaks = _bragg_summary(
                braggvectors, self.scan_shape, direct_tol
            )
        if ring is not None:
            self.ring, self.ring_source = ring, "user"
        else:
            outer = 0.95 * q_max
            if braggvectors is not None:
                inner, self.ring_source = 0.5 * g_min, "braggvectors"
            else:
                inner, self.ring_source = 1.5 * self.direct_beam_radius, "direct_beam"
                if not np.isfinite(inner):
                    raise ValueError(
                        "ring: no direct-beam disk found at the centre of the field of "
                        "view (mean pattern), so the mask's inner radius cannot be "
                        f"chosen; check the origin calibration, or pass ring=(inner, "
                        f"outer) in {units}"
                    )
            if not inner < outer:
                raise ValueError(
                    f"automatic ring inner radius {inner:.4g} >= outer {outer:.4g} "
                    f"{units}: pass ring=(inner, outer) or a larger q_max"
                )
            self.ring = (float(inner), float(outer))
        r = np.hypot(self._q[..., 0], self._q[..., 1])
        self.mask = (r >= self.ring[0]) & (r <= self.ring[1])
        self._pending = None
        return self

    def detached(self) -> DiffractionInputs:
        """A copy without the data (nor cache), small and picklable, to ship elsewhere.

        Attach data again with :meth:`rows`. Geometry, scaling and ring are
        kept (also of an unfinished :meth:`plan`).
        """
        new = copy.copy(self)
        new._data = None
        new._cache = None
        new._mean_input = None
        if new._pending is not None:
            new._pending = {**new._pending, "braggvectors": None}
        return new

    def rows(self, r0: int, r1: int, data) -> DiffractionInputs:
        """The same inputs restricted to scan rows ``r0:r1``, read from ``data``.

        Parameters
        ----------
        r0, r1 : int
            Half-open row range, ``0 <= r0 < r1 <= Rx``.
        data : array-like (r1 - r0, Ry, Qx, Qy)
            Those rows' patterns (a block of the DataCube's data, or a lazy
            view of it): indexed as ``data[rx, ry0:ry1]``.

        Returns
        -------
        DiffractionInputs
            Scan shape ``(r1 - r0, Ry)``, the origin of those rows, every
            other attribute shared (geometry, scaling, intensity scale, ring;
            also of an unfinished :meth:`plan`). No pass over the data; no
            cache.
        """
        Rx, Ry = self.scan_shape
        if not (0 <= int(r0) < int(r1) <= Rx):
            raise ValueError(f"rows must satisfy 0 <= r0 < r1 <= {Rx}, got {r0}, {r1}")
        r0, r1 = int(r0), int(r1)
        if tuple(data.shape[:2]) != (r1 - r0, Ry):
            raise ValueError(
                f"data of rows {r0}:{r1} must have scan shape {(r1 - r0, Ry)}, "
                f"got {tuple(data.shape[:2])}"
            )
        new = copy.copy(self)
        new._data = data
        new.scan_shape = (r1 - r0, Ry)
        new.n_patterns = (r1 - r0) * Ry
        new.origin = self.origin[r0:r1]
        new._cache = None
        new._mean_input = None
        return new

    # --------------------------------------------------------------- internals
    def _resample(self, indices: np.ndarray) -> np.ndarray:
        """Area-averaged resampled patterns (n, size, size) float64 at flat ``indices``.

        Linear intensities (no scaling); geometry and averaging in the module
        docs. Reads and resamples :data:`_RESAMPLE_CHUNK` patterns at a time,
        or copies them from the cache (``cache_mb`` of :meth:`from_datacube`).
        """
        if self._cache is not None:
            return self._cache[indices].astype(np.float64)
        if len(indices) > _RESAMPLE_CHUNK:
            return np.concatenate(
                [
                    self._resample(indices[i : i + _RESAMPLE_CHUNK])
                    for i in range(0, len(indices), _RESAMPLE_CHUNK)
                ]
            )
        raw = _read_patterns(self._data, indices, self.scan_shape[1])
        _check_block(raw)
        # float32 straight from the stored type (exact for counts < 2**24)
        img = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[:, None]
        b = self.bin_factor
        if b > 1:
            # b x b blocks averaged (trailing rows/columns that fill no block
            # dropped); binned pixel k spans raw pixels b k ... b k + b - 1
            img = torch.nn.functional.avg_pool2d(img, b, b)
        Qx, Qy = img.shape[-2:]
        # grid_sample with align_corners=True: -1 and 1 are the outer pixel centres;
        # bilinear, zero outside (as map_coordinates' grid-constant mode). Grid =
        # normalised (column, row) of p = origin + offsets, built as one float32
        # add of the (cached) normalised offsets and the normalised origins
        to_unit = np.array([2.0 / (Qy - 1), 2.0 / (Qx - 1)])
        if self._unit_offsets is None or self._unit_offsets[0] != (Qx, Qy):
            unit = self._offsets.numpy()[..., ::-1] * to_unit
            self._unit_offsets = ((Qx, Qy), torch.from_numpy(unit.astype(np.float32)))
        origin = (self.origin.reshape(-1, 2)[indices] - (b - 1) / 2.0) / b  # binned px
        origin = origin[:, ::-1] * to_unit - 1.0
        origin = torch.from_numpy(origin.astype(np.float32))
        grid = origin[:, None, None, :] + self._unit_offsets[1][None]  # (n, Sf, Sf, 2)
        fine = torch.nn.functional.grid_sample(
            img, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        s = self.supersample
        return torch.nn.functional.avg_pool2d(fine, s, s)[:, 0].double().numpy()

    def _scale(self, x: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Scaled intensities of ``x``; ``inplace``: ``x`` may be overwritten."""
        if self.scaling == "linear":
            return x
        if self.scaling == "log":
            return np.log1p(x / self.log_reference)
        if self.power == 0.5:  # what x ** 0.5 computes, without a copy if allowed
            return np.sqrt(x, out=x if inplace else None)
        return x**self.power

    def _direct_beam_radius(self, mean: np.ndarray) -> float:
        """Radius (Q units) of the direct-beam disk in the mean resampled pattern.

        The radial profile ``P(r)`` of the mean pattern (bins of ``dq / 2``)
        is weighted by ``r**2``: a halo around the direct beam that decays
        like ``1 / r**2`` (e.g. the paper's Lorentzian background, or diffuse
        scattering) becomes flat, while the disk's edge stays a sharp drop.
        The radius is where ``P`` falls most steeply between the point where
        ``r**2 P(r)`` (lightly smoothed) first reaches half of its first local
        maximum and the next minimum of ``r**2 P(r)``. The plain half-maximum of ``P``
        would return the halo's width, not the disk's, under heavy background.
        NaN if the profile has no such drop.
        """
        r = np.hypot(self._q[..., 0], self._q[..., 1]).ravel()
        step = self.dq / 2.0
        nbins = int(self.q_max / step)
        k = np.minimum((r / step).astype(int), nbins)
        cnt = np.bincount(k, minlength=nbins + 1)[:nbins]
        tot = np.bincount(k, weights=mean.ravel(), minlength=nbins + 1)[:nbins]
        ok = cnt > 0
        rc = (np.arange(nbins) + 0.5) * step
        prof = np.interp(rc, rc[ok], tot[ok] / cnt[ok])
        f = gaussian_filter(rc**2 * prof, 1.0, mode="nearest")
        peaks = np.nonzero((f[1:-1] >= f[:-2]) & (f[1:-1] > f[2:]))[0] + 1
        if not peaks.size or not f[peaks[0]] > 0:
            return float("nan")
        i0 = peaks[0]
        # window: from where f first reaches half its first maximum to the
        # next minimum of f; the edge is the steepest descent of P in it
        after = np.nonzero((f[i0 + 1 : -1] <= f[i0:-2]) & (f[i0 + 1 : -1] < f[i0 + 2 :]))[0]
        i1 = i0 + 1 + after[0] if after.size else len(f) - 1
        ih = int(np.nonzero(f[: i0 + 1] >= 0.5 * f[i0])[0][0])
        if i1 - ih < 2:
            return float("nan")
        d = np.diff(prof[ih : i1 + 1])
        j = int(np.argmin(d))
        # parabolic refinement of the steepest point (between bins ih+j, ih+j+1)
        if 0 < j < len(d) - 1:
            den = d[j - 1] - 2 * d[j] + d[j + 1]
            off = 0.5 * (d[j - 1] - d[j + 1]) / den if den != 0 else 0.0
        else:
            off = 0.0
        return float(rc[ih] + (j + 0.5 + off) * step)

    def resized(self, size: int) -> DiffractionInputs:
        """The same patterns at another output ``size``.

        Same data, scan, origin, detector matrix, field of view (``q_max``),
        ring (its :attr:`mask` recomputed on the new grid) and intensity
        scaling, including :attr:`intensity_scale`: resampled values are
        area averages of detector pixels, so they do not depend on the output
        size, and patterns at both sizes are on one intensity scale. No pass
        over the data is made; :attr:`mean_resampled` of the result is None.

        Output pixel ``k`` is centred at ``q = (k - (size - 1) / 2) * dq`` at
        every size, so pixel offsets from the centre scale exactly by
        ``size / self.size`` and a lattice transform about ``q = 0`` is the
        same matrix at both sizes.
        """
        size = _check_int(size, "size", 16, 512)
        new = DiffractionInputs(
            self._data,
            scan_shape=self.scan_shape,
            origin=self.origin,
            C=self.detector_matrix,
            size=size,
            q_max=self.q_max,
            units=self.units,
            batch_size=self.batch_size,
            prebin=self.prebin,
        )
        for name in (
            "origin_measured",
            "scaling",
            "power",
            "log_reference",
            "intensity_scale",
            "ring",
            "ring_source",
            "direct_beam_radius",
            "bragg_peaks",
        ):
            setattr(new, name, getattr(self, name))
        r = np.hypot(new._q[..., 0], new._q[..., 1])
        new.mask = (r >= new.ring[0]) & (r <= new.ring[1])
        new.mean_resampled = None
        return new

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.n_patterns

    def __repr__(self) -> str:
        return (
            f"DiffractionInputs(scan_shape={self.scan_shape}, size={self.size}, "
            f"q_max={self.q_max:.4g} {self.units}, scaling={self.scaling!r})"
        )

    def batch(self, indices) -> np.ndarray:
        """Network inputs at flat scan ``indices`` (row-major over [Rx, Ry]).

        Parameters
        ----------
        indices : int or array of int
            Flat indices ``rx * Ry + ry`` in ``[0, n_patterns)``; any order,
            repeats allowed.

        Returns
        -------
        ndarray float32 (n, size, size)
            Scaled intensities divided by :attr:`intensity_scale`.
        """
        idx = np.atleast_1d(np.asarray(indices))
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or (idx.size == 0)):
            raise TypeError(f"indices must be a 1-D array of ints, got {indices!r}")
        idx = idx.astype(np.int64)
        if idx.size == 0:
            return np.zeros((0, self.size, self.size), np.float32)
        if idx.min() < 0 or idx.max() >= self.n_patterns:
            raise ValueError(
                f"indices must be in [0, {self.n_patterns}), got range "
                f"[{idx.min()}, {idx.max()}]"
            )
        # a fresh float64 array, scaled in place (large batches of fresh
        # memory cost page faults more than arithmetic)
        x = self._scale(self._resample(idx), inplace=True)
        x /= self.intensity_scale
        return x.astype(np.float32)

    def iter_batches(
        self, batch_size: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, patterns)`` covering every position in flat order.

        Parameters
        ----------
        batch_size : int, optional
            Patterns per batch (default :attr:`batch_size`).
        """
        bs = (
            self.batch_size
            if batch_size is None
            else _check_int(batch_size, "batch_size", 1)
        )
        for idx in _iter_flat(self.n_patterns, bs):
            yield idx, self.batch(idx)

    def mean_pattern(self) -> np.ndarray:
        """Mean network input over all positions, float32 (size, size); cached."""
        if self._mean_input is None:
            total = np.zeros((self.size, self.size))
            for _, x in self.iter_batches():
                total += x.sum(0, dtype=np.float64)
            self._mean_input = (total / self.n_patterns).astype(np.float32)
        return self._mean_input.copy()

    def to_array(self) -> np.ndarray:
        """All network inputs, float32 (n_patterns, size, size)."""
        out = np.empty((self.n_patterns, self.size, self.size), np.float32)
        for idx, x in self.iter_batches():
            out[idx] = x
        return out

    def q_vectors(self) -> np.ndarray:
        """Calibrated vector ``q`` of every output pixel, (size, size, 2), Q units."""
        return self._q.copy()

    def disk_coverage(self, indices, q: np.ndarray, radius: float) -> np.ndarray:
        """Fraction of each disk that lies on the detector, per scan position.

        Parameters
        ----------
        indices : array of int
            Flat scan indices (as :meth:`batch`).
        q : ndarray (n, 2)
            Disk centres, calibrated Q units (``(qx, qy)``, the frame of the
            output patterns; a spot at model pixel offset ``o`` from the
            centre has ``q = o * dq``).
        radius : float
            Disk radius, Q units (>= 0).

        Returns
        -------
        ndarray float64 (len(indices), n)
            For every position and disk, the fraction of :data:`_DISK_SAMPLES`
            points spread evenly over the disk whose detector location
            ``origin + inv(C) @ (q + d)`` (pixel centres at integer
            coordinates) lies within ``[0, Qx - 1] x [0, Qy - 1]``. 1: the
            whole disk is recorded; 0: none of it (the field of view is off
            the detector there).
        """
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        q = np.asarray(q, dtype=float).reshape(-1, 2)
        Qx, Qy = (int(v) for v in self._data.shape[-2:])
        pts = q[:, None, :] + float(radius) * _disk_points()[None]  # (n, m, 2)
        offsets = pts @ np.linalg.inv(self.detector_matrix).T
        p = self.origin.reshape(-1, 2)[idx][:, None, None, :] + offsets[None]
        inside = (
            (p[..., 0] >= 0)
            & (p[..., 0] <= Qx - 1)
            & (p[..., 1] >= 0)
            & (p[..., 1] <= Qy - 1)
        )
        return inside.mean(-1)


#: Default ``cache_mb`` of :meth:`DiffractionInputs.from_datacube` (MB).
CACHE_MB = 256.0

#: Patterns whose statistics set the intensity scale of a scan too large for
#: the cache (:meth:`DiffractionInputs.stats_indices`).
STATS_PATTERNS = 4096

#: Supersampling from which the detector is pre-binned (module docs).
PREBIN_SUPERSAMPLE = 4


def _bin_factor(dq: float, C: np.ndarray) -> int:
    """Detector pre-binning factor for output pixels of ``dq`` (Q units).

    1 unless area averaging would need ``PREBIN_SUPERSAMPLE`` or more
    sub-samples per output pixel (``ceil(dq / d_min) >= 4``); then the largest
    integer ``b`` whose binned pixels are still no larger than an output pixel
    along any direction (``b * d_max <= dq``, ``d_max`` the largest singular
    value of ``C``), so the binned detector still samples the model's grid.
    """
    sv = np.linalg.svd(C, compute_uv=False)
    d_min, d_max = float(sv.min()), float(sv.max())
    if math.ceil(dq / d_min - 1e-6) < PREBIN_SUPERSAMPLE:
        return 1
    return max(1, int(math.floor(dq / d_max + 1e-9)))


#: Points per disk of :meth:`DiffractionInputs.disk_coverage` (a centre and
#: rings at radii 1/3, 2/3, 1 with 6, 12, 18 points).
_DISK_SAMPLES = 37


def _disk_points() -> np.ndarray:
    """``_DISK_SAMPLES`` points spread evenly over the unit disk, (m, 2)."""
    pts = [np.zeros((1, 2))]
    for ring, n in ((1 / 3, 6), (2 / 3, 12), (1.0, 18)):
        a = 2 * np.pi * (np.arange(n) + 0.5 * (ring < 1)) / n
        pts.append(ring * np.stack([np.cos(a), np.sin(a)], -1))
    return np.concatenate(pts)
