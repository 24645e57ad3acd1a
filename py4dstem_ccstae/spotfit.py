"""Per-pattern refinement of the lattice transform, spot by spot (torch, batched).

The encoder gives every pattern a transform ``A`` (base -> input, see
:mod:`py4dstem_ccstae.model`) good to a fraction of a pixel. This module
refines it against the learned base with the *spot-shape restoration* of the
method: every spot of the base is moved **rigidly** to ``c + A p + t`` (its
shape is set by the probe, not by the lattice, so it is not stretched), and the
moved spots are compared with the input's own pixels around them.

Coordinates
-----------
Pixel ``(row, col)`` = ``(qx, qy)`` of the ``S x S`` model patterns, pixel
``k`` centred at coordinate ``k``; ``c = (S - 1) / 2`` is ``q = 0``. A base
spot centred at ``c + p`` (``p``: sub-pixel offset, ``(n, 2)``) is expected
in the input at ``c + A @ p + t``; ``t`` (pixels) absorbs a residual origin
error and does not enter the strain.

Model and solver
----------------
For spot ``k`` a ``P x P`` patch ``B_k`` of the base (centred on the pixel
nearest the spot, background-subtracted and tapered to zero at its border) is
shifted by a sub-pixel vector ``s_k`` with the Fourier shift theorem, which is
exact for band-limited patches: no interpolation kernel, so no pull towards
integer positions ("pixel locking", which biased a bilinear-warp refinement
by 1-6e-4 in strain). The input patch ``I_k`` (centred on the pixel nearest
the encoder's prediction) is modelled as ``a_k * shift(B_k, s_k) + b_k``
inside a disk of radius ``radius`` (per-spot gain and offset, solved in closed
form, absorb intensity differences between grains, e.g. dynamical
scattering). ``(A, t)`` (6 numbers per pattern) minimise the sum of squared
residuals over all spots, by Gauss-Newton with a small Levenberg damping;
each iteration is a handful of batched FFTs and one 6 x 6 solve per pattern.
After the first solve the base patches are re-estimated as the mean of the
input patches shifted back onto the base (rigid, Fourier), which removes the
blur left in the base by the encoder's bilinear whole-image warps, and the
solve is repeated.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["spot_centres", "refine_spots"]


def spot_centres(
    base: np.ndarray, spots: np.ndarray, radius: float, iterations: int = 5
) -> np.ndarray:
    """Sub-pixel centres of the spots of a base (centre of mass, re-centred).

    Parameters
    ----------
    base : ndarray (S, S)
        Base pattern (model pixels).
    spots : ndarray (n, 2)
        Approximate spot offsets from the centre ``c = (S - 1) / 2`` (pixels).
    radius : float
        Window radius (pixels) of the centre of mass.
    iterations : int
        Re-centring iterations.

    Returns
    -------
    ndarray (n, 2)
        Spot offsets from ``c`` (pixels, row/column = qx/qy).
    """
    S = base.shape[0]
    c = (S - 1) / 2.0
    rr, cc = np.mgrid[:S, :S].astype(float)
    out = np.asarray(spots, float).copy()
    for k in range(len(out)):
        p = out[k] + c
        for _ in range(iterations):
            d2 = (rr - p[0]) ** 2 + (cc - p[1]) ** 2
            win = d2 <= radius**2
            ring = (d2 > radius**2) & (d2 <= (radius + 2) ** 2)
            if not win.any() or not ring.any():
                break
            w = np.clip(base[win] - np.median(base[ring]), 0, None)
            if w.sum() <= 0:
                break
            p = np.array([(w * rr[win]).sum(), (w * cc[win]).sum()]) / w.sum()
        out[k] = p - c
    return out


def _freqs(P: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.fft.fftfreq(P, dtype=dtype, device=device)
    return f[:, None].expand(P, P), f[None, :].expand(P, P)


def _taper(P: int, inner: float, dtype, device) -> torch.Tensor:
    """1 inside ``inner`` (pixels from the patch centre), cosine roll-off to 0 at P/2."""
    u = torch.arange(P, dtype=dtype, device=device) - P // 2
    r = torch.sqrt(u[:, None] ** 2 + u[None, :] ** 2)
    outer = P / 2.0 - 0.5
    x = ((r - inner) / max(outer - inner, 1e-6)).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * x))


def _gather_patches(
    x: torch.Tensor, centres: torch.Tensor, P: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches ``(B, n, P, P)`` of ``x`` (B, S, S) centred on integer ``centres`` (B, n, 2).

    Patch pixel ``(P // 2, P // 2)`` is the centre. Returns the patches (zero
    outside the image) and a (B, n) bool "fully inside" flag.
    """
    B, S, _ = x.shape
    u = torch.arange(P, device=x.device) - P // 2
    rows = centres[..., 0, None, None] + u[:, None]  # (B, n, P, 1)
    cols = centres[..., 1, None, None] + u[None, :]  # (B, n, 1, P)
    rows, cols = torch.broadcast_tensors(rows, cols)
    inside = (rows >= 0) & (rows < S) & (cols >= 0) & (cols < S)
    flat = rows.clamp(0, S - 1) * S + cols.clamp(0, S - 1)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    vals = x.reshape(B, S * S)[b, flat] * inside
    return vals, inside.flatten(-2).all(-1)


