"""Exhaustive in-plane rotation search of each pattern against its base (torch).

The encoder's transform ``A`` (base -> input) is learned by gradient descent
on the reconstruction loss, whose basin in rotation is about one spot radius
wide at the outer spots. Where the encoder has not locked on (its output the
scan's mean transform) or a grain is rotated by more than that basin (grains
at every orientation), ``A`` starts the spot-wise refinement and the aligned
means of the bases outside the basin: the bases blur into arcs and the
refinement converges to a wrong lattice. This module measures, for every
pattern, the residual rotation ``delta`` that best maps its base onto it on
top of ``A``, by a circular cross-correlation of polar profiles (the search
used for in-plane orientation in class averaging), and returns
``A @ R(delta)``.

Conventions
-----------
Pixel ``(row, col)`` = ``(qx, qy)``, pattern centre ``c = (S - 1) / 2`` at
``q = 0`` (as :mod:`py4dstem_ccstae.warp`). ``A`` maps a base feature at
``c + g`` to the input at ``c + A g``. The polar profile of a pattern ``x``
under ``A`` is ``J(r, phi) = x(c + A (r cos phi, r sin phi))`` (``phi`` from
the ``qx`` axis towards ``qy``); the base's is ``B(r, phi)`` with ``A = 1``.
If the input is the base under ``A R(delta)`` then ``J(r, phi) = B(r, phi -
delta)``, with ``R(delta) = [[cos, -sin], [sin, cos]]`` in ``(qx, qy)``.

Method (fixed once, not tuned on any data set)
----------------------------------------------
The base is smoothed by a Gaussian of :data:`SMOOTH_SIGMA` px (the
inputs are not: the correlation of a smoothed base with a raw input is that
of both smoothed by ``SMOOTH_SIGMA / sqrt(2)``, which widens the peak beyond
the angular step and averages the noise at the cost of one blur per base),
both are sampled bilinearly on radii 1 px apart across the ring mask and
:data:`N_ANGLES` angles, each radius less its mean over the angles (which removes every
radially symmetric part: the direct beam's halo, the diffuse background),
weighted by the radius (the area element), and correlated over the angle
with FFTs. The peak is searched within ``|delta| <= pi / symmetry`` (the
lattice's half period: a larger rotation is an equivalent one) and located
to a fraction of a step by a parabola through its three samples.
"""

from __future__ import annotations

import math

import torch

from .warp import gaussian_blur, sample_offsets

__all__ = [
    "N_ANGLES",
    "SMOOTH_SIGMA",
    "polar_profiles",
    "ring_radii",
    "rotation_matrix",
    "rotation_search",
]

#: Angular samples of the polar profiles over 2 pi (2 deg steps: 1 px of
#: arc at a radius of 29 px, finer than the base's smoothing; the peak is
#: located to a fraction of a step). 1 deg steps cost 2.5x more and gave the
#: same maps (multislice full-rotation and flat Si [001] scans, scratch).
N_ANGLES = 180
#: Gaussian smoothing of the bases (px, model pixels) before the polar
#: sampling; the inputs are sampled as they are.
SMOOTH_SIGMA = 1.5


