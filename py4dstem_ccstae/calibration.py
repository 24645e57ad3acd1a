"""Detector geometry: py4DSTEM's calibration of a diffraction pattern, as matrices.

One stage below both the adapters (which resample measured patterns into the
calibrated frame) and the simulator (which renders patterns from calibrated
disk positions), so that both use one definition.

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

import numpy as np

__all__ = ["ellipse_matrix", "detector_matrix"]


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
