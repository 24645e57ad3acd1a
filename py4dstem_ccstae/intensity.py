"""Intensity scaling of resampled patterns, and the statistics that set it.

Scaling (applied to the resampled patterns) is one of ``'linear'`` (``x``),
``'sqrt'`` (``sqrt(x)``), ``'power'`` (``x ** power``) and ``'log'``
(``log1p(x / m)``, ``m`` the median over patterns of each pattern's median
positive resampled value). The scaled values are then divided by one global
scale, the 99.9th percentile (:data:`SCALE_PERCENTILE`) of the scaled mean
(linear) resampled pattern. The statistics are gathered block by block
(:func:`block_statistics`) and combined (:func:`combine_statistics`), so that
the pass over the data can run anywhere (one process or a cluster) with the
same result.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "SCALINGS",
    "block_statistics",
    "combine_statistics",
    "exponent",
    "global_scale",
    "scale",
]

#: Intensity scalings of the inputs (option ``scaling``).
SCALINGS = ("linear", "sqrt", "log", "power")

#: Percentile of the scaled mean pattern used as the global intensity scale.
SCALE_PERCENTILE = 99.9


def exponent(scaling: str, power: float) -> float | None:
    """The exponent of ``scaling``: 1, 0.5, ``power``, or None for ``'log'``."""
    return {"linear": 1.0, "sqrt": 0.5, "power": power, "log": None}[scaling]


def scale(
    x: np.ndarray,
    scaling: str,
    power: float | None,
    log_reference: float | None,
    inplace: bool = False,
) -> np.ndarray:
    """Scaled intensities of ``x`` (module docs); ``inplace``: ``x`` may be overwritten."""
    if scaling == "linear":
        return x
    if scaling == "log":
        return np.log1p(x / log_reference)
    if power == 0.5:  # what x ** 0.5 computes, without a copy if allowed
        return np.sqrt(x, out=x if inplace else None)
    return x**power


def block_statistics(blocks, size: int, scaling: str) -> dict:
    """Statistics of resampled patterns, for :func:`combine_statistics`.

    ``blocks``: iterable of (n, size, size) float64 resampled (linear)
    patterns. Returns ``total`` (size, size) float64 sum of the patterns,
    ``n`` their number and, for ``scaling="log"``, ``medians``: each
    pattern's median positive value (patterns without one left out).
    """
    total = np.zeros((size, size))
    n = 0
    medians = []
    for res in blocks:
        total += res.sum(0)
        n += len(res)
        if scaling == "log":
            pos = np.where(res > 0, res, np.nan).reshape(len(res), -1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
                m = np.nanmedian(pos, axis=1)
            medians.append(m[np.isfinite(m)])
    return {
        "total": total,
        "n": n,
        "medians": np.concatenate(medians) if medians else None,
    }


def combine_statistics(stats: list[dict], size: int, scaling: str):
    """Mean resampled pattern (size, size) and log reference of several blocks.

    The log reference (``'log'`` only, else None) is the median of every
    block's per-pattern medians. ValueError when no pattern has signal.
    """
    total = np.zeros((size, size))
    n = 0
    medians = []
    for st in stats:
        total += st["total"]
        n += st["n"]
        if st.get("medians") is not None:
            medians.append(st["medians"])
    log_reference = None
    if scaling == "log":
        medians = np.concatenate(medians) if medians else np.zeros(0)
        if not medians.size:
            raise ValueError("datacube data are all zero inside the field of view")
        log_reference = float(np.median(medians))
    return total / n, log_reference


def global_scale(scaled_mean: np.ndarray) -> float:
    """The global intensity divisor: :data:`SCALE_PERCENTILE` of the scaled mean."""
    value = float(np.percentile(scaled_mean, SCALE_PERCENTILE))
    if not value > 0:
        raise ValueError("datacube data are all zero inside the field of view")
    return value
