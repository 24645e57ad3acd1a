"""In-plane symmetry of the lattice, from the geometry of the spots (numpy only).

The model learns a rotation as ``(cos n phi, sin n phi)``
(:mod:`~py4dstem_ccstae.model`): ``n`` must be the order of the rotation that
maps the *lattice* onto itself, so that two patterns of the same lattice
rotated by ``2 pi / n`` are the same lattice. The intensities of the spots
are a poor guide (a 2H monolayer's disks are only 3-fold while its lattice is
6-fold; dynamical scattering and tilts break intensity symmetries; a diffuse
halo is symmetric under every rotation), and so is the scan's mean pattern (a
scan whose grains take every orientation averages to a ring).

Method
------
For each of a few patterns spread over the scan:

1. the pattern inside the ring mask (direct beam and corners removed; 2
   pixels in from its borders, which cut the direct beam's tail), minus
   its radial median profile (a halo or any other rotationally symmetric
   background), clipped at 0, minus its mean: the spots;
2. its autocorrelation: peaks at the *differences* of the spot positions,
   i.e. at lattice vectors, whatever the spots' intensities and whatever the
   origin; it is centrosymmetric, so the order found is even (2, 4 or 6),
   as for every 2-D lattice;
3. the lattice vectors: its local maxima above :data:`PEAK_FRACTION` of the
   highest (the zero lag excluded), at most :data:`MAX_LAGS`, no longer than
   the ring's outer radius (longer lags lose their rotated partners off the
   pattern);
4. for ``n`` in (6, 4): the fraction of those vectors, weighted by their
   heights, that a rotation by ``2 pi / n`` maps within ``max(1, 0.08 |v|)``
   pixels of a maximum above half the threshold (8 % absorbs strains and
   shears of a few per cent). A pattern whose highest peak off the zero lag
   is below :data:`SIGNIFICANT` of the zero lag shows no lattice.

The scan's order is the largest ``n`` whose fraction, averaged over the
patterns, is at least :data:`MATCH_FRACTION`, else 2; patterns with fewer
than 4 lattice vectors (vacuum, amorphous, or too noisy) do not count. When
fewer than a quarter of the patterns count (weak spots under heavy noise,
e.g. a monolayer whose disks hold 2 % of the electrons), the mean of the
patterns is scored instead (its noise averages out; a scan whose grains take
every orientation averages to a ring, but its patterns are then strong
enough one by one); with no lattice anywhere the order is 2.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lattice_symmetry", "pattern_symmetry_scores"]

#: Lattice vectors: autocorrelation maxima above this fraction of the highest.
PEAK_FRACTION = 0.15
#: At most this many (the highest) lattice vectors per pattern.
MAX_LAGS = 24
#: The lattice is n-fold when this weighted fraction of its vectors match
#: (mean over the patterns; measured: 0.69-0.89 for the true order, at most
#: 0.17 for a wrong one, on simulated Si and MoS2 up to 70 % noise).
MATCH_FRACTION = 0.5
#: A pattern shows a lattice when its highest autocorrelation peak off the
#: zero lag reaches this fraction of the zero lag (noise alone stays near 0).
SIGNIFICANT = 0.3
#: Orders tested, highest first (2 always holds for a lattice).
ORDERS = (6, 4)


def _spots_only(pattern: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pattern inside ``mask`` minus its radial median profile, clipped, zero-mean.

    Pixels within 2 of the mask's border are left out.
    The profile is the median in 1-pixel rings about the centre, linearly
    interpolated at each pixel's radius (a constant per ring would leave the
    steep halo's gradient across each ring, with the pixel grid's 4-fold
    symmetry).
    """
    from scipy import ndimage

    # the mask's borders hold the edge of whatever it cuts (the direct
    # beam's tail, the halo's steepest part): 2 pixels in from them
    mask = ndimage.binary_erosion(mask, iterations=2)
    if not mask.any():  # a ring too thin to hold spots
        return np.zeros(pattern.shape, float)
    S0, S1 = pattern.shape
    yy, xx = np.mgrid[:S0, :S1]
    r = np.hypot(yy - (S0 - 1) / 2.0, xx - (S1 - 1) / 2.0)
    ring = r.astype(int)
    centres, medians = [], []
    for k in np.unique(ring[mask]):
        sel = mask & (ring == k)
        centres.append(r[sel].mean())
        medians.append(np.median(pattern[sel]))
    out = np.zeros(pattern.shape, float)
    out[mask] = pattern[mask] - np.interp(r[mask], centres, medians)
    out = np.clip(out, 0.0, None)
    out[mask] -= out[mask].mean()  # zero mean: noise correlates to 0 off the zero lag
    return out