def _shift(F: torch.Tensor, s: torch.Tensor, fx, fy) -> tuple[torch.Tensor, ...]:
    """Shift patches (Fourier transforms ``F`` (..., P, P)) by ``s`` (..., 2) pixels.

    Returns the shifted patches and their derivatives along rows and columns.
    """
    phase = torch.exp(
        -2j * math.pi * (fx * s[..., 0, None, None] + fy * s[..., 1, None, None])
    )
    G = F * phase
    val = torch.fft.ifft2(G).real
    gx = torch.fft.ifft2(G * (2j * math.pi * fx)).real
    gy = torch.fft.ifft2(G * (2j * math.pi * fy)).real
    return val, gx, gy


def refine_spots(
    X: torch.Tensor,
    bases: torch.Tensor,
    cls: torch.Tensor,
    A: torch.Tensor,
    spots: np.ndarray,
    radius: float,
    *,
    iterations: int = 6,
    rounds: int = 2,
    batch_size: int = 512,
    damping: float = 1e-3,
) -> dict[str, torch.Tensor]:
    """Refine base -> input transforms spot by spot (Gauss-Newton, module docs).

    Parameters
    ----------
    X : Tensor (N, S, S)
        Model inputs.
    bases : Tensor (K, 1, S, S)
        Learned bases.
    cls : Tensor (N,) long
        Base of every pattern.
    A : Tensor (N, 2, 2)
        Starting transforms (base -> input, pixel frame).
    spots : ndarray (n, 2)
        Sub-pixel spot offsets from the centre in the base (pixels;
        :func:`spot_centres`), shared by all bases.
    radius : float
        Radius (pixels) of the compared disk around each spot; > 0.
    iterations : int
        Gauss-Newton iterations per round.
    rounds : int
        Solve rounds; between rounds the base patches are re-estimated from
        the aligned inputs.
    batch_size : int
        Patterns per batch.
    damping : float
        Levenberg damping, relative to the diagonal of the normal matrix.

    Returns
    -------
    dict
        ``A`` (N, 2, 2) refined transforms, ``t`` (N, 2) translations (pixels),
        ``error`` (N,) mean squared residual over the compared pixels.
    """
    dev = bases.device
    dt = torch.float64
    N, S, _ = X.shape
    c = (S - 1) / 2.0
    p = torch.as_tensor(np.asarray(spots), dtype=dt, device=dev)  # (n, 2)
    n = p.shape[0]
    reach = float(p.norm(dim=-1).max()) if n else 0.0
    P = 2 * int(math.ceil(radius + 4)) + 2  # even; margin for the taper and shifts
    fx, fy = _freqs(P, dt, dev)
    taper = _taper(P, radius + 1.5, dt, dev)
    u = torch.arange(P, dtype=dt, device=dev) - P // 2
    disk = ((u[:, None] ** 2 + u[None, :] ** 2) <= radius**2).to(dt)  # (P, P)
    # base patches around the pixel nearest each spot
    b_int = torch.round(p + c).long()  # (n, 2)
    f_base = p + c - b_int  # spot centre within its patch, from the patch centre
    K = bases.shape[0]
    Bp, _ = _gather_patches(
        bases[:, 0].to(dt), b_int[None].expand(K, n, 2).contiguous(), P
    )  # (K, n, P, P)
    # M_k (2 x 6): d s_k / d (A11, A12, A21, A22, t1, t2)
    M = torch.zeros(n, 2, 6, dtype=dt, device=dev)
    M[:, 0, 0], M[:, 0, 1], M[:, 1, 2], M[:, 1, 3] = p[:, 0], p[:, 1], p[:, 0], p[:, 1]
    M[:, 0, 4] = M[:, 1, 5] = 1.0
    A = A.to(dt)
    theta = torch.cat([A.reshape(N, 4), torch.zeros(N, 2, dtype=dt)], -1).to(dev)
    error = torch.zeros(N, dtype=dt)
    for rnd in range(rounds):
        # background: the mean over the patch border, removed before tapering
        edge = (taper < 0.05).to(dt)
        bg = (Bp * edge).sum((-1, -2), keepdim=True) / edge.sum()
        FB = torch.fft.fft2((Bp - bg) * taper)  # (K, n, P, P)
        acc = torch.zeros_like(Bp)
        cnt = torch.zeros(K, n, 1, 1, dtype=dt, device=dev)
        for s0 in range(0, N, batch_size):
            sl = slice(s0, s0 + batch_size)
            xb = X[sl].to(dev, dt)
            th = theta[sl].clone()
            cb = cls[sl].to(dev)
            Ab = th[:, :4].reshape(-1, 2, 2)
            pos0 = p @ Ab.transpose(-1, -2) + th[:, None, 4:] + c  # (B, n, 2)
            i_int = torch.round(pos0).long()
            Ip, inside = _gather_patches(xb, i_int, P)
            valid = inside
            wv = valid.to(dt)[..., None, None] * disk  # (B, n, P, P)
            F = FB[cb]  # (B, n, P, P)
            for _ in range(iterations):
                Ab = th[:, :4].reshape(-1, 2, 2)
                h = p @ Ab.transpose(-1, -2) + th[:, None, 4:] + c - i_int  # (B, n, 2)
                s = h - f_base
                Sv, gx, gy = _shift(F, s, fx, fy)
                # per-spot gain and offset (closed form, weighted)
                wsum = wv.sum((-1, -2)).clamp_min(1.0)
                ms = (wv * Sv).sum((-1, -2)) / wsum
                mi = (wv * Ip).sum((-1, -2)) / wsum
                cov = (wv * (Sv - ms[..., None, None]) * (Ip - mi[..., None, None])).sum(
                    (-1, -2)
                )
                var = (wv * (Sv - ms[..., None, None]) ** 2).sum((-1, -2)).clamp_min(1e-12)
                a = (cov / var).clamp_min(0.05)
                b = mi - a * ms
                r = a[..., None, None] * Sv + b[..., None, None] - Ip
                # d r / d s = -a * grad(S)
                jx = -a[..., None, None] * gx
                jy = -a[..., None, None] * gy
                G = torch.stack(
                    [
                        (wv * jx * jx).sum((-1, -2)),
                        (wv * jx * jy).sum((-1, -2)),
                        (wv * jy * jy).sum((-1, -2)),
                    ],
                    -1,
                )  # (B, n, 3)
                G2 = torch.stack(
                    [
                        torch.stack([G[..., 0], G[..., 1]], -1),
                        torch.stack([G[..., 1], G[..., 2]], -1),
                    ],
                    -2,
                )  # (B, n, 2, 2)
                e = torch.stack(
                    [(wv * jx * r).sum((-1, -2)), (wv * jy * r).sum((-1, -2))], -1
                )  # (B, n, 2)
                H = torch.einsum("nij,bnjk,nkl->bil", M.transpose(-1, -2), G2, M)
                g = torch.einsum("nij,bnj->bi", M.transpose(-1, -2), e)
                diag = torch.diagonal(H, dim1=-2, dim2=-1)
                H = H + torch.diag_embed(damping * diag + 1e-12)
                step = torch.linalg.solve(H, g[..., None])[..., 0]
                # cap a step at half a pixel of spot motion
                move = step[:, :4].abs().sum(-1) * reach + step[:, 4:].abs().sum(-1)
                scale = (0.5 / move.clamp_min(1e-12)).clamp(max=1.0)
                th = th - scale[:, None] * step
            theta[sl] = th
            error[sl] = (wv * r * r).sum((-1, -2, -3)) / wv.sum((-1, -2, -3)).clamp_min(1)
            if rnd + 1 < rounds:
                # base patches from the inputs shifted back onto the base
                back = torch.fft.ifft2(
                    torch.fft.fft2(Ip)
                    * torch.exp(
                        2j
                        * math.pi
                        * (fx * s[..., 0, None, None] + fy * s[..., 1, None, None])
                    )
                ).real
                onehot = torch.nn.functional.one_hot(cb, K).to(dt)
                vb = valid.to(dt)[..., None, None]
                restored = (back - b[..., None, None]) / a[..., None, None]
                acc += torch.einsum("bk,bnpq->knpq", onehot, vb * restored)
                cnt += torch.einsum("bk,bnpq->knpq", onehot, vb)
        if rnd + 1 < rounds:
            Bp = torch.where(cnt > 0, acc / cnt.clamp_min(1), Bp)
    A_out = theta[:, :4].reshape(N, 2, 2).to(torch.float64).cpu()
    return {"A": A_out, "t": theta[:, 4:].cpu(), "error": error.cpu()}
