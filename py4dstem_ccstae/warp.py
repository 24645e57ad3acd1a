"""Differentiable warps of diffraction patterns by lattice transforms (torch).

The single place where the package converts between detector pixel
coordinates and torch's ``affine_grid`` normalised coordinates.

Conventions
-----------
* Patterns are tensors ``(B, C, Qx, Qy)``: axis -2 is ``qx`` (rows), axis -1
  is ``qy`` (columns), as in py4DSTEM.
* ``A`` (``(B, 2, 2)``) is a :class:`~py4dstem_ccstae.affine.LatticeTransform`
  matrix in detector-pixel ``(qx, qy)`` coordinates about the pattern centre
  ``c``: a feature at ``c + g`` in the input appears at ``c + A @ g`` in the
  output, i.e. ``out(p) = in(c + inv(A) @ (p - c))``.
* ``c`` is given in pixel coordinates ``(row, column)`` where pixel ``i`` has
  its centre at coordinate ``i`` (default: ``((Qx - 1) / 2, (Qy - 1) / 2)``).
* torch's ``affine_grid`` works in ``(x, y) = (column, row)`` normalised to
  [-1, 1] with ``align_corners=False``: ``x = (2 * column + 1) / Qy - 1``.
  :func:`grid_theta`, :func:`pixel_to_grid` and :func:`sample_offsets`
  convert; nothing else in the package should.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur", "grid_theta", "pixel_to_grid", "sample_offsets", "warp"]

_SWAP = torch.tensor([[0.0, 1.0], [1.0, 0.0]])


def grid_theta(
    A: torch.Tensor, shape: tuple[int, int], center: torch.Tensor | None = None
) -> torch.Tensor:
    """``affine_grid`` matrices ``(B, 2, 3)`` that warp patterns by ``A``.

    Parameters
    ----------
    A : Tensor (B, 2, 2)
        Lattice transforms in pixel ``(qx, qy)`` coordinates (see module docs).
    shape : (int, int)
        Pattern shape ``(Qx, Qy)``.
    center : Tensor (B, 2) or (2,), optional
        Warp centre in pixels ``(row, column)``; default the pattern centre.

    Returns
    -------
    Tensor (B, 2, 3)
        ``theta`` for ``F.affine_grid(theta, size, align_corners=False)``:
        for each output location ``u`` (normalised ``(x, y)``) the sampled
        input location is ``theta[:, :, :2] @ u + theta[:, :, 2]``.
    """
    if A.ndim != 3 or A.shape[-2:] != (2, 2):
        raise ValueError(f"A must have shape (B, 2, 2), got {tuple(A.shape)}")
    Qx, Qy = shape
    dtype, device = A.dtype, A.device
    B = A.shape[0]
    if center is None:
        center = torch.tensor([(Qx - 1) / 2.0, (Qy - 1) / 2.0], dtype=dtype, device=device)
    center = center.to(dtype=dtype, device=device).expand(B, 2)
    swap = _SWAP.to(dtype=dtype, device=device)
    # sampling map in (row, col) pixels: p_in - c = inv(A) (p_out - c)
    M = swap @ torch.linalg.inv(A) @ swap  # in (col, row) order
    S = torch.diag(torch.tensor([2.0 / Qy, 2.0 / Qx], dtype=dtype, device=device))
    S_inv = torch.diag(torch.tensor([Qy / 2.0, Qx / 2.0], dtype=dtype, device=device))
    L = S @ M @ S_inv  # in normalised (x, y)
    c_xy = torch.stack([center[:, 1], center[:, 0]], -1)  # (col, row)
    u_c = (2.0 * c_xy + 1.0) / torch.tensor([Qy, Qx], dtype=dtype, device=device) - 1.0
    t = u_c - (L @ u_c.unsqueeze(-1)).squeeze(-1)
    return torch.cat([L, t.unsqueeze(-1)], -1)


def warp(
    x: torch.Tensor,
    A: torch.Tensor,
    center: torch.Tensor | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Warp patterns so that features at ``c + g`` move to ``c + A @ g``.

    Parameters
    ----------
    x : Tensor (B, C, Qx, Qy)
        Patterns.
    A : Tensor (B, 2, 2)
        Lattice transforms in pixel ``(qx, qy)`` coordinates.
    center : Tensor, optional
        Warp centre ``(row, column)`` in pixels; default the pattern centre.
    mode : str
        ``grid_sample`` interpolation (``"bilinear"`` or ``"bicubic"``).

    Returns
    -------
    Tensor (B, C, Qx, Qy)
        Zero outside the input's field of view.
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, Qx, Qy), got {tuple(x.shape)}")
    theta = grid_theta(A.to(x.dtype), tuple(x.shape[-2:]), center)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def sample_offsets(x: torch.Tensor, A: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``x`` at ``c + A @ y`` for offsets ``y`` from the centre.

    Parameters
    ----------
    x : Tensor (B, C, Qx, Qy)
        Patterns; ``c = ((Qx - 1) / 2, (Qy - 1) / 2)``.
    A : Tensor (B, 2, 2)
        Transforms in pixel ``(qx, qy)`` coordinates (a base feature at
        ``c + y`` is looked for at ``c + A @ y``).
    offsets : Tensor (2, M)
        Offsets ``y`` (pixels, rows ``qx`` then ``qy``).

    Returns
    -------
    Tensor (B, C, M)
        Zero outside the field of view (``align_corners=False``).
    """
    Qx, Qy = x.shape[-2], x.shape[-1]
    dt = x.dtype
    # c maps to the normalised origin; a pixel offset d is 2 d / Q there, in
    # (x, y) = (column, row) order
    swap = _SWAP.to(dtype=dt, device=x.device)
    scale = torch.tensor([[2.0 / Qy], [2.0 / Qx]], dtype=dt, device=x.device)
    xy = scale * (swap @ A.to(x.device, dt) @ offsets.to(x.device, dt))  # (B, 2, M)
    grid = xy.transpose(1, 2)[:, None]  # (B, 1, M, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :, 0]


def pixel_to_grid(p: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Pixel ``(row, col)`` coordinates (..., 2) -> ``grid_sample`` ``(x, y)``, [-1, 1]."""
    Qx, Qy = shape
    x = (2.0 * p[..., 1] + 1.0) / Qy - 1.0
    y = (2.0 * p[..., 0] + 1.0) / Qx - 1.0
    return torch.stack([x, y], -1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``x`` (B, C, H, W); ``sigma`` in pixels.

    Zero padding (outside the pattern is no signal); the kernel is truncated
    at 3 sigma and normalised. ``sigma <= 0`` returns ``x`` unchanged.
    """
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    kx = k.view(1, 1, -1, 1).expand(C, 1, -1, 1).contiguous()
    ky = k.view(1, 1, 1, -1).expand(C, 1, 1, -1).contiguous()
    x = F.conv2d(x, kx, padding=(r, 0), groups=C)
    return F.conv2d(x, ky, padding=(0, r), groups=C)