def _lattice_vectors(spots: np.ndarray, min_lag: float, floor: float):
    """Autocorrelation maxima above ``floor`` x the highest: lags (m, 2) px, heights."""
    from scipy import ndimage

    S0, S1 = spots.shape
    F = np.fft.rfft2(spots, s=(2 * S0, 2 * S1))
    ac = np.fft.fftshift(np.fft.irfft2(np.abs(F) ** 2, s=(2 * S0, 2 * S1)))
    c = np.array([S0, S1], float)
    yy, xx = np.mgrid[: 2 * S0, : 2 * S1]
    lag = np.hypot(yy - c[0], xx - c[1])
    zero = ac[S0, S1]
    ac = np.where(lag > min_lag, ac, 0.0)
    top = ac.max()
    if top <= SIGNIFICANT * zero or top <= 0:
        return np.zeros((0, 2)), np.zeros(0)
    peaks = (ac == ndimage.maximum_filter(ac, size=3)) & (ac > floor * top)
    idx = np.argwhere(peaks)
    h = ac[tuple(idx.T)]
    order = np.argsort(-h, kind="stable")
    return idx[order] - c, h[order]


def pattern_symmetry_scores(
    pattern: np.ndarray, mask: np.ndarray, min_lag: float = 2.0
) -> dict[int, float] | None:
    """Weighted fraction of lattice vectors matched by each rotation order.

    Parameters
    ----------
    pattern : ndarray (S, S)
        One pattern (any intensity scaling), centred on the direct beam.
    mask : ndarray of bool (S, S)
        Ring mask: the pixels that may hold spots.
    min_lag : float
        Autocorrelation lags (pixels) up to this length are the zero peak.

    Returns
    -------
    dict or None
        ``{n: fraction}`` for ``n`` in :data:`ORDERS`; None when the pattern
        shows fewer than 4 lattice vectors.
    """
    mask = np.asarray(mask, bool)
    spots = _spots_only(np.asarray(pattern, float), mask)
    # targets: every maximum down to half the threshold (a rotated vector's
    # partner may be weaker); sources: those above the threshold (heights
    # sorted, the first is the highest), short enough that their rotated
    # partners lie inside the lags the ring can show
    v_all, h_all = _lattice_vectors(spots, min_lag, PEAK_FRACTION / 2)
    strong = h_all > PEAK_FRACTION * h_all[0] if len(h_all) else np.zeros(0, bool)
    v, h = v_all[strong], h_all[strong]
    yy, xx = np.nonzero(mask)
    reach = float(
        np.hypot(yy - (mask.shape[0] - 1) / 2, xx - (mask.shape[1] - 1) / 2).max()
    )
    short = np.hypot(v[:, 0], v[:, 1]) <= reach
    v, h = v[short][:MAX_LAGS], h[short][:MAX_LAGS]
    if len(v) < 4:
        return None
    tol = np.maximum(1.0, 0.08 * np.hypot(v[:, 0], v[:, 1]))
    out = {}
    for n in ORDERS:
        a = 2 * np.pi / n
        R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        d = np.linalg.norm((v @ R.T)[:, None] - v_all[None], axis=-1).min(1)
        out[n] = float((h * (d <= tol)).sum() / h.sum())
    return out


def lattice_symmetry(
    patterns: np.ndarray, mask: np.ndarray, mean: np.ndarray | None = None
) -> int:
    """Rotation order (2, 4 or 6) of the lattice the patterns show.

    Parameters
    ----------
    patterns : ndarray (N, S, S)
        A few patterns spread over the scan (model inputs), each centred on
        its direct beam.
    mask : ndarray of bool (S, S)
        Ring mask of the inputs.
    mean : ndarray (S, S), optional
        Mean of more patterns (e.g. the whole training set), scored when the
        patterns one by one are too noisy; default: the mean of ``patterns``.

    Returns
    -------
    int
        See the module docs; 2 when no pattern shows a lattice.
    """
    mask = np.asarray(mask, bool)
    patterns = np.asarray(patterns)
    scores = [pattern_symmetry_scores(x, mask) for x in patterns]
    scores = [sc for sc in scores if sc is not None]
    if len(scores) < max(2, len(patterns) // 4):
        # too noisy (or too few lattice patterns) one by one: their mean
        # shows the lattice of a scan whose grains share an orientation
        avg = patterns.mean(0) if mean is None else np.asarray(mean)
        mean_scores = pattern_symmetry_scores(avg, mask)
        scores = [] if mean_scores is None else [mean_scores]
    if not scores:
        return 2
    mean = {n: float(np.mean([sc[n] for sc in scores])) for n in ORDERS}
    return next((n for n in ORDERS if mean[n] >= MATCH_FRACTION), 2)
