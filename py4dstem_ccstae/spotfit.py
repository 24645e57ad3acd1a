"""Per-pattern refinement of the lattice transform, spot by spot (torch, batched).

The encoder gives every pattern a transform ``A`` (base -> input, see
:mod:`py4dstem_ccstae.model`) good to a fraction of a pixel. This module
refines it against the learned base with the *spot-shape restoration* of the
method: every spot of the base is moved **rigidly** to ``c + A p + t`` (its
shape is set by the probe, not by the lattice, so it is not stretched), and the
moved spots are compared with the input's own pixels around them. Here is the
solver (per-spot gains, normal equations, damped steps, convergence,
realignment); the spot patches it moves and compares are built by
:mod:`py4dstem_ccstae.spotpatch`, and the spots are found on the base, and
registered between bases, by :mod:`py4dstem_ccstae.spotfind` (the public
names of both are re-exported here).

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
inside a window of radius ``radius`` that moves with the spot (centred on its
current position, soft edge 1 px wide:
:meth:`~py4dstem_ccstae.spotpatch.BaseSpots.window`; per-spot gain and offset,
solved in closed form, absorb intensity differences between grains, e.g.
dynamical scattering). ``(A, t)`` (6 numbers per pattern) minimise the
windowed sum of squared residuals over all spots, by Gauss-Newton with a small
Levenberg damping; each iteration is one batched matrix product (the shifted
spots and their two Fourier-derivative gradients at the current position,
:data:`GRADIENTS`, as the inverse transform of their shifted spectra at the
compared pixels: :meth:`~py4dstem_ccstae.spotpatch.BaseSpots.compared_with_gradients`)
and one 6 x 6 solve per pattern, and a pattern leaves the
batch once its step moves no spot by more than ``tol`` (converged patterns
cost nothing more). Both the window and the Jacobian follow the spots: with a
spot template that is not exact (always, on real data), a window fixed around
the starting pixel, or a Jacobian kept from the start, moves the fixed point
of the iteration back towards the start (by 2-5 % of the way on synthetic
spots with a wrong profile, up to ~15 % on multislice patterns). A pattern
whose spots end more than :data:`RECENTRE_PX` from their patches' centre
pixels is refined again (it alone: a pattern's answer does not depend on its
batch) with its input patches re-centred (at most
:data:`RECENTRE_PASSES` times), so that every window lies whole inside its
patch.
At the end of training (:meth:`py4dstem_ccstae.CCSTAE.fit`) the base patches
are re-estimated once as the mean of the training patterns' spot patches
shifted back onto the base (rigid, Fourier; ``realign=True``), which removes
the blur left in the base by the encoder's bilinear whole-image warps; the
model keeps these patches and prediction streams batch by batch with them.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import SPOT_TEXTURES
from .spotfind import find_spots, near_rotation, register_spots, spot_centres
from .spotpatch import (
    BaseSpots,
    InputSpots,
    base_patches,
    base_spots,
    input_spots,
    patch_size,
    pattern_background,
    restored_patches,
    shifted_spots,
)

__all__ = [
    "find_spots",
    "spot_centres",
    "base_patches",
    "patch_size",
    "refine_spots",
    "pattern_background",
    "register_spots",
    "near_rotation",
    "SPOT_TEXTURES",
]


def _take(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``t`` itself when ``rows`` is None (every row), else ``t[rows]``."""
    return t if rows is None else t[rows]


