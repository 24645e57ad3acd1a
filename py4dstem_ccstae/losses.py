"""Losses of the CC-ST-AE (torch). Patterns ``(B, 1, S, S)``, masks ``(S, S)``.

* forward: the input warped into the base frame (by ``inv(A)``) must match
  the base inside the ring mask;
* cycle: the base warped into the input frame (by ``A``) must reproduce the
  input inside the mask warped the same way, so both terms compare the same
  physical pixels;
* hinge: strain components beyond ``limit`` are penalised quadratically.
"""

from __future__ import annotations

import torch

from .warp import warp, warp_spots

__all__ = ["masked_mse", "cycle_losses", "strain_hinge"]


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error inside ``mask`` (broadcast to ``a``), shape (B,)."""
    w = mask.expand_as(a)
    return ((a - b) ** 2 * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-8)


def cycle_losses(
    x: torch.Tensor,
    base: torch.Tensor,
    A: torch.Tensor,
    mask: torch.Tensor,
    spots: torch.Tensor | None = None,
    mode: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and cycle reconstruction errors, per sample.

    Parameters
    ----------
    x, base : Tensor (B, 1, S, S)
        Inputs and their selected bases.
    A : Tensor (B, 2, 2)
        Base -> input lattice transforms (pixel coordinates).
    mask : Tensor (S, S)
        Ring (or spot) mask in the base frame (1 = compared).
    spots : Tensor (n, 2), optional
        Base spot offsets from the centre (pixels). Given: spots are moved
        rigidly (:func:`~py4dstem_ccstae.warp.warp_spots`, spot shapes kept);
        None: whole-image affine warps.
    mode : str
        Interpolation of ``grid_sample``.

    Returns
    -------
    forward, cycle : Tensor (B,)
    x_in_base : Tensor (B, 1, S, S)
        The inputs aligned onto the base frame.
    """
    m = mask.to(x.dtype)[None, None].expand(x.shape[0], 1, *mask.shape)
    if spots is None:
        x_in_base = warp(x, torch.linalg.inv(A), mode=mode)
        base_in_x = warp(base, A, mode=mode)
        m_in_x = warp(m, A)
    else:
        x_in_base = warp_spots(x, A, spots, src=1.0, dst=0.0, mode=mode)
        base_in_x = warp_spots(base, A, spots, src=0.0, dst=1.0, mode=mode)
        m_in_x = warp_spots(m, A, spots, src=0.0, dst=1.0)
    forward = masked_mse(x_in_base, base, m)
    cycle = masked_mse(base_in_x, x, m_in_x)
    return forward, cycle, x_in_base


def strain_hinge(strain: torch.Tensor, limit: float) -> torch.Tensor:
    """``sum(relu(|e| - limit)**2)`` per sample, (B,)."""
    return torch.relu(strain.abs() - limit).pow(2).sum(-1)
