"""Errors of strain maps against ground truth (numpy; the strain keys of affine)."""

from __future__ import annotations

import numpy as np

from .affine import STRAIN_KEYS as KEYS

__all__ = ["strain_errors", "wrap_angle"]


def wrap_angle(delta: np.ndarray, symmetry: int = 1) -> np.ndarray:
    """Wrap angle differences (radians) into ``[-pi/n, pi/n)`` for n-fold symmetry."""
    period = 2.0 * np.pi / symmetry
    return (np.asarray(delta) + period / 2) % period - period / 2


def _slice(rs, key: str) -> np.ndarray:
    return np.asarray(rs.get_slice(key).data, dtype=np.float64)


def strain_errors(result, truth, symmetry: int = 1, truth_values=None) -> dict:
    """Mean absolute errors of a strain RealSlice against the truth.

    Parameters
    ----------
    result : py4DSTEM.RealSlice
        Slices ``e_xx, e_yy, e_xy, theta, mask`` (``mask`` > 0 where valid).
    truth : py4DSTEM.RealSlice
        Ground truth with the same scan shape (from :func:`simulate.polycrystal`).
    symmetry : int
        In-plane symmetry order; theta errors are wrapped modulo ``2 pi / n``.
    truth_values : dict, optional
        Use these truth arrays (e.g. ``LatticeTransform.strain_linear()``)
        instead of the truth's slices.

    Returns
    -------
    dict
        ``mae_<key>`` over all scan positions (invalid positions count with
        their reported value, or as 0 strain if NaN, as the paper's MAE over
        all pixels), ``mae_valid_<key>`` over valid positions only,
        ``theta_deg`` variants in degrees, and ``valid_fraction``.
    """
    mask = _slice(result, "mask") > 0
    if mask.shape != truth.get_slice("e_xx").data.shape:
        raise ValueError(
            f"result scan shape {mask.shape} does not match truth "
            f"{truth.get_slice('e_xx').data.shape}"
        )
    out: dict = {"valid_fraction": float(mask.mean())}
    for k in KEYS:
        est = np.nan_to_num(_slice(result, k))
        ref = truth_values[k] if truth_values is not None else _slice(truth, k)
        err = est - ref
        if k == "theta":
            err = wrap_angle(err, symmetry)
        err = np.abs(err)
        out[f"mae_{k}"] = float(err.mean())
        out[f"mae_valid_{k}"] = float(err[mask].mean()) if mask.any() else float("nan")
    out["mae_theta_deg"] = float(np.degrees(out["mae_theta"]))
    out["mae_valid_theta_deg"] = float(np.degrees(out["mae_valid_theta"]))
    return out
