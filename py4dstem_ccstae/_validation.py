"""Argument checks shared by public entry points.

Each check raises ``TypeError`` (wrong kind of object) or ``ValueError``
(right kind, impossible value) with a message naming the argument.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np


def check_datacube(datacube, name: str = "datacube"):
    """Require a 4-D py4DSTEM ``DataCube``; return it."""
    from py4DSTEM import DataCube

    if not isinstance(datacube, DataCube):
        raise TypeError(
            f"{name} must be a py4DSTEM.DataCube, got {type(datacube).__name__}"
        )
    if datacube.data.ndim != 4:
        raise ValueError(
            f"{name} must have 4 axes [Rx, Ry, Qx, Qy], got shape {datacube.data.shape}"
        )
    if min(datacube.data.shape) < 1:
        raise ValueError(f"{name} is empty, shape {datacube.data.shape}")
    return datacube


#: Largest seed: torch seeds are 64-bit, and retries add to the seed.
MAX_SEED = 2**62


def check_seed(seed, name: str = "seed") -> int:
    """Require an integer seed in ``[0, MAX_SEED]``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative int, got {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**62], got {seed}")
    return int(seed)


def check_shape2(
    value: Sequence[int], name: str, minimum: int, maximum: int | None = None
) -> tuple[int, int]:
    """Require a pair of integers within [minimum, maximum]."""
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(f"{name} must be a pair of ints, got {value!r}")
    lo_ok = all(v >= minimum for v in pair)
    hi_ok = maximum is None or all(v <= maximum for v in pair)
    if not (lo_ok and hi_ok):
        bound = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} entries must be in {bound}, got {pair}")
    return int(pair[0]), int(pair[1])


def check_number(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Require a finite real number within bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (v < low or (low_open and v == low)):
        op = ">" if low_open else ">="
        raise ValueError(f"{name} must be {op} {low}, got {value}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return v


def check_reference(reference, scan_shape: tuple[int, int], name: str = "reference"):
    """Require a boolean mask of the scan shape selecting at least one position."""
    reference = np.asarray(reference)
    if reference.shape != tuple(scan_shape):
        raise ValueError(
            f"{name} must be a boolean mask of the scan shape {tuple(scan_shape)}, "
            f"got shape {reference.shape}"
        )
    if reference.dtype != bool:
        raise TypeError(f"{name} must be a boolean mask, got dtype {reference.dtype}")
    if not reference.any():
        raise ValueError(f"{name} selects no scan position")
    return reference


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """Require an int in ``[low, high]`` (``high`` None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return int(value)


def check_ring(ring) -> tuple[float, float]:
    """Require a ring ``(inner, outer)`` of radii with ``0 <= inner < outer``."""
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
