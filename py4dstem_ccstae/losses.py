"""Losses of the CC-ST-AE (torch). Patterns ``(B, 1, S, S)``, masks ``(S, S)``.

* forward: the input warped into the base frame (by ``inv(A)``) must match
  the base inside the ring mask;
* cycle: the base warped into the input frame (by ``A``) must reproduce the
  input inside the mask warped the same way, so both terms compare the same
  physical pixels;
* hinge: strain components beyond ``limit`` are penalised quadratically.

Per-pixel discrepancies (:func:`pixel_loss`, option ``loss``), between a
*model* pixel ``m`` (the base, or the base warped into the input frame) and a
*data* pixel ``d`` (the input, or the input warped into the base frame):

* ``"mse"``: ``w (m - d)**2`` with ``w = overshoot`` where ``m > d`` and 1
  elsewhere (``overshoot = 1``: plain MSE; the paper penalises overshoot 2-5x
  so that the base does not claim intensity the data lack);
* ``"l1"``: ``w |m - d|`` (robust to outlier pixels, e.g. hot pixels or
  a spot of another grain);
* ``"poisson"``: the Poisson deviance ``m - d + d log(d / m)`` (``m``
  clamped to ``>= 1e-6``, as is ``d`` inside the log), the likelihood loss
  for counts; meaningful only on linearly scaled, non-negative intensities
  (``scaling="linear"``).
"""

from __future__ import annotations

import torch

from .config import LOSSES
from .warp import warp

__all__ = ["pixel_loss", "cycle_losses", "strain_hinge", "LOSSES"]


def pixel_loss(
    model: torch.Tensor,
    data: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "mse",
    overshoot: float = 1.0,
) -> torch.Tensor:
    """Per-sample mean of the per-pixel loss ``kind`` inside ``mask`` (module docs).

    Parameters
    ----------
    model, data : Tensor (B, 1, S, S)
        Model and data pixels (scaled intensities).
    mask : Tensor, broadcastable to ``model``
        Weights (1 = compared).
    kind : str
        One of :data:`LOSSES`.
    overshoot : float
        Weight of pixels where ``model > data`` (``"mse"`` and ``"l1"``).

    Returns
    -------
    Tensor (B,)
    """
    w = mask.expand_as(model)
    diff = model - data
    if kind == "poisson":
        m = model.clamp_min(1e-6)
        d = data.clamp_min(0.0)
        # the data side is a warp of the input, so gradients reach d too:
        # d log d is taken with log's argument floored, else its gradient
        # d / d is 0 / 0 = NaN at empty pixels
        per = m - d + torch.xlogy(d, d.clamp_min(1e-6)) - torch.xlogy(d, m)
    else:
        per = diff * diff if kind == "mse" else diff.abs()
        if overshoot != 1.0:
            per = per * torch.where(diff > 0, overshoot, 1.0)
    return (per * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-8)


def cycle_losses(
    x: torch.Tensor,
    base: torch.Tensor,
    A: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "bilinear",
    loss: str = "mse",
    overshoot: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and cycle reconstruction errors, per sample.

    Parameters
    ----------
    x, base : Tensor (B, 1, S, S)
        Inputs and their selected bases.
    A : Tensor (B, 2, 2)
        Base -> input lattice transforms (pixel coordinates).
    mask : Tensor (S, S)
        Ring (or spot) mask in the base frame (1 = compared); whole-image
        affine warps.
    mode : str
        Interpolation of ``grid_sample``.
    loss, overshoot :
        Per-pixel loss and overshoot weight (:func:`pixel_loss`); the base
        side is the model, the input side the data.

    Returns
    -------
    forward, cycle : Tensor (B,)
    x_in_base : Tensor (B, 1, S, S)
        The inputs aligned onto the base frame.
    """
    m = mask.to(x.dtype)[None, None].expand(x.shape[0], 1, *mask.shape)
    x_in_base = warp(x, torch.linalg.inv(A), mode=mode)
    base_in_x = warp(base, A, mode=mode)
    m_in_x = warp(m, A)
    forward = pixel_loss(base, x_in_base, m, loss, overshoot)
    cycle = pixel_loss(base_in_x, x, m_in_x, loss, overshoot)
    return forward, cycle, x_in_base


def strain_hinge(strain: torch.Tensor, limit: float) -> torch.Tensor:
    """``sum(relu(|e| - limit)**2)`` per sample, (B,)."""
    return torch.relu(strain.abs() - limit).pow(2).sum(-1)