def _spot_gains(
    base: BaseSpots,
    Sv: torch.Tensor,
    w: torch.Tensor,
    Ip: torch.Tensor,
    wsum: torch.Tensor,
    mean: torch.Tensor,
):
    """Each spot's gain and offset against the input, in closed form (weighted).

    ``Sv`` (B, n, m): the shifted base spots at the compared pixels; ``w``,
    ``Ip``, ``wsum``, ``mean``: the weights (each spot's moving window,
    zero for an invalid patch), the input's candidate pixels, the weights'
    sums and the weighted means of ``Ip``. Returns ``a`` (B, n) (gain at
    the patch centre, at least 0.05), ``b`` (B, n) offset, the gain field
    (``(B, n, 1)``, or ``(B, n, m)`` across the spot for ``texture="ramp"``)
    and, for ``"ramp"``, the least-squares design ``(Z, ZW, normal)`` that the
    normal equations project the motion against (None for ``"fixed"``).
    """
    if base.texture == "fixed":
        ms = (w * Sv).sum(-1) / wsum
        dS = Sv - ms[..., None]
        cov = (w * dS * (Ip - mean[..., None])).sum(-1)
        var = (w * dS * dS).sum(-1).clamp_min(1e-12)
        a = (cov / var).clamp_min(0.05)
        return a, mean - a * ms, a[..., None], None
    # gain (a, c, d: linear across the spot) and offset b per spot:
    # weighted least squares on the columns S, u S, v S, 1
    Z = torch.stack([Sv, base.ur * Sv, base.vr * Sv, torch.ones_like(Sv)], -1)
    ZW = Z * w[..., None]
    normal = ZW.transpose(-1, -2) @ Z  # (B, n, 4, 4)
    normal = normal + 1e-9 * torch.eye(4, dtype=Sv.dtype, device=Sv.device)
    rhs = (ZW * Ip[..., None]).sum(-2)[..., None]
    coef = torch.linalg.solve(normal, rhs)[..., 0]
    a = coef[..., 0].clamp_min(0.05)
    slope = coef[..., 1, None] * base.ur + coef[..., 2, None] * base.vr
    return a, coef[..., 3], a[..., None] + slope, (Z, ZW, normal)


