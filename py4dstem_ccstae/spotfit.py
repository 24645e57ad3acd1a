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
each iteration is one batched inverse FFT and one 6 x 6 solve per pattern,
and a pattern leaves the batch once its step moves no spot by more than
``tol`` (converged patterns cost nothing more).
At the end of training (:meth:`py4dstem_ccstae.CCSTAE.fit`) the base patches
are re-estimated once as the mean of the training patterns' spot patches
shifted back onto the base (rigid, Fourier; ``realign=True``), which removes
the blur left in the base by the encoder's bilinear whole-image warps; the
model keeps these patches and prediction streams batch by batch with them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .affine import _rotation
from .config import SPOT_TEXTURES, Options

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


def spot_centres(
    base: np.ndarray, spots: np.ndarray, radius: float, iterations: int = 5
) -> np.ndarray:
    """Sub-pixel centres of the spots of a base (centre of mass, re-centred).

    Each centre is the centre of mass, within ``radius``, of the base minus a
    plane fitted to the annulus ``radius < d <= radius + 2`` around the spot,
    re-centred ``iterations`` times.

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
            # local background: a plane fitted to the surrounding annulus
            # (a halo's gradient would pull a plain centre of mass inwards)
            design = np.stack([np.ones(ring.sum()), rr[ring] - p[0], cc[ring] - p[1]], 1)
            coef = np.linalg.lstsq(design, base[ring], rcond=None)[0]
            plane = coef[0] + coef[1] * (rr[win] - p[0]) + coef[2] * (cc[win] - p[1])
            w = np.clip(base[win] - plane, 0, None)
            if w.sum() <= 0:
                break
            p = np.array([(w * rr[win]).sum(), (w * cc[win]).sum()]) / w.sum()
        out[k] = p - c
    return out


def find_spots(
    base: np.ndarray, ring_mask: np.ndarray, rel_threshold: float = Options.spot_threshold
):
    """Spots of a learned base: sub-pixel offsets and the compared radius.

    Peaks of the smoothed, background-subtracted base inside the ring mask
    (at least 2 pixels from its border) above ``rel_threshold`` of the
    brightest are the spots; their centres are refined to sub-pixel accuracy
    (:func:`~py4dstem_ccstae.spotfit.spot_centres`).

    The threshold is low on purpose: the outer spots are the faint ones, and
    they carry the most strain information (a strain moves a spot in
    proportion to its distance from the centre). Under heavy background the
    square-root scaling lowers their contrast further (``sqrt(s + h) -
    sqrt(h)`` shrinks with the background ``h``): on the benchmark's
    polycrystal at 70 % noise the 12 outer spots peak at 0.09-0.15 of
    the brightest, and a threshold of 0.15 kept 8 of 20 spots: the strain MAE
    was 1.33-1.40x the per-pattern Cramer-Rao bound, and is 1.05-1.10x with
    all 20 (``docs/benchmarks.md``).
    The compared radius is where the mean spot profile falls below 5 % of its
    peak, plus one pixel, at most 0.45 x the nearest-spot spacing.

    Returns
    -------
    spots : ndarray (n, 2) or None
        Offsets from the centre ``(S - 1) / 2`` (model pixels); None when
        fewer than two spots are found.
    radius : float or None
        Compared radius (model pixels).
    cell : float or None
        0.45 x the median nearest-spot spacing (model pixels).
    """
    from scipy import ndimage

    S = base.shape[0]
    b = np.where(ring_mask, base, 0.0)
    b = b - np.median(b[ring_mask])
    smooth = ndimage.gaussian_filter(b, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=5)) & (
        smooth > rel_threshold * smooth.max()
    )
    # peaks on the mask's border are the edge of whatever the mask cuts (the
    # direct beam's tail, a background halo), not spots
    interior = ndimage.binary_erosion(ring_mask, iterations=2)
    idx = np.argwhere(peaks & interior)
    # a spot centred half-way between pixels gives two equal maxima: keep
    # the brightest of every group closer than the maximum filter's reach
    idx = idx[np.argsort(-smooth[tuple(idx.T)], kind="stable")]
    kept: list[np.ndarray] = []
    for p in idx:
        if all(np.abs(p - q).max() > 2 for q in kept):
            kept.append(p)
    idx = np.array(kept, dtype=int).reshape(-1, 2)
    if len(idx) < 2:
        return None, None, None
    c = (S - 1) / 2.0
    spots = idx.astype(float) - c
    d = np.hypot(*(spots[:, None] - spots[None]).transpose(2, 0, 1))
    d[d == 0] = np.inf
    cell = 0.45 * float(np.median(d.min(1)))
    spots = spot_centres(b, spots, cell)
    # mean radial profile of the spots (background-subtracted base)
    yy, xx = np.mgrid[:S, :S] - c
    dist = np.hypot(yy[..., None] - spots[:, 0], xx[..., None] - spots[:, 1])
    near = dist.min(-1)
    edges = np.arange(0.0, cell + 1.0, 1.0)
    prof = np.array(
        [
            b[(near >= lo) & (near < lo + 1.0)].mean()
            for lo in edges
            if ((near >= lo) & (near < lo + 1.0)).any()
        ]
    )
    below = np.nonzero(prof < 0.05 * prof[0])[0] if prof[0] > 0 else np.array([])
    extent = float(below[0]) if below.size else cell
    return spots, min(extent + 1.0, cell), cell


def register_spots(
    anchor: np.ndarray,
    spots: np.ndarray,
    symmetry: int,
    max_strain: float = 0.1,
    tol: float = 1.0,
    min_matched: float = 0.6,
) -> np.ndarray | None:
    """Lattice matrix ``M`` that maps the spots of one base onto another's.

    ``spots[j] ~ M @ anchor[i]`` for matched pairs ``(i, j)`` (offsets from
    the pattern centre, model pixels, rows ``(qx, qy)``): ``M`` is the
    lattice of ``spots`` relative to the lattice of ``anchor``, in the frame
    of :class:`~py4dstem_ccstae.affine.LatticeTransform` (``g = M g_anchor``).

    Search: every rotation in ``[-180 / symmetry, 180 / symmetry)`` degrees
    (steps of 0.25 deg; the smallest rotation that the lattice symmetry
    allows) and isotropic scale in ``[1 / (1 + max_strain), 1 + max_strain]``
    (steps of 0.5 %) is scored by the number of spots it brings within
    ``tol`` pixels of a spot of the other base; the best is refined by least
    squares on the mutually nearest pairs (twice, the second time within
    ``tol / 2``).

    Returns
    -------
    ndarray (2, 2) or None
        ``M``; None when fewer than ``min_matched`` of the spots of the base
        with fewer spots (and fewer than 3) are matched, the pairs do not span
        two directions, or the fitted ``M`` is further than ``max_strain``
        from a rotation: then the two bases show different lattices (another
        phase), not one lattice strained or rotated.
    """
    a = np.asarray(anchor, float).reshape(-1, 2)
    b = np.asarray(spots, float).reshape(-1, 2)
    if len(a) < 3 or len(b) < 3:
        return None
    half = np.pi / max(int(symmetry), 1)
    phis = np.arange(-half, half, np.deg2rad(0.25))
    lo, hi = 1.0 / (1.0 + max_strain), 1.0 + max_strain
    scales = np.exp(np.arange(np.log(lo), np.log(hi) + 1e-12, np.log(1.005)))
    best, best_score = None, -1.0
    rotations = _rotation(phis)  # (m, 2, 2)
    for s in scales:
        R = s * rotations
        moved = np.einsum("mij,nj->mni", R, a)  # (m, n_a, 2)
        d = np.linalg.norm(moved[:, :, None] - b[None, None], axis=-1).min(-1)
        score = np.clip(1.0 - d / tol, 0.0, None).sum(-1)
        k = int(np.argmax(score))
        if score[k] > best_score:
            best, best_score = R[k], float(score[k])
    M = best
    pairs = np.zeros((0, 2), int)
    for t in (tol, tol / 2):
        moved = a @ M.T
        d = np.linalg.norm(moved[:, None] - b[None], axis=-1)
        ij = np.argmin(d, 1)
        ji = np.argmin(d, 0)
        keep = (ji[ij] == np.arange(len(a))) & (d[np.arange(len(a)), ij] <= t)
        pairs = np.stack([np.nonzero(keep)[0], ij[keep]], -1)
        if len(pairs) < 3 or np.linalg.matrix_rank(a[pairs[:, 0]], tol=1e-6) < 2:
            return None
        # b = a M^T in rows: least squares for M^T
        M = np.linalg.lstsq(a[pairs[:, 0]], b[pairs[:, 1]], rcond=None)[0].T
    if len(pairs) < max(3, min_matched * min(len(a), len(b))):
        return None
    # further than max_strain from a rotation: another lattice
    return M if near_rotation(M, max_strain) else None


def near_rotation(M: np.ndarray, max_strain: float) -> bool:
    """True when the 2 x 2 ``M`` is finite and its stretches (singular values)
    lie in ``[1 / (1 + max_strain), 1 + max_strain]``: one lattice strained or
    rotated, not another lattice."""
    M = np.asarray(M, float)
    if not np.isfinite(M).all():
        return False
    sv = np.linalg.svd(M, compute_uv=False)
    return bool(sv.max() <= 1.0 + max_strain and sv.min() >= 1.0 / (1.0 + max_strain))


def pattern_background(
    X: torch.Tensor,
    A: torch.Tensor,
    t: torch.Tensor,
    spots: np.ndarray,
    radius: float,
    margin: float = 1.0,
    batch_size: int = 256,
) -> np.ndarray:
    """The part of the patterns that does not move with the lattice, (S, S) float32.

    A diffuse halo or background around the direct beam stays where it is
    while the spots move; the refinement compares spot patches, and a static
    gradient under a spot pulls its fitted position towards no motion. This
    estimate is rotationally symmetric about the pattern centre ``(S - 1) / 2``
    (the direct beam: the adapters centre every pattern on its origin). Each
    pattern ``X[i]`` is masked within ``radius + margin`` of its own spots, at
    ``c + A[i] @ p + t[i]`` (refined transforms), and its median taken in
    1-pixel rings; the background of a ring is the median over patterns of
    those medians, linearly interpolated in radius (rings with no unmasked
    pixel take their neighbours' values). Masking each pattern's own spots,
    rather than taking the mean pattern, keeps spots out of the estimate when
    orientations differ widely (full-rotation scans smear the mean's spots
    into rings).

    Parameters
    ----------
    X : Tensor (N, S, S)
        Model inputs (scaled intensity).
    A, t : Tensor (N, 2, 2), (N, 2)
        Base -> input transforms and translations (pixels) of the patterns,
        as returned by :func:`refine_spots`.
    spots : ndarray (n, 2)
        Spot offsets from the centre in the base (pixels).
    radius : float
        Compared spot radius (pixels).
    margin : float
        Extra distance (pixels) from the spots of the pixels used.
    batch_size : int
        Patterns processed at a time.

    Returns
    -------
    ndarray float32 (S, S)
    """
    N, S, _ = X.shape
    c = (S - 1) / 2.0
    yy, xx = np.mgrid[:S, :S] - c
    r = np.hypot(yy, xx).ravel()
    ring = r.astype(int)
    rings = [np.nonzero(ring == k)[0] for k in range(int(ring.max()) + 1)]
    rings = [(float(r[ix].mean()), torch.from_numpy(ix)) for ix in rings if ix.size]
    pix = torch.tensor(np.stack([yy.ravel(), xx.ravel()], -1), dtype=torch.float64)
    p64 = torch.as_tensor(np.asarray(spots), dtype=torch.float64)
    per_ring: list[list[torch.Tensor]] = [[] for _ in rings]
    for s0 in range(0, N, batch_size):
        sl = slice(s0, s0 + batch_size)
        A64, t64 = A[sl].to(torch.float64), t[sl, None].to(torch.float64)
        pos = p64 @ A64.transpose(-1, -2) + t64  # (B, n, 2) from the centre
        near = torch.cdist(pix.expand(pos.shape[0], -1, -1), pos).min(-1).values
        vals = X[sl].reshape(-1, S * S).to(torch.float64)
        vals = torch.where(near > radius + margin, vals, torch.nan)
        for meds, (_, ix) in zip(per_ring, rings, strict=True):
            meds.append(torch.nanmedian(vals[:, ix], dim=1).values)
    centres, values = [], []
    for meds, (centre, _) in zip(per_ring, rings, strict=True):
        m = torch.cat(meds)
        m = m[~torch.isnan(m)]
        if len(m):
            centres.append(centre)
            values.append(float(m.median()))
    if not values:
        return np.zeros((S, S), np.float32)
    return np.interp(np.hypot(yy, xx), centres, values).astype(np.float32)


def _freqs(P: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column frequencies (cycles/pixel) of ``rfft2`` of a P x P patch."""
    fx = torch.fft.fftfreq(P, dtype=dtype, device=device)[:, None]
    fy = torch.fft.rfftfreq(P, dtype=dtype, device=device)[None, :]
    return fx, fy


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

    ``x`` may also be a single image ``(1, S, S)``, gathered for every row.

    Patch pixel ``(P // 2, P // 2)`` is the centre. Returns the patches (zero
    outside the image) and a (B, n) bool "fully inside" flag.
    """
    Bx, S, _ = x.shape
    B = centres.shape[0]  # x may be one image (Bx = 1) shared by every row
    u = torch.arange(P, device=x.device) - P // 2
    rows = centres[..., 0, None, None] + u[:, None]  # (B, n, P, 1)
    cols = centres[..., 1, None, None] + u[None, :]  # (B, n, 1, P)
    inside = (rows >= 0) & (rows < S) & (cols >= 0) & (cols < S)  # (B, n, P, P)
    flat = rows.clamp(0, S - 1) * S + cols.clamp(0, S - 1)
    src = x.reshape(Bx, S * S)
    if Bx != B:
        src = src.expand(B, S * S)
    vals = torch.gather(src, 1, flat.reshape(B, -1)).reshape(flat.shape)
    vals = torch.where(inside, vals, vals.new_zeros(()))
    return vals, inside.flatten(-2).all(-1)


def _take(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``t`` itself when ``rows`` is None (every row), else ``t[rows]``."""
    return t if rows is None else t[rows]


def _phase(s: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Fourier factor that shifts a patch by ``s`` (..., 2) pixels (rows, columns).

    ``exp(-2 pi i (fx s_row + fy s_col))``, computed as the product of its row
    and column factors (two 1-D exponentials instead of one per frequency).
    """
    rows = torch.exp(-2j * math.pi * (fx * s[..., 0, None, None]))  # (..., P, 1)
    cols = torch.exp(-2j * math.pi * (fy * s[..., 1, None, None]))  # (..., 1, F)
    return rows * cols


def patch_size(radius: float) -> int:
    """Side P (even, pixels) of the spot patches for a compared ``radius``."""
    return 2 * int(math.ceil(radius + 3)) + 2


def base_patches(bases: torch.Tensor, spots: np.ndarray, radius: float) -> torch.Tensor:
    """Patches ``(K, n, P, P)`` of the bases around the pixel nearest each spot.

    Parameters
    ----------
    bases : Tensor (K, 1, S, S)
    spots : ndarray (n, 2)
        Spot offsets from the centre ``(S - 1) / 2`` (pixels).
    radius : float
        Compared radius (pixels); sets ``P = patch_size(radius)``.
    """
    S = bases.shape[-1]
    c = (S - 1) / 2.0
    K, n = bases.shape[0], len(spots)
    b_int = torch.round(torch.as_tensor(np.asarray(spots), dtype=torch.float64) + c).long()
    out, _ = _gather_patches(
        bases[:, 0].detach().to(torch.float32).cpu(),
        b_int[None].expand(K, n, 2).contiguous(),
        patch_size(radius),
    )
    return out


def refine_spots(
    X: torch.Tensor,
    patches: torch.Tensor,
    cls: torch.Tensor,
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

    Parameters
    ----------
    X : Tensor (N, S, S)
        Model inputs.
    patches : Tensor (K, n, P, P)
        Spot patches of every base (:func:`base_patches`, or the ``patches``
        returned by an earlier call with ``realign=True``), centred on the
        pixel nearest each spot.
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
        Maximum Gauss-Newton iterations per pattern.
    batch_size : int
        Patterns per batch.
    damping : float
        Levenberg damping, relative to the diagonal of the normal matrix.
    realign : bool
        Also return ``patches``: the mean over the patterns of each class of
        their spot patches shifted back onto the base (gain and offset
        removed), i.e. sharper base patches free of the encoder's
        whole-image warps.
    background : Tensor (S, S), optional
        Static background of the inputs (:func:`pattern_background`),
        subtracted from every input patch where it was taken, so that only
        what moves with the spots is compared. ``patches`` must then be
        background-free: patches of the bases minus the same background, or
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
        pattern); with ``realign``, ``patches``.
    """
    if texture not in SPOT_TEXTURES:
        raise ValueError(f"texture must be 'fixed' or 'ramp', got {texture!r}")
    dev = patches.device
    dt = torch.float32
    N, S, _ = X.shape
    c = (S - 1) / 2.0
    p64 = torch.as_tensor(np.asarray(spots), dtype=torch.float64, device=dev)  # (n, 2)
    n = p64.shape[0]
    reach = float(p64.norm(dim=-1).max()) if n else 0.0
    P = patch_size(radius)
    if tuple(patches.shape[1:]) != (n, P, P):
        raise ValueError(
            f"patches must have shape (K, {n}, {P}, {P}), got {tuple(patches.shape)}"
        )
    fx, fy = _freqs(P, dt, dev)
    taper = _taper(P, radius + 1.0, dt, dev)
    u = torch.arange(P, dtype=dt, device=dev) - P // 2
    inner = ((u[:, None] ** 2 + u[None, :] ** 2) <= radius**2).flatten()
    D = torch.nonzero(inner)[:, 0]  # compared pixels of a patch (flat indices)
    # texture="ramp": patch coordinates of the compared pixels, in radii
    ur = u[:, None].expand(P, P).flatten()[D] / radius
    vr = u[None, :].expand(P, P).flatten()[D] / radius
    b_int = torch.round(p64 + c)
    f_base = p64 + c - b_int  # spot centre within its patch, from the patch centre
    K = patches.shape[0]
    Bp = patches.to(dt)
    # M_k (2 x 6): d s_k / d (A11, A12, A21, A22, t1, t2)
    M = torch.zeros(n, 2, 6, dtype=torch.float64, device=dev)
    M[:, 0, 0], M[:, 0, 1] = p64[:, 0], p64[:, 1]
    M[:, 1, 2], M[:, 1, 3] = p64[:, 0], p64[:, 1]
    M[:, 0, 4] = M[:, 1, 5] = 1.0
    Mt = M.transpose(-1, -2)
    theta = torch.cat(
        [A.to(torch.float64).reshape(N, 4), torch.zeros(N, 2, dtype=torch.float64)], -1
    ).to(dev)
    error = torch.zeros(N, dtype=torch.float64)
    n_iter = torch.zeros(N, dtype=torch.long)
    gain = torch.ones(N, n, dtype=dt)
    edge = (taper < 0.05).to(dt)

    def _inv(G: torch.Tensor) -> torch.Tensor:
        """Real patches (..., P, P) from half spectra, compared pixels only."""
        return torch.fft.irfft2(G, s=(P, P)).flatten(-2)[..., D]

    # background: the mean over the patch border, removed before tapering
    bg = (Bp * edge).sum((-1, -2), keepdim=True) / edge.sum()
    if texture == "ramp":
        # the median of the border: a neighbouring disk that reaches the
        # border does not lift the level the gain ramp multiplies
        border = Bp.flatten(-2)[..., torch.nonzero(edge.flatten())[:, 0]]
        bg = border.median(-1).values[..., None, None]
    FB = torch.fft.rfft2((Bp - bg) * taper)  # (K, n, P, P // 2 + 1)
    acc = torch.zeros_like(Bp)
    cnt = torch.zeros(K, n, 1, 1, dtype=dt, device=dev)
    for s0 in range(0, N, batch_size):
        sl = slice(s0, s0 + batch_size)
        xb = X[sl].to(dev, dt)
        th = theta[sl].clone()
        cb = cls[sl].to(dev)
        Ab = th[:, :4].reshape(-1, 2, 2)
        pos0 = p64 @ Ab.transpose(-1, -2) + th[:, None, 4:] + c  # (B, n, 2)
        i_int = torch.round(pos0)
        if background is not None:
            xb = xb - background.to(dev, dt)
        Ipatch, valid = _gather_patches(xb, i_int.long(), P)
        Ip = Ipatch.flatten(-2)[..., D]  # (B, n, D)
        w = valid.to(dt)[..., None].expand_as(Ip)  # (B, n, D)
        wsum = w.sum(-1).clamp_min(1.0)
        mi = (w * Ip).sum(-1) / wsum
        F = FB[cb]  # (B, n, P, P // 2 + 1)
        nb = th.shape[0]
        # state of each pattern's last iteration, stored when it stops
        s_last = torch.zeros(nb, n, 2, dtype=dt, device=dev)
        a_last = torch.ones(nb, n, dtype=dt, device=dev)
        b_last = torch.zeros(nb, n, dtype=dt, device=dev)
        err_b = torch.zeros(nb, dtype=torch.float64, device=dev)
        it_b = torch.zeros(nb, dtype=torch.long, device=dev)
        act = torch.arange(nb, device=dev)  # patterns still iterating
        for it in range(iterations):
            rows = None if act.numel() == nb else act
            tha = _take(th, rows)
            Ab = tha[:, :4].reshape(-1, 2, 2)
            h = p64 @ Ab.transpose(-1, -2) + tha[:, None, 4:] + c - _take(i_int, rows)
            s = (h - f_base).to(dt)
            G = _take(F, rows) * _phase(s, fx, fy)
            Sv = _inv(G)
            if it == 0:
                # Jacobian from the starting shift; an approximate Jacobian
                # changes the path of Gauss-Newton, not its fixed point
                gx = _inv(G * (2j * math.pi * fx))
                gy = _inv(G * (2j * math.pi * fy))
            wa, Ipa, gxa, gya, wsa, mia = (
                _take(t, rows) for t in (w, Ip, gx, gy, wsum, mi)
            )
            if texture == "fixed":
                # per-spot gain and offset (closed form, weighted)
                ms = (wa * Sv).sum(-1) / wsa
                dS = Sv - ms[..., None]
                cov = (wa * dS * (Ipa - mia[..., None])).sum(-1)
                var = (wa * dS * dS).sum(-1).clamp_min(1e-12)
                a = (cov / var).clamp_min(0.05)
                b = mia - a * ms
                gain_field = a[..., None]
            else:
                # gain (a, c, d: linear across the spot) and offset b per spot:
                # weighted least squares on the columns S, u S, v S, 1
                Z = torch.stack([Sv, ur * Sv, vr * Sv, torch.ones_like(Sv)], -1)
                ZW = Z * wa[..., None]
                normal = ZW.transpose(-1, -2) @ Z  # (B, n, 4, 4)
                normal = normal + 1e-9 * torch.eye(4, dtype=dt, device=dev)
                rhs = (ZW * Ipa[..., None]).sum(-2)[..., None]
                coef = torch.linalg.solve(normal, rhs)[..., 0]
                a = coef[..., 0].clamp_min(0.05)
                slope = coef[..., 1, None] * ur + coef[..., 2, None] * vr
                gain_field = a[..., None] + slope
                b = coef[..., 3]
            r = gain_field * Sv + b[..., None] - Ipa
            # d r / d s = -g * grad(S), g the gain (field) of the spot
            if texture == "fixed":
                wa2 = wa * (a * a)[..., None]
                Gxx = (wa2 * gxa * gxa).sum(-1)
                Gxy = (wa2 * gxa * gya).sum(-1)
                Gyy = (wa2 * gya * gya).sum(-1)
            else:
                # variable projection: the part of the spot's motion that the
                # gain ramp cannot mimic (the Jacobian columns projected
                # orthogonal to the linear columns, weighted); without it the
                # ramp's correlation with the motion slows Gauss-Newton down
                Jm = torch.stack([gain_field * gxa, gain_field * gya], -1)  # (B,n,D,2)
                ZWJ = ZW.transpose(-1, -2) @ Jm  # (B, n, 4, 2)
                Jp = Jm - Z @ torch.linalg.solve(normal, ZWJ)
                Gp = (Jp * wa[..., None]).transpose(-1, -2) @ Jp  # (B, n, 2, 2)
                Gxx, Gxy, Gyy = Gp[..., 0, 0], Gp[..., 0, 1], Gp[..., 1, 1]
            G2 = torch.stack(
                [torch.stack([Gxx, Gxy], -1), torch.stack([Gxy, Gyy], -1)], -2
            ).to(torch.float64)  # (B, n, 2, 2)
            war = wa * r * (-gain_field)
            e = torch.stack([(war * gxa).sum(-1), (war * gya).sum(-1)], -1).to(
                torch.float64
            )  # (B, n, 2)
            H = torch.einsum("nij,bnjk,nkl->bil", Mt, G2, M)
            g = torch.einsum("nij,bnj->bi", Mt, e)
            diag = torch.diagonal(H, dim1=-2, dim2=-1)
            H = H + torch.diag_embed(damping * diag + 1e-12)
            step = torch.linalg.solve(H, g[..., None])[..., 0]
            # cap a step at half a pixel of spot motion
            move = step[:, :4].abs().sum(-1) * reach + step[:, 4:].abs().sum(-1)
            scale = (0.5 / move.clamp_min(1e-12)).clamp(max=1.0)
            th[act] = tha - scale[:, None] * step
            keep = scale * move > tol
            if it == iterations - 1:
                keep[:] = False
            stop = ~keep
            done = act[stop]  # patterns that stop here: record their last state
            it_b[done] = it + 1
            ws, rs = wa[stop], r[stop]
            err_b[done] = ((ws * rs * rs).sum((-1, -2)) / ws.sum((-1, -2)).clamp_min(1)).to(
                torch.float64
            )
            a_last[done] = a[stop]
            if realign:
                s_last[done], b_last[done] = s[stop], b[stop]
            act = act[keep]
            if act.numel() == 0:
                break
        theta[sl] = th
        error[sl] = err_b.cpu()
        n_iter[sl] = it_b.cpu()
        gain[sl] = a_last.cpu()
        if realign:
            # spot patches shifted back onto the base, gain and offset removed
            back = torch.fft.irfft2(
                torch.fft.rfft2(Ipatch) * _phase(-s_last, fx, fy), s=(P, P)
            )
            onehot = torch.nn.functional.one_hot(cb, K).to(dt)
            vb = valid.to(dt)[..., None, None]
            restored = (back - b_last[..., None, None]) / a_last[..., None, None]
            acc += torch.einsum("bk,bnpq->knpq", onehot, vb * restored)
            cnt += torch.einsum("bk,bnpq->knpq", onehot, vb)
    out = {
        "A": theta[:, :4].reshape(N, 2, 2).cpu(),
        "t": theta[:, 4:].cpu(),
        "error": error,
        "iterations": n_iter,
        "gain": gain,
    }
    if realign:
        out["patches"] = torch.where(cnt > 0, acc / cnt.clamp_min(1), Bp)
    return out
