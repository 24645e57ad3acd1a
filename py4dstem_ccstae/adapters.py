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
Pages read from a shared ``numpy.memmap`` are released from the process's
resident set after every read (:mod:`py4dstem_ccstae.sources`).

Geometry
--------
The output grid, where it samples the detector (area-averaged, anti-aliased
resampling; pre-binning of large detectors) and its ring mask are described
in :mod:`py4dstem_ccstae.sampling`: output pixel ``(i, j)`` is the calibrated
vector ``q = ((i - (size - 1) / 2) dq, (j - (size - 1) / 2) dq)``, ``dq = 2
q_max / size``, sampled at detector location ``origin + inv(C) @ q``; every
calibration (origin, ellipse, pixel size, Q/R rotation and flip) is undone.

Intensities
-----------
Scaled as in :mod:`py4dstem_ccstae.intensity` (``'linear'``, ``'sqrt'``,
``'power'``, ``'log'``), then divided by one global
:attr:`DiffractionInputs.intensity_scale`, set from the mean (linear)
resampled pattern over every pattern of a scan that fits the cache
(``cache_mb``), else over whole scan rows spread evenly over it, at least 4096
patterns (:meth:`DiffractionInputs.stats_indices`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np

from . import sources
from ._validation import check_datacube, check_int, check_number, check_ring
from .calibration import (
    bragg_summary,
    calibrated_detector,
    check_braggvectors,
    scan_origin,
)
from .intensity import (
    SCALINGS,
    block_statistics,
    combine_statistics,
    exponent,
    global_scale,
    scale,
)
from .sampling import (
    DetectorSampling,
    automatic_ring,
    check_prebin,
    direct_beam_radius,
    field_of_view,
)

__all__ = ["DiffractionInputs", "SCALINGS"]

#: Most patterns resampled at once (bounds the sampling grids' memory).
_RESAMPLE_CHUNK = 256


# ------------------------------------------------------------------- validation
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
        prebin: bool | int | str = True,
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
        # the grid, where it samples the (pre-binned) detector: sampling.py
        self._sampling = DetectorSampling(size, q_max, C, prebin)

    @property
    def prebin(self) -> bool | int | str:
        """The pre-binning asked for (``True``, ``False``, ``"coarsest"`` or a factor)."""
        return self._sampling.prebin

    @property
    def bin_factor(self) -> int:
        """Detector pre-binning factor ``b`` (1: none; :mod:`~py4dstem_ccstae.sampling`)."""
        return self._sampling.bin_factor

    @property
    def supersample(self) -> int:
        """Sub-samples per output pixel and axis of the area averaging (binned detector)."""
        return self._sampling.supersample

    @property
    def _q(self) -> np.ndarray:
        return self._sampling.q

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
        prebin: bool | int | str = True,
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
        prebin : bool, int or "coarsest"
            Pre-bin large detectors before resampling
            (:mod:`~py4dstem_ccstae.sampling`, Pre-binning). True (default):
            only when area averaging would need >= 4 x 4 sub-samples per
            output pixel, by the smallest factor that brings it below; an
            int: that factor (its binned pixels no larger than an output
            pixel); ``"coarsest"``: the largest such factor; False: none.
            A fitted model maps with the factor it was trained with.
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
        prebin: bool | int | str = True,
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
        size = check_int(size, "size", 16, 512)
        batch_size = check_int(batch_size, "batch_size", 1)
        if q_max is not None:
            q_max = check_number(q_max, "q_max", low=0.0, low_open=True)
        if not isinstance(scaling, str) or scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        power = check_number(power, "power", low=0.0, low_open=True)
        if ring is not None:
            ring = check_ring(ring)
        prebin = check_prebin(prebin)

        data = datacube.data
        Rx, Ry, Qx, Qy = (int(v) for v in data.shape)
        scan_shape = (Rx, Ry)
        if braggvectors is not None:
            check_braggvectors(braggvectors, scan_shape)
        C, units = calibrated_detector(datacube.calibration, units)
        origin, measured = scan_origin(datacube, origin, origin_measured, batch_size)
        q_max = field_of_view(q_max, origin, C, (Qx, Qy), units)
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
        self.power = exponent(scaling, power)
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

        def blocks():
            for s in range(0, len(idx_all), self.batch_size):
                idx = idx_all[s : s + self.batch_size]
                res = self._resample(idx)
                if cache is not None:
                    cache[idx] = res
                yield res

        return block_statistics(blocks(), self.size, self.scaling)

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
        self.mean_resampled, self.log_reference = combine_statistics(
            stats, size, self.scaling
        )
        self.intensity_scale = global_scale(self._scale(self.mean_resampled))

        # ring mask
        self.direct_beam_radius = direct_beam_radius(
            self.mean_resampled, self._q, self.dq, self.q_max
        )
        g_min = None
        if braggvectors is not None:
            direct_tol = 3.0 * float(np.linalg.svd(C, compute_uv=False).max())
            g_min, self.bragg_peaks = bragg_summary(
                braggvectors, self.scan_shape, direct_tol
            )
        if ring is not None:
            self.ring, self.ring_source = ring, "user"
        else:
            self.ring, self.ring_source = automatic_ring(
                q_max, units, self.direct_beam_radius, g_min
            )
        self.mask = self._sampling.ring_mask(self.ring)
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
        raw = sources.read_patterns(self._data, indices, self.scan_shape[1])
        sources.check_block(raw)
        return self._sampling.resample(raw, self.origin.reshape(-1, 2)[indices])

    def _scale(self, x: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Scaled intensities of ``x``; ``inplace``: ``x`` may be overwritten."""
        return scale(x, self.scaling, self.power, self.log_reference, inplace)

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
        size = check_int(size, "size", 16, 512)
        new = DiffractionInputs(
            self._data,
            scan_shape=self.scan_shape,
            origin=self.origin,
            C=self.detector_matrix,
            size=size,
            q_max=self.q_max,
            units=self.units,
            batch_size=self.batch_size,
            # an explicit factor is the main size's; another size takes its own
            prebin=self.prebin if isinstance(self.prebin, (bool, str)) else True,
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
        new.mask = new._sampling.ring_mask(new.ring)
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
            else check_int(batch_size, "batch_size", 1)
        )
        for idx in sources.iter_flat(self.n_patterns, bs):
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
            For every position and disk, the fraction of the disk on the
            detector (:meth:`~py4dstem_ccstae.sampling.DetectorSampling.coverage`):
            1, the whole disk is recorded; 0, none of it.
        """
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        q = np.asarray(q, dtype=float).reshape(-1, 2)
        origin = self.origin.reshape(-1, 2)[idx]
        return self._sampling.coverage(origin, self._data.shape[-2:], q, radius)


#: Default ``cache_mb`` of :meth:`DiffractionInputs.from_datacube` (MB).
CACHE_MB = 256.0

#: Patterns whose statistics set the intensity scale of a scan too large for
#: the cache (:meth:`DiffractionInputs.stats_indices`).
STATS_PATTERNS = 4096
