"""The output grid of the network inputs: where it samples the detector, and its ring.

Geometry
--------
Output pixel ``(i, j)`` (``i`` = row = ``qx``, ``j`` = column = ``qy``) of a
``size x size`` grid is the calibrated reciprocal vector::

    q = ((i - (size - 1) / 2) * dq, (j - (size - 1) / 2) * dq),  dq = 2 * q_max / size

in the DataCube's Q units (A^-1, or detector pixels when the units are
``'pixels'``). The output pixel ``(size - 1) / 2`` (between pixels for even
``size``) is ``q = 0``. For scan position ``(rx, ry)`` it is sampled at the
detector location (row, column; pixel ``k`` centred at coordinate ``k``)::

    p = origin(rx, ry) + inv(C) @ q

with ``C = detector_matrix(q_pixel_size, ellipse, QR_rotation, QR_flip)``
(:func:`py4dstem_ccstae.calibration.detector_matrix`, py4DSTEM's calibration
order origin -> ellipse -> pixel size -> Q/R rotation). Every calibration is
undone, so ``qx`` of the output is parallel to the scan axis ``Rx`` and a
lattice vector ``g`` (A^-1) of the calibrated frame appears at output pixel
``g / dq + (size - 1) / 2``. Zero outside the detector.

Sampling is *area-averaged* (anti-aliased): each output pixel is the mean of
``s x s`` bilinear samples spread evenly over its ``dq x dq`` footprint, with
``s = ceil(dq / d_min)`` (:attr:`DetectorSampling.supersample`) and ``d_min``
the smallest detector pixel size in Q units (smallest singular value of
``C``). Point sampling at a step larger than the detector pixel aliases the
disk edges, and the aliasing differs from grain to grain (it depends on where
the disks fall on the output grid), which biased strain by 1-2e-3 per grain.
With ``dq <= d_min`` (``s = 1``) this is plain bilinear sampling.

Pre-binning
-----------
When the area averaging would need ``s >= 4`` sub-samples per output pixel
(large detectors, e.g. 256x256 or 512x512 at ``size=64``), the detector is
first binned by ``b`` and resampled from the binned detector, averaging ``b x
b`` blocks (trailing rows and columns that fill no block are dropped).
:func:`bin_factor` takes the *smallest* ``b`` that brings the supersampling
below 4 (the cost of the resampling is ``s**2`` samples per output pixel, the
same for every ``b`` that gives the same ``s``), never one whose binned pixels
exceed an output pixel (``b * d_max <= dq``). Every binning widens the
effective sampling kernel (the ``b x b`` box and bilinear interpolation on
the coarser grid), so the finest binning that is as fast is also the most
faithful; the largest such ``b`` (``prebin="coarsest"``, the rule of the
first version) blurs more (at 256x256 and ``size=64``: ``b = 3`` against
``b = 2``, both with ``s = 2``). The calibration is carried through exactly:
binned pixel ``k`` spans raw pixels ``b k ... b k + b - 1``, so a raw
coordinate ``o`` (the origin) is ``(o - (b - 1) / 2) / b`` binned, the
detector matrix is ``b C`` (pixel size x ``b``), ellipse and Q/R rotation
unchanged. :attr:`DetectorSampling.bin_factor` records ``b``; ``prebin``
also takes ``False`` (no binning) or an explicit factor.

Ring
----
The mask of the network inputs is the ring ``inner <= |q| <= outer``
(:meth:`DetectorSampling.ring_mask`). Its automatic inner radius is 1.5 x the
direct-beam radius of the mean resampled pattern (:func:`direct_beam_radius`)
or half the shortest Bragg vector, its outer radius 0.95 x ``q_max``
(:func:`automatic_ring`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

__all__ = [
    "DetectorSampling",
    "automatic_ring",
    "bin_factor",
    "check_prebin",
    "direct_beam_radius",
    "field_of_view",
]

#: Supersampling from which the detector is pre-binned (module docs).
PREBIN_SUPERSAMPLE = 4

#: Rules of :func:`bin_factor`: the finest factor that brings the supersampling
#: below :data:`PREBIN_SUPERSAMPLE` (the default), or the coarsest allowed.
PREBIN_RULES = ("finest", "coarsest")

#: Fraction of the largest inscribed circle used for the default ``q_max``.
Q_MAX_MARGIN = 0.98

#: Points per disk of :meth:`DetectorSampling.coverage` (a centre and rings at
#: radii 1/3, 2/3, 1 with 6, 12, 18 points).
DISK_SAMPLES = 37


def bin_factor(dq: float, C: np.ndarray, rule: str = "finest") -> int:
    """Detector pre-binning factor for output pixels of ``dq`` (Q units).

    1 unless area averaging would need :data:`PREBIN_SUPERSAMPLE` or more
    sub-samples per output pixel (``ceil(dq / d_min) >= 4``, ``d_min`` the
    smallest singular value of ``C``). Then, among the factors whose binned
    pixels are still no larger than an output pixel along any direction
    (``b * d_max <= dq``, ``d_max`` the largest singular value; they still
    sample the model's grid), ``rule="finest"`` (the default) takes the
    smallest ``b`` with ``ceil(dq / (b d_min)) < 4`` (or the largest allowed,
    if none reaches it) and ``rule="coarsest"`` the largest.
    """
    if rule not in PREBIN_RULES:
        raise ValueError(f"rule must be one of {PREBIN_RULES}, got {rule!r}")
    sv = np.linalg.svd(C, compute_uv=False)
    d_min = float(sv.min())
    if math.ceil(dq / d_min - 1e-6) < PREBIN_SUPERSAMPLE:
        return 1
    largest = largest_factor(dq, C)
    if rule == "coarsest":
        return largest
    for b in range(2, largest + 1):
        if math.ceil(dq / (b * d_min) - 1e-6) < PREBIN_SUPERSAMPLE:
            return b
    return largest


def largest_factor(dq: float, C: np.ndarray) -> int:
    """Largest ``b`` whose binned pixels are no larger than an output pixel of ``dq``.

    ``b * d_max <= dq`` (``d_max`` the largest singular value of ``C``), at
    least 1.
    """
    d_max = float(np.linalg.svd(C, compute_uv=False).max())
    return max(1, int(math.floor(dq / d_max + 1e-9)))


def check_prebin(prebin) -> bool | int | str:
    """``prebin`` checked: True, False, ``"coarsest"`` or an int >= 1 (ValueError)."""
    if isinstance(prebin, (bool, np.bool_)):
        return bool(prebin)
    if isinstance(prebin, str) and prebin == "coarsest":
        return prebin
    if isinstance(prebin, (int, np.integer)) and int(prebin) >= 1:
        return int(prebin)
    raise ValueError(
        "prebin must be True (automatic), False (off), 'coarsest' or an "
        f"integer factor >= 1, got {prebin!r}"
    )


def disk_points() -> np.ndarray:
    """:data:`DISK_SAMPLES` points spread evenly over the unit disk, (m, 2)."""
    pts = [np.zeros((1, 2))]
    for ring, n in ((1 / 3, 6), (2 / 3, 12), (1.0, 18)):
        a = 2 * np.pi * (np.arange(n) + 0.5 * (ring < 1)) / n
        pts.append(ring * np.stack([np.cos(a), np.sin(a)], -1))
    return np.concatenate(pts)


class DetectorSampling:
    """Where a ``size x size`` grid of calibrated vectors samples the detector.

    Parameters
    ----------
    size : int
        Output patterns are ``size x size``.
    q_max : float
        Half-width of the field of view, Q units; ``dq = 2 q_max / size``.
    C : ndarray (2, 2)
        Detector matrix (raw detector pixel offsets -> Q units).
    prebin : bool, int or "coarsest"
        Pre-bin large detectors (module docs: Pre-binning): True, the
        automatic factor (:func:`bin_factor`, ``rule="finest"``);
        ``"coarsest"``, the largest allowed factor; False, none (1); an int
        ``b >= 1``, that factor (ValueError when its binned pixels would
        exceed an output pixel, ``b * d_max > dq``).

    Attributes
    ----------
    q : ndarray (size, size, 2)
        Calibrated vector of every output pixel, Q units.
    bin_factor : int
        ``b`` (1: no pre-binning).
    supersample : int
        Sub-samples per output pixel and axis (on the binned detector).
    offsets : torch.Tensor float64 (size * s, size * s, 2)
        Binned-detector offsets ``inv(C b) @ q`` of every sub-sample (row,
        column); the ``s x s`` blocks are the output pixels.
    """

    def __init__(
        self, size: int, q_max: float, C: np.ndarray, prebin: bool | int | str = True
    ):
        self.size, self.q_max, self.C = size, q_max, C
        self.prebin = check_prebin(prebin)
        self.dq = 2.0 * q_max / size
        t = (np.arange(size) - (size - 1) / 2.0) * self.dq
        self.q = np.stack(np.meshgrid(t, t, indexing="ij"), -1)
        self.bin_factor = self._factor(self.prebin)
        Cb = C * self.bin_factor
        d_min = float(np.linalg.svd(Cb, compute_uv=False).min())
        self.supersample = max(1, math.ceil(self.dq / d_min - 1e-6))
        s = self.supersample
        j = np.arange(size * s)
        tf = ((j + 0.5) / s - 0.5 - (size - 1) / 2.0) * self.dq
        qf = np.stack(np.meshgrid(tf, tf, indexing="ij"), -1)
        self.offsets = torch.from_numpy(qf @ np.linalg.inv(Cb).T)
        # ((Qx, Qy), offsets in grid_sample's normalised (x, y), float32); lazy
        self._unit_offsets: tuple | None = None

    def _factor(self, prebin: bool | int | str) -> int:
        """The pre-binning factor ``prebin`` asks for (class docs)."""
        if prebin is False:
            return 1
        if prebin is True:
            return bin_factor(self.dq, self.C, "finest")
        if prebin == "coarsest":
            return bin_factor(self.dq, self.C, "coarsest")
        largest = largest_factor(self.dq, self.C)
        if prebin > largest:
            raise ValueError(
                f"prebin={prebin} bins detector pixels larger than a model pixel "
                f"(at most {largest} here, for model pixels of {self.dq:.4g} Q units)"
            )
        return prebin

    def resample(self, raw: np.ndarray, origin: np.ndarray) -> np.ndarray:
        """Area-averaged patterns (n, size, size) float64 of raw ``(n, Qx, Qy)`` patterns.

        ``origin`` (n, 2): each pattern's origin, raw detector pixels (row,
        column). Linear intensities; geometry and averaging in the module
        docs. Values are computed in float32 (exact for counts < 2**24).
        """
        img = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[:, None]
        b = self.bin_factor
        if b > 1:
            # b x b blocks averaged (trailing rows/columns that fill no block
            # dropped); binned pixel k spans raw pixels b k ... b k + b - 1
            img = torch.nn.functional.avg_pool2d(img, b, b)
        Qx, Qy = img.shape[-2:]
        # grid_sample with align_corners=True: -1 and 1 are the outer pixel centres;
        # bilinear, zero outside (as map_coordinates' grid-constant mode). Grid =
        # normalised (column, row) of p = origin + offsets, built as one float32
        # add of the (cached) normalised offsets and the normalised origins
        to_unit = np.array([2.0 / (Qy - 1), 2.0 / (Qx - 1)])
        if self._unit_offsets is None or self._unit_offsets[0] != (Qx, Qy):
            unit = self.offsets.numpy()[..., ::-1] * to_unit
            self._unit_offsets = ((Qx, Qy), torch.from_numpy(unit.astype(np.float32)))
        origin = (origin - (b - 1) / 2.0) / b  # binned px
        origin = origin[:, ::-1] * to_unit - 1.0
        origin = torch.from_numpy(origin.astype(np.float32))
        grid = origin[:, None, None, :] + self._unit_offsets[1][None]  # (n, Sf, Sf, 2)
        fine = torch.nn.functional.grid_sample(
            img, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        s = self.supersample
        return torch.nn.functional.avg_pool2d(fine, s, s)[:, 0].double().numpy()

    def ring_mask(self, ring: tuple[float, float]) -> np.ndarray:
        """Bool (size, size): True where ``ring[0] <= |q| <= ring[1]``."""
        r = np.hypot(self.q[..., 0], self.q[..., 1])
        return (r >= ring[0]) & (r <= ring[1])

    def coverage(
        self, origin: np.ndarray, detector_shape, q: np.ndarray, radius: float
    ) -> np.ndarray:
        """Fraction of each disk on the detector, per position.

        ``origin`` (m, 2), raw detector pixels; ``detector_shape`` ``(Qx,
        Qy)``; ``q`` (n, 2) disk centres and ``radius``, Q units. Returns
        (m, n) float64: the fraction of :data:`DISK_SAMPLES` points spread
        over each disk whose detector location ``origin + inv(C) @ (q + d)``
        (pixel centres at integer coordinates) lies within ``[0, Qx - 1] x
        [0, Qy - 1]``.
        """
        Qx, Qy = (int(v) for v in detector_shape)
        pts = q[:, None, :] + float(radius) * disk_points()[None]  # (n, m, 2)
        offsets = pts @ np.linalg.inv(self.C).T
        p = origin[:, None, None, :] + offsets[None]
        inside = (
            (p[..., 0] >= 0)
            & (p[..., 0] <= Qx - 1)
            & (p[..., 1] >= 0)
            & (p[..., 1] <= Qy - 1)
        )
        return inside.mean(-1)


def direct_beam_radius(mean: np.ndarray, q: np.ndarray, dq: float, q_max: float) -> float:
    """Radius (Q units) of the direct-beam disk in a mean resampled pattern.

    ``mean`` (size, size) on the grid of vectors ``q`` (size, size, 2). The
    radial profile ``P(r)`` (bins of ``dq / 2`` up to ``q_max``) is weighted
    by ``r**2``: a halo around the direct beam that decays like ``1 / r**2``
    (e.g. the paper's Lorentzian background, or diffuse scattering) becomes
    flat, while the disk's edge stays a sharp drop. The radius is where ``P``
    falls most steeply between the point where ``r**2 P(r)`` (lightly
    smoothed) first reaches half of its first local maximum and the next
    minimum of ``r**2 P(r)``. The plain half-maximum of ``P`` would return the
    halo's width, not the disk's, under heavy background. NaN if the profile
    has no such drop.
    """
    r = np.hypot(q[..., 0], q[..., 1]).ravel()
    step = dq / 2.0
    nbins = int(q_max / step)
    k = np.minimum((r / step).astype(int), nbins)
    cnt = np.bincount(k, minlength=nbins + 1)[:nbins]
    tot = np.bincount(k, weights=mean.ravel(), minlength=nbins + 1)[:nbins]
    ok = cnt > 0
    rc = (np.arange(nbins) + 0.5) * step
    prof = np.interp(rc, rc[ok], tot[ok] / cnt[ok])
    f = gaussian_filter(rc**2 * prof, 1.0, mode="nearest")
    peaks = np.nonzero((f[1:-1] >= f[:-2]) & (f[1:-1] > f[2:]))[0] + 1
    if not peaks.size or not f[peaks[0]] > 0:
        return float("nan")
    i0 = peaks[0]
    # window: from where f first reaches half its first maximum to the
    # next minimum of f; the edge is the steepest descent of P in it
    after = np.nonzero((f[i0 + 1 : -1] <= f[i0:-2]) & (f[i0 + 1 : -1] < f[i0 + 2 :]))[0]
    i1 = i0 + 1 + after[0] if after.size else len(f) - 1
    ih = int(np.nonzero(f[: i0 + 1] >= 0.5 * f[i0])[0][0])
    if i1 - ih < 2:
        return float("nan")
    d = np.diff(prof[ih : i1 + 1])
    j = int(np.argmin(d))
    # parabolic refinement of the steepest point (between bins ih+j, ih+j+1)
    if 0 < j < len(d) - 1:
        den = d[j - 1] - 2 * d[j] + d[j + 1]
        off = 0.5 * (d[j - 1] - d[j + 1]) / den if den != 0 else 0.0
    else:
        off = 0.0
    return float(rc[ih] + (j + 0.5 + off) * step)


def automatic_ring(
    q_max: float, units: str, direct_radius: float, g_min: float | None = None
) -> tuple[tuple[float, float], str]:
    """The default ring ``(inner, outer)`` (Q units) and where ``inner`` came from.

    ``outer = 0.95 q_max``; ``inner`` is half the median shortest Bragg
    vector ``g_min`` when given (``'braggvectors'``), else 1.5 x the
    direct-beam radius (``'direct_beam'``). ValueError (naming ``ring``) when
    no direct-beam disk was found or ``inner >= outer``.
    """
    outer = 0.95 * q_max
    if g_min is not None:
        inner, source = 0.5 * g_min, "braggvectors"
    else:
        inner, source = 1.5 * direct_radius, "direct_beam"
        if not np.isfinite(inner):
            raise ValueError(
                "ring: no direct-beam disk found at the centre of the field of "
                "view (mean pattern), so the mask's inner radius cannot be "
                f"chosen; check the origin calibration, or pass ring=(inner, "
                f"outer) in {units}"
            )
    if not inner < outer:
        raise ValueError(
            f"automatic ring inner radius {inner:.4g} >= outer {outer:.4g} "
            f"{units}: pass ring=(inner, outer) or a larger q_max"
        )
    return (float(inner), float(outer)), source


def field_of_view(
    q_max: float | None, origin: np.ndarray, C: np.ndarray, detector_shape, units: str
) -> float:
    """``q_max`` (Q units) checked against the detector, or chosen when None.

    Given: ValueError when the field of view ``+-q_max`` lies beyond the
    detector's farthest corner from the origin at every position (there are
    no pixels there, and the supersampling would explode). None:
    :data:`Q_MAX_MARGIN` x the largest radius whose circle about the origin
    stays on the detector at every scan position (``origin`` (Rx, Ry, 2),
    detector pixels; ``detector_shape`` ``(Qx, Qy)``).
    """
    Qx, Qy = detector_shape
    if q_max is not None:
        corners = np.array([[0, 0], [0, Qy - 1], [Qx - 1, 0], [Qx - 1, Qy - 1]], float)
        far = np.linalg.norm(origin.reshape(-1, 1, 2) - corners, axis=-1).max()
        reach = float(np.linalg.svd(C, compute_uv=False).max()) * float(far)
        if q_max > reach:
            raise ValueError(
                f"q_max={q_max:g} {units} lies beyond the detector, whose farthest "
                f"corner is {reach:.4g} {units} from the origin at this calibration: "
                "pass a smaller q_max (or None: automatic)"
            )
        return q_max
    edge = np.minimum.reduce(
        [origin[..., 0], Qx - 1 - origin[..., 0], origin[..., 1], Qy - 1 - origin[..., 1]]
    )
    smin = float(np.linalg.svd(C, compute_uv=False).min())
    q_max = Q_MAX_MARGIN * float(edge.min()) * smin
    if q_max <= 0:
        raise ValueError(
            "datacube origin lies outside the detector at some scan positions; "
            "cannot choose q_max"
        )
    return q_max