def _normal_equations(
    base: BaseSpots,
    w: torch.Tensor,
    r: torch.Tensor,
    gain_field: torch.Tensor,
    a: torch.Tensor,
    gx: torch.Tensor,
    gy: torch.Tensor,
    design,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton normal matrix ``H`` (B, 6, 6) and gradient ``g`` (B, 6), float64.

    Of the weighted squared residuals ``r`` (B, n, m) in the six parameters
    ``(A, t)``: ``d r / d s_k = -gain * grad(S_k)`` (``gx``, ``gy``: the
    shifted spots' gradients at the compared pixels), chained through ``M``
    of :class:`BaseSpots`. ``design`` is the ramp's least-squares design
    from :func:`_spot_gains` (None for ``texture="fixed"``).
    """
    if base.texture == "fixed":
        wa2 = w * (a * a)[..., None]
        Gxx = (wa2 * gx * gx).sum(-1)
        Gxy = (wa2 * gx * gy).sum(-1)
        Gyy = (wa2 * gy * gy).sum(-1)
    else:
        # variable projection: the part of the spot's motion that the
        # gain ramp cannot mimic (the Jacobian columns projected
        # orthogonal to the linear columns, weighted); without it the
        # ramp's correlation with the motion slows Gauss-Newton down
        Z, ZW, normal = design
        Jm = torch.stack([gain_field * gx, gain_field * gy], -1)  # (B, n, m, 2)
        ZWJ = ZW.transpose(-1, -2) @ Jm  # (B, n, 4, 2)
        Jp = Jm - Z @ torch.linalg.solve(normal, ZWJ)
        Gp = (Jp * w[..., None]).transpose(-1, -2) @ Jp  # (B, n, 2, 2)
        Gxx, Gxy, Gyy = Gp[..., 0, 0], Gp[..., 0, 1], Gp[..., 1, 1]
    G2 = torch.stack([torch.stack([Gxx, Gxy], -1), torch.stack([Gxy, Gyy], -1)], -2).to(
        torch.float64
    )  # (B, n, 2, 2)
    war = w * r * (-gain_field)
    e = torch.stack([(war * gx).sum(-1), (war * gy).sum(-1)], -1).to(
        torch.float64
    )  # (B, n, 2)
    Mt = base.M.transpose(-1, -2)
    H = torch.einsum("nij,bnjk,nkl->bil", Mt, G2, base.M)
    g = torch.einsum("nij,bnj->bi", Mt, e)
    return H, g


def _damped_step(
    H: torch.Tensor, g: torch.Tensor, damping: float, reach: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-damped Gauss-Newton step (B, 6), capped at half a pixel of spot motion.

    ``damping`` is relative to the diagonal of ``H``. Returns the step (to
    subtract from the parameters) and the bound of how far it moves any spot,
    ``sum |dA| * reach + sum |dt|`` (B,) pixels.
    """
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    H = H + torch.diag_embed(damping * diag + 1e-12)
    step = torch.linalg.solve(H, g[..., None])[..., 0]
    move = step[:, :4].abs().sum(-1) * reach + step[:, 4:].abs().sum(-1)
    scale = (0.5 / move.clamp_min(1e-12)).clamp(max=1.0)
    return scale[:, None] * step, scale * move


def _refine_batch(
    base: BaseSpots,
    inp: InputSpots,
    theta: torch.Tensor,
    *,
    iterations: int,
    damping: float,
    tol: float,
    realign: bool,
) -> dict[str, torch.Tensor]:
    """Gauss-Newton on one batch; ``theta`` (B, 6) float64 is updated in place.

    A pattern leaves the batch once its step moves no spot by more than
    ``tol`` pixels (or after ``iterations``); the state of its last
    iteration is recorded then: ``error`` (B,) float64 mean squared
    residual, ``iterations`` (B,) long, ``gain`` (B, n) and, with
    ``realign``, ``shift`` (B, n, 2) and ``offset`` (B, n) of its spots.
    """
    nb, n = theta.shape[0], base.p.shape[0]
    dev, dt = theta.device, torch.float32
    last = {
        "error": torch.zeros(nb, dtype=torch.float64, device=dev),
        "iterations": torch.zeros(nb, dtype=torch.long, device=dev),
        "gain": torch.ones(nb, n, dtype=dt, device=dev),
        "shift": torch.zeros(nb, n, 2, dtype=dt, device=dev),
        "offset": torch.zeros(nb, n, dtype=dt, device=dev),
    }
    spectra = base.repeated(nb)
    act = torch.arange(nb, device=dev)  # patterns still iterating
    for it in range(iterations):
        rows = None if act.numel() == nb else act
        tha = _take(theta, rows)
        h, s, G = shifted_spots(base, tha, _take(inp.centres, rows), _take(spectra, rows))
        # the shifted spots and their gradients at the current position: a
        # Jacobian kept from the start would move the fixed point (residual
        # orthogonal to the start's gradients, not to the current ones),
        # pulling the fit back towards the start by a fraction of the way
        # whenever the template is not exact
        Sv, gxa, gya = base.compared_with_gradients(G, GRADIENTS)
        Ip = _take(inp.values, rows)
        w = _take(inp.weight, rows) * base.window(h)  # moves with each spot
        wsum = w.sum(-1).clamp_min(1e-6)
        mean = (w * Ip).sum(-1) / wsum
        a, b, gain_field, design = _spot_gains(base, Sv, w, Ip, wsum, mean)
        r = gain_field * Sv + b[..., None] - Ip
        H, g = _normal_equations(base, w, r, gain_field, a, gxa, gya, design)
        step, move = _damped_step(H, g, damping, base.reach)
        theta[act] = tha - step
        keep = move > tol
        if it == iterations - 1:
            keep[:] = False
        stop = ~keep
        done = act[stop]  # patterns that stop here: record their last state
        last["iterations"][done] = it + 1
        ws, rs = w[stop], r[stop]
        last["error"][done] = (
            (ws * rs * rs).sum((-1, -2)) / ws.sum((-1, -2)).clamp_min(1)
        ).to(torch.float64)
        last["gain"][done] = a[stop]
        if realign:
            last["shift"][done], last["offset"][done] = s[stop], b[stop]
        act = act[keep]
        if act.numel() == 0:
            break
    return last


#: How the refinement differentiates the shifted spots: ``"spectral"``
#: (Fourier derivatives, exact for band-limited patches) or ``"difference"``
#: (central differences; measured on both kinds of data in
#: ``benchmarks/multislice_reading.md``: better on the multislice
#: heterostructure and the flat scan under noise, worse on the thickness
#: wedge and the package's simulator, so not the default).
GRADIENTS = "spectral"

#: Extra rounds of the refinement with the input patches re-centred on the
#: spots' refined positions (:func:`refine_spots`).
RECENTRE_PASSES = 2
#: A pattern is refined again, its patches re-centred, when a valid spot ends
#: further than this from its patch's centre pixel (pixels; a start rounded
#: to the nearest pixel is at most 0.71 off, 0.5 along each axis). Below
#: :data:`~py4dstem_ccstae.spotpatch.WINDOW_SLACK`, so a spot's window is
#: whole inside its patch wherever the fit ends.
RECENTRE_PX = 0.75


def _recentred(base: BaseSpots, theta: torch.Tensor, inp: InputSpots) -> torch.Tensor:
    """(B,) bool: a valid spot under ``theta`` is over :data:`RECENTRE_PX` off centre."""
    A = theta[:, :4].reshape(-1, 2, 2)
    pos = base.p @ A.transpose(-1, -2) + theta[:, None, 4:] + base.c
    off = (pos - inp.centres).norm(dim=-1)
    return ((off > RECENTRE_PX) & inp.valid).any(-1)


def refine_spots(
    X: torch.Tensor,
    patches: torch.Tensor,
    A: torch.Tensor,
    spots: np.ndarray,
    radius: float,
    *,
    iterations: int = 6,
    batch_size: int = 512,
    damping: float = 1e-3,
    realign: bool = False,
    background: torch.Tensor | None = None,
    tol: float = 1e-4,
    texture: str = "fixed",
) -> dict[str, torch.Tensor]:
    """Refine base -> input transforms spot by spot (Gauss-Newton, module docs).

    Every pattern is compared with one base (a model with several bases
    refines each class on its own: :meth:`~py4dstem_ccstae.spotmodel.SpotModel.refine`).

    Parameters
    ----------
    X : Tensor (N, S, S)
        Model inputs.
    patches : Tensor (1, n, P, P)
        Spot patches of the base (:func:`base_patches` of one base, or the
        ``patches`` returned by an earlier call with ``realign=True``),
        centred on the pixel nearest each spot.
    A : Tensor (N, 2, 2)
        Starting transforms (base -> input, pixel frame).
    spots : ndarray (n, 2)
        Sub-pixel spot offsets from the centre in the base (pixels;
        :func:`~py4dstem_ccstae.spotfind.spot_centres`).
    radius : float
        Radius (pixels) of the compared disk around each spot; > 0.
    iterations : int
        Maximum Gauss-Newton iterations per pattern.
    batch_size : int
        Patterns per batch.
    damping : float
        Levenberg damping, relative to the diagonal of the normal matrix.
    realign : bool
        Also return ``patches``: the mean over the patterns of their spot
        patches shifted back onto the base (gain and offset removed), i.e.
        sharper base patches free of the encoder's whole-image warps.
    background : Tensor (S, S), optional
        Static background of the inputs (:func:`pattern_background`),
        subtracted from every input patch where it was taken, so that only
        what moves with the spots is compared. ``patches`` must then be
        background-free: patches of the base minus the same background, or
        those returned by ``realign=True`` in a call with this background.
    tol : float
        Convergence tolerance (pixels): a pattern stops iterating once a step
        moves none of its spots by more than ``tol`` (bound: ``sum |dA| *
        max |p| + sum |dt|``); ``0`` runs every pattern for ``iterations``.
        A step of 1e-4 px changes strain by at most ``1e-4 / max |p|`` (a
        few 1e-6 at 64x64).
    texture : {"fixed", "ramp"}
        ``"fixed"``: each input spot is ``a_k * shift(B_k) + b_k`` (one gain
        and offset per spot). ``"ramp"``: the gain varies linearly across the
        spot, ``(a_k + c_k u' + d_k v') * shift(B_k) + b_k`` (``(u', v')`` =
        pixels from the patch centre / radius; four numbers per spot, solved
        in closed form, the motion's Jacobian projected orthogonal to them;
        ``B_k`` less the median of its patch border, so that a ramp does not
        tilt the level around the disk), which absorbs a texture inside the disk that
        brightens one side (a thickness change in a dynamical pattern) at the
        price of some of the information the disk interior carries about its
        position (``docs/configuration.md#spot_texture``).

    Returns
    -------
    dict
        ``A`` (N, 2, 2) float64 refined transforms, ``t`` (N, 2)
        translations (pixels), ``error`` (N,) mean squared residual over the
        compared pixels (scaled-intensity units), ``iterations`` (N,) int
        Gauss-Newton iterations each pattern ran, ``gain`` (N, n) float32:
        each spot's fitted gain (intensity relative to the base's spot, at
        least 0.05) at the last iteration (about 1 where the pattern shows
        the base's lattice, near 0.05 where it shows none: vacuum, a blank
        pattern); with ``realign``, ``patches`` (1, n, P, P).
    """
    if texture not in SPOT_TEXTURES:
        raise ValueError(f"texture must be 'fixed' or 'ramp', got {texture!r}")
    dev = patches.device
    dt = torch.float32
    N, S, _ = X.shape
    base = base_spots(patches, spots, radius, S, texture)
    n = base.p.shape[0]
    theta = torch.cat(
        [A.to(torch.float64).reshape(N, 4), torch.zeros(N, 2, dtype=torch.float64)], -1
    ).to(dev)
    error = torch.zeros(N, dtype=torch.float64)
    n_iter = torch.zeros(N, dtype=torch.long)
    gain = torch.ones(N, n, dtype=dt)
    acc = torch.zeros_like(base.patches)
    cnt = torch.zeros(1, n, 1, 1, dtype=dt, device=dev)
    for s0 in range(0, N, batch_size):
        sl = slice(s0, s0 + batch_size)
        th = theta[sl].clone()
        xb = X[sl].to(dev, dt)
        its = torch.zeros(th.shape[0], dtype=torch.long, device=dev)
        inp = input_spots(xb, th, base, background)
        last = _refine_batch(
            base, inp, th, iterations=iterations, damping=damping, tol=tol, realign=realign
        )
        its += last["iterations"]
        for _ in range(RECENTRE_PASSES):
            # again, only the patterns with a spot that ended far from its
            # patch's centre pixel, their input patches re-centred, so that
            # its moving window stays whole inside the patch's candidate
            # pixels (a pattern's answer does not depend on its batch)
            redo = torch.nonzero(_recentred(base, th, inp))[:, 0]
            if redo.numel() == 0:
                break
            th_r = th[redo].clone()
            inp_r = input_spots(xb[redo], th_r, base, background)
            last_r = _refine_batch(
                base,
                inp_r,
                th_r,
                iterations=iterations,
                damping=damping,
                tol=tol,
                realign=realign,
            )
            th[redo] = th_r
            its[redo] += last_r["iterations"]
            for key, value in last_r.items():
                if key != "iterations":
                    last[key][redo] = value
            for field in ("centres", "patches", "valid", "values", "weight"):
                getattr(inp, field)[redo] = getattr(inp_r, field)
        theta[sl] = th
        error[sl] = last["error"].cpu()
        n_iter[sl] = its.cpu()
        gain[sl] = last["gain"].cpu()
        if realign:
            # the mean over the batch's valid patches, summed as a product
            # with one weight column (pattern -> the base)
            rows = torch.ones(len(th), 1, dtype=dt, device=dev)
            vb = inp.valid.to(dt)[..., None, None]
            restored = restored_patches(
                base, inp, last["shift"], last["offset"], last["gain"]
            )
            acc += torch.einsum("bk,bnpq->knpq", rows, vb * restored)
            cnt += torch.einsum("bk,bnpq->knpq", rows, vb)
    out = {
        "A": theta[:, :4].reshape(N, 2, 2).cpu(),
        "t": theta[:, 4:].cpu(),
        "error": error,
        "iterations": n_iter,
        "gain": gain,
    }
    if realign:
        out["patches"] = torch.where(cnt > 0, acc / cnt.clamp_min(1), base.patches)
    return out
