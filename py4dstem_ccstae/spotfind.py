"""Spots of a learned base: finding them, and registering one base's onto another's.

The spots are what the per-pattern refinement
(:mod:`py4dstem_ccstae.spotfit`) moves; this module finds them on a base
(:func:`find_spots`: peaks, sub-pixel centres, the compared radius) and
relates the spots of two bases (:func:`register_spots`: the lattice matrix
``M`` that maps one base's spots onto another's, for the common frame of
bases that show one lattice).

Coordinates
-----------
Pixel ``(row, col)`` = ``(qx, qy)`` of the ``S x S`` model patterns, pixel
``k`` centred at coordinate ``k``; ``c = (S - 1) / 2`` is ``q = 0``. Spots are
offsets ``p`` from ``c`` (model pixels, ``(n, 2)``, rows ``(qx, qy)``).
"""

from __future__ import annotations

import numpy as np

from .affine import _rotation
from .config import Options

__all__ = ["find_spots", "spot_centres", "register_spots", "near_rotation"]


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
) -> tuple[np.ndarray | None, float | None, float | None]:
    """Spots of a learned base: sub-pixel offsets and the compared radius.

    Peaks of the smoothed, background-subtracted base inside the ring mask
    (at least 2 pixels from its border) above ``rel_threshold`` of the
    brightest are the spots; their centres are refined to sub-pixel accuracy
    (:func:`spot_centres`).

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
