"""Detector geometry: py4DSTEM's calibration of a diffraction pattern, as matrices.

One stage below both the adapters (which resample measured patterns into the
calibrated frame) and the simulator (which renders patterns from calibrated
disk positions), so that both use one definition. Also what the adapters read
from a DataCube's calibration, checked once (:func:`checked_calibration`,
:func:`calibrated_origin`), the origin measured as py4DSTEM measures it when
the calibration has none (:func:`measure_origin`), and the median lattice of
py4DSTEM ``BraggVectors`` (:func:`bragg_summary`).

Conventions
-----------
Pixel vectors are ``(qx, qy)`` = (row, column) offsets from the origin
(detector pixels); calibrated vectors are in the DataCube's Q units (A^-1 when
calibrated). ``q_cal = C @ (p - origin)``: the ellipse correction first, then
the pixel size, then the Q/R rotation (radians, counter-clockwise from +qx
toward +qy), with the flip (swapping qx and qy) before the rotation, in
py4DSTEM's order (``BraggVectors.cal``).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from scipy.ndimage import gaussian_filter

from .sources import check_block, iter_flat, read_patterns

__all__ = [
    "bragg_summary",
    "calibrated_detector",
    "calibrated_origin",
    "check_braggvectors",
    "checked_calibration",
    "detector_matrix",
    "ellipse_matrix",
    "fit_origins",
    "measure_origin",
    "measure_origins",
    "probe_radius",
    "scan_origin",
]


#: Largest ratio of the ellipse calibration's semi-axes accepted (an elliptic
#: distortion of a detector is a few per cent; 2 is far beyond any real one).
MAX_ELLIPSE_RATIO = 2.0


def ellipse_matrix(a: float, b: float, theta: float) -> np.ndarray:
    """py4DSTEM's ellipse correction matrix for calibration ``(a, b, theta)``.

    Maps a measured (elliptical) origin-centred pixel vector to the circular
    frame, exactly as ``BraggVectors.cal`` does (``e = b / a``, axis angle
    ``theta - pi/2``).
    """
    e = b / a
    s, c = math.sin(theta - math.pi / 2), math.cos(theta - math.pi / 2)
    return np.array(
        [[e * s * s + c * c, s * c * (1 - e)], [s * c * (1 - e), s * s + e * c * c]]
    )


def detector_matrix(
    q_pixel_size: float,
    ellipse: tuple[float, float, float] | None = None,
    qr_rotation: float = 0.0,
    qr_flip: bool = False,
) -> np.ndarray:
    """Matrix ``C`` from detector pixel offsets to calibrated A^-1 vectors.

    ``q_cal = C @ (p - origin)`` with ``p = (qx_pixel, qy_pixel)`` (row,
    column), following py4DSTEM's order: ellipse, pixel size, Q/R rotation
    (radians, counter-clockwise from +qx toward +qy), flip (swaps qx, qy before
    rotating).
    """
    C = q_pixel_size * (ellipse_matrix(*ellipse) if ellipse is not None else np.eye(2))
    if qr_flip:
        C = np.array([[0.0, 1.0], [1.0, 0.0]]) @ C
    c, s = math.cos(qr_rotation), math.sin(qr_rotation)
    return np.array([[c, -s], [s, c]]) @ C


# ----------------------------------------------------------- the origin, measured
def measure_origin(data, scan_shape, batch_size: int) -> np.ndarray:
    """Origin per position (Rx, Ry, 2), detector pixels, as py4DSTEM measures it.

    Per pattern: the maximum of the pattern smoothed by a Gaussian of width
    ``r``, then the centre of mass within ``1.2 r`` of it (py4DSTEM's
    ``get_origin``); ``r`` is the probe radius from ``get_probe_size`` on the
    maximum of the first batch with signal (:func:`probe_radius`). The
    measured origins (:func:`measure_origins`) are then fitted by a plane
    (py4DSTEM's ``fit_origin``; a constant for a single row or column) over
    the patterns with signal (:func:`fit_origins`).
    """
    Rx, Ry = scan_shape
    r = probe_radius(data, scan_shape, batch_size)
    meas = np.concatenate(
        [measure_origins(data, idx, Ry, r) for idx in iter_flat(Rx * Ry, batch_size)]
    )
    return fit_origins(meas, scan_shape)


def probe_radius(data, scan_shape, batch_size: int) -> float | None:
    """Probe radius (detector pixels) from the first batch with signal; None if none."""
    from py4DSTEM.process.calibration import get_probe_size

    Rx, Ry = scan_shape
    for idx in iter_flat(Rx * Ry, batch_size):
        dp = read_patterns(data, idx, Ry)
        check_block(dp)
        if dp.max() > 0:
            r = float(get_probe_size(dp.max(axis=0).astype(np.float64))[0])
            return r if np.isfinite(r) and r > 0 else None
    return None


def measure_origins(data, indices: np.ndarray, Ry: int, r: float | None) -> np.ndarray:
    """Measured origins (n, 2) of the patterns at flat ``indices``; NaN without signal."""
    if r is None:
        return np.full((len(indices), 2), np.nan)
    dp = read_patterns(data, indices, Ry)
    check_block(dp)
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


def fit_origins(meas: np.ndarray, scan_shape) -> np.ndarray:
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


def checked_calibration(cal) -> tuple[float, str, tuple | None, float, bool]:
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
        if max(a, b) > MAX_ELLIPSE_RATIO * min(a, b):
            # a degenerate ellipse would make the resampling's sub-sampling
            # (set by its shortest axis) absurdly fine
            raise ValueError(
                "datacube calibration: the ellipse's semi-axes a, b differ by a factor "
                f"of {max(a, b) / min(a, b):.3g} (got {ellipse}); expected an elliptic "
                f"distortion of a few per cent (a / b within 1 / {MAX_ELLIPSE_RATIO:g} to "
                f"{MAX_ELLIPSE_RATIO:g}): fit the ellipse again"
            )
    rot = cal.get_QR_rotation()
    rot = 0.0 if rot is None else float(rot)
    if not np.isfinite(rot):
        raise ValueError(f"datacube calibration: Q/R rotation must be finite, got {rot}")
    return float(qps), units, ellipse, rot, bool(cal.get_QR_flip())


def calibrated_origin(cal, scan_shape) -> np.ndarray | None:
    """The calibration's origin (Rx, Ry, 2), detector pixels; None when it has none.

    A scalar origin is broadcast over the scan; ValueError where not finite.
    """
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


# ------------------------------------------------------- a DataCube's geometry
def check_braggvectors(braggvectors, scan_shape: tuple[int, int]) -> None:
    """TypeError/ValueError unless a py4DSTEM BraggVectors of ``scan_shape``."""
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


def calibrated_detector(cal, expected_units: str | None) -> tuple[np.ndarray, str]:
    """Detector matrix ``C`` and Q units of a calibration.

    ValueError when ``expected_units`` (a fitted model's) is given and the
    calibration's Q units differ.
    """
    qps, units, ellipse, rot, flip = checked_calibration(cal)
    if expected_units is not None and units != expected_units:
        raise ValueError(
            f"datacube calibration: Q pixel units are {units!r}, but the model "
            f"works in {expected_units!r} (it was fitted on data calibrated in "
            f"{expected_units}): calibrate the DataCube as the training data was "
            "(datacube.calibration.set_Q_pixel_size and set_Q_pixel_units), so "
            "that the model's field of view means the same"
        )
    return detector_matrix(qps, ellipse, rot, flip), units


def scan_origin(datacube, origin, origin_measured: bool, batch_size: int):
    """The origin (Rx, Ry, 2), detector pixels, of a DataCube, and whether measured.

    ``origin`` given: checked and used (``origin_measured`` says whether it was
    measured elsewhere). Else the calibration's; else measured from the data
    (:func:`measure_origin`, ``batch_size`` patterns at a time) with a
    UserWarning (attributed to the caller's caller: ``DiffractionInputs.plan``'s).
    """
    Rx, Ry = (int(v) for v in datacube.data.shape[:2])
    if origin is not None:
        origin = np.asarray(origin, dtype=np.float64)
        if origin.shape != (Rx, Ry, 2) or not np.isfinite(origin).all():
            raise ValueError(
                f"origin must be a finite array of shape {(Rx, Ry, 2)}, got "
                f"shape {origin.shape}"
            )
        return origin, bool(origin_measured)
    origin = calibrated_origin(datacube.calibration, (Rx, Ry))
    if origin is not None:
        return origin, False
    warnings.warn(
        "datacube has no origin calibration: measuring it per pattern "
        "(centre of mass of the brightest disk, py4DSTEM's get_origin) and "
        "fitting a plane; the datacube's calibration is not modified",
        UserWarning,
        stacklevel=3,
    )
    return measure_origin(datacube.data, (Rx, Ry), batch_size), True


# ----------------------------------------------------------------- Bragg vectors
def bragg_summary(bv, scan_shape, direct_tol: float) -> tuple[float, np.ndarray]:
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
