"""Noise models for 4D-STEM data sets.

``add_background_noise`` is the paper's "x % Poisson background noise": per
pattern, the pattern normalised to unit sum is mixed with a Lorentzian halo on
the direct beam, and Poisson counting noise at ``counts`` electrons per probe
is applied::

    q = fftshift(fftfreq(N))                     # per detector axis, centred
    bg = 1 / (1 + (qx**2 + qy**2) / 0.01**2);  bg /= bg.sum()
    comb = img / img.sum() * (1 - w) + bg * w     # w = percent / 100
    noisy = Poisson(comb * counts) / counts * img.sum()

The last factor restores the pattern's original total intensity, so ``w = 0``
(which applies no Poisson noise at all, as in the reference) returns the data
unchanged and ``E[noisy] = comb * img.sum()``.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._validation import check_datacube, check_seed

__all__ = ["add_background_noise", "add_poisson_noise", "lorentzian_halo"]


def lorentzian_halo(pattern_shape: tuple[int, int], width: float = 0.01) -> np.ndarray:
    """The paper's background halo, centred on the pattern centre, unit sum.

    Parameters
    ----------
    pattern_shape : (int, int)
        Detector shape ``(Qx, Qy)``.
    width : float
        Half width at half maximum in units of the sampling frequency
        (``fftfreq`` units; 0.01 x N pixels).

    Returns
    -------
    ndarray, float64, shape ``pattern_shape``
        Centre at index ``(Qx // 2, Qy // 2)``.
    """
    qx = np.fft.fftshift(np.fft.fftfreq(int(pattern_shape[0])))
    qy = np.fft.fftshift(np.fft.fftfreq(int(pattern_shape[1])))
    qr2 = qx[:, None] ** 2 + qy[None, :] ** 2
    bg = 1.0 / (1.0 + qr2 / width**2)
    return bg / bg.sum()


def _check_counts(counts) -> float:
    if isinstance(counts, bool) or not isinstance(counts, numbers.Real):
        raise TypeError(f"counts must be a positive number, got {type(counts).__name__}")
    counts = float(counts)
    if not np.isfinite(counts) or counts <= 0:
        raise ValueError(f"counts must be a positive finite number, got {counts}")
    return counts


def _new_datacube(datacube, data: np.ndarray, suffix: str):
    """A new DataCube with ``data`` and a copy of ``datacube``'s calibration."""
    from py4DSTEM import DataCube

    # Calibration.copy() carries every item (origin, pixel sizes, ellipse, ...)
    return DataCube(
        data=data,
        name=f"{datacube.name}_{suffix}",
        calibration=datacube.calibration.copy(),
    )


def _per_pattern(datacube, fn, suffix: str):
    """New float32 DataCube with ``fn(unit, total)`` applied to every pattern.

    ``unit`` is a chunk of patterns (n, Qx, Qy) normalised to unit sum (all-zero
    patterns stay zero), ``total`` their original sums (n, 1, 1). Patterns are
    visited in scan order, one scan row at a time (works for memmap and h5py
    data), so a seeded generator inside ``fn`` gives reproducible output.
    """
    data = datacube.data
    out = np.empty(data.shape, dtype=np.float32)
    for rx in range(data.shape[0]):
        img = np.asarray(data[rx], dtype=np.float64)
        total = img.sum(axis=(1, 2), keepdims=True)
        safe = np.where(total > 0, total, 1.0)
        out[rx] = fn(img / safe, safe)
    return _new_datacube(datacube, out, suffix)


def add_background_noise(
    datacube,
    percent: float,
    counts: float = 1e5,
    seed: int = 0,
    width: float = 0.01,
):
    """Add the paper's "x % Poisson background noise" to every pattern.

    Parameters
    ----------
    datacube : py4DSTEM.DataCube
        Input, axes ``[Rx, Ry, Qx, Qy]``, non-negative finite intensities. Not
        modified.
    percent : float
        Background fraction ``w * 100`` in [0, 100]. 0 returns an unchanged copy.
    counts : float
        Electrons per probe position (dose) for the Poisson step, > 0.
    seed : int
        Seed of the random generator; identical seeds give identical data.
    width : float
        Halo half width (see :func:`lorentzian_halo`).

    Returns
    -------
    py4DSTEM.DataCube
        New float32 DataCube with the input's calibration.
    """
    check_datacube(datacube)
    if isinstance(percent, bool) or not isinstance(percent, numbers.Real):
        raise TypeError(
            f"percent must be a number in [0, 100], got {type(percent).__name__}"
        )
    if not (0.0 <= float(percent) <= 100.0):
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    counts = _check_counts(counts)
    seed = check_seed(seed)
    w = float(percent) / 100.0

    data = datacube.data
    if w == 0.0:
        return _new_datacube(datacube, np.array(data, dtype=np.float32), "noisy")

    bg = lorentzian_halo(data.shape[2:], width)
    rng = np.random.default_rng(seed)
    return _per_pattern(
        datacube,
        lambda unit, total: (
            rng.poisson((unit * (1.0 - w) + bg * w) * counts) / counts * total
        ),
        "noisy",
    )


def add_poisson_noise(datacube, counts: float = 1e4, seed: int = 0):
    """Dose-limited Poisson noise: each pattern rescaled to ``counts`` electrons.

    Parameters
    ----------
    datacube : py4DSTEM.DataCube
        Input, not modified.
    counts : float
        Mean number of electrons per probe position, > 0.
    seed : int
        Random seed.

    Returns
    -------
    py4DSTEM.DataCube
        New float32 DataCube of electron counts per pixel (integers stored as
        float32), with the input's calibration.
    """
    check_datacube(datacube)
    counts = _check_counts(counts)
    seed = check_seed(seed)
    rng = np.random.default_rng(seed)
    return _per_pattern(datacube, lambda unit, total: rng.poisson(unit * counts), "dose")