def rotation_matrix(delta: torch.Tensor) -> torch.Tensor:
    """``R(delta)`` (..., 2, 2) float64 in pixel ``(qx, qy)``: ``[[c, -s], [s, c]]``."""
    delta = delta.to(torch.float64)
    c, s = torch.cos(delta), torch.sin(delta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def ring_radii(ring: torch.Tensor) -> torch.Tensor:
    """Radii (px, float64), 1 px apart, from the inner to the outer edge of ``ring``."""
    S = ring.shape[-1]
    c = (S - 1) / 2.0
    ax = torch.arange(S, dtype=torch.float64) - c
    r = torch.hypot(ax[:, None], ax[None, :])[ring.cpu() > 0]
    if not r.numel():
        raise ValueError("ring must hold at least one pixel")
    lo, hi = math.ceil(float(r.min())), math.floor(float(r.max()))
    return torch.arange(lo, max(hi, lo) + 1, dtype=torch.float64)


def polar_profiles(
    X: torch.Tensor,
    A: torch.Tensor,
    radii: torch.Tensor,
    n_angles: int = N_ANGLES,
    sigma: float = 0.0,
) -> torch.Tensor:
    """Mean-free polar profiles ``J(r, phi)`` (N, R, n_angles) float32 (module docs).

    ``X`` (N, S, S) patterns, ``A`` (N, 2, 2) transforms (base -> input),
    ``radii`` (R,) px; ``sigma`` (px) a Gaussian smoothing first (0: none).
    Every radius less its mean over the angles and weighted by the radius.
    """
    N = X.shape[0]
    dev = X.device
    phi = torch.arange(n_angles, dtype=torch.float64) * (2 * math.pi / n_angles)
    y = torch.stack([radii[:, None] * torch.cos(phi), radii[:, None] * torch.sin(phi)])
    xs = X[:, None].to(torch.float32)
    if sigma > 0:
        xs = gaussian_blur(xs, sigma)
    J = sample_offsets(xs, A, y.reshape(2, -1)).reshape(N, len(radii), n_angles)
    J = J - J.mean(-1, keepdim=True)
    return J * radii.to(dev, torch.float32)[None, :, None]


@torch.no_grad()
def rotation_search(
    X: torch.Tensor,
    A: torch.Tensor,
    bases: torch.Tensor,
    cls: torch.Tensor,
    ring: torch.Tensor,
    symmetry: int,
) -> torch.Tensor:
    """Encoder transforms corrected by the best in-plane rotation: ``A @ R(delta)``.

    Parameters
    ----------
    X : Tensor (N, S, S)
        Model inputs.
    A : Tensor (N, 2, 2)
        Their transforms (base -> input, pixel ``(qx, qy)``), e.g. the
        encoder's.
    bases : Tensor (K, 1, S, S)
        The bases.
    cls : Tensor (N,) long
        The base of every pattern.
    ring : Tensor (S, S)
        The ring mask (nonzero inside); the profiles span its radii.
    symmetry : int
        The lattice's in-plane order n; ``delta`` is searched within
        ``|delta| <= pi / n``.

    Returns
    -------
    Tensor (N, 2, 2)
        ``A @ R(delta)``, in ``A``'s dtype, on the CPU.
    """
    if X.shape[0] == 0:
        return A.clone()
    n = N_ANGLES
    radii = ring_radii(ring)
    J = polar_profiles(X, A, radii, n)
    eye = torch.eye(2, dtype=torch.float64).expand(bases.shape[0], 2, 2)
    B = polar_profiles(bases[:, 0].detach().to(X.device), eye, radii, n, SMOOTH_SIGMA)
    spec = torch.fft.rfft(J, dim=-1) * torch.fft.rfft(B, dim=-1).conj()[cls.to(X.device)]
    C = torch.fft.irfft(spec.sum(1), n=n, dim=-1).cpu().to(torch.float64)
    half = n // (2 * max(int(symmetry), 1))
    lags = torch.cat([torch.arange(0, half + 1), torch.arange(n - half, n)]).unique()
    k = lags[C[:, lags].argmax(-1)]
    c0 = C.gather(1, k[:, None])[:, 0]
    cm = C.gather(1, ((k - 1) % n)[:, None])[:, 0]
    cp = C.gather(1, ((k + 1) % n)[:, None])[:, 0]
    den = cm - 2 * c0 + cp
    # parabola through the peak and its neighbours (a maximum: den < 0)
    vertex = 0.5 * (cm - cp) / den.clamp(max=-1e-30)
    frac = torch.where(den < 0, vertex, torch.zeros_like(den))
    lag = k.to(torch.float64) + frac.clamp(-0.5, 0.5)
    lag = torch.where(lag > n / 2, lag - n, lag)
    delta = lag * (2 * math.pi / n)
    return (A.to(torch.float64).cpu() @ rotation_matrix(delta)).to(A.dtype)
