"""The simulator's disks and detector: rendering patterns, calibrating DataCubes.

Second stage of the simulator (:mod:`py4dstem_ccstae.simulate`): given each
position's lattice transform ``A`` and direct-beam origin, render its
diffraction pattern on a detector and write that detector into a DataCube's
calibration.

Disks
-----
Spots are rendered at ``g' = A @ g`` (calibrated A^-1) with exact sub-pixel
positions, as finite-convergence disks with a soft (error-function) edge
(:func:`disk_profile`); disk size is set by the probe and does not scale with
strain. Kinematic disks are uniform (one intensity per spot); Bloch-wave disks
(:func:`dynamical_textures`, py4DSTEM's ``generate_CBED`` with
``LACBED=True``) carry a texture per grain and spot, computed for the grain's
strained cell, sampled in the crystal frame (rotated with the lattice).

Detector model
--------------
A detector pixel ``p = (qx, qy)`` (row, column) maps to calibrated reciprocal
coordinates ``C @ (p - origin)`` with ``C`` from
:func:`py4dstem_ccstae.calibration.detector_matrix` (ellipse, pixel size, Q/R
rotation, in py4DSTEM's order). :class:`Detector` holds that geometry and the
disk size, renders scans in batches and writes the calibration (origin per
position, ellipse, Q/R rotation) so py4DSTEM's own calibrated Bragg vectors
recover the undistorted lattice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erfc

from .calibration import detector_matrix
from .materials import crystal

__all__ = [
    "Detector",
    "copy_calibration",
    "descan_origins",
    "disk_profile",
    "dynamical_textures",
    "random_tilts",
    "render_patterns",
]

#: Side of a Bloch-wave disk texture, pixels (texture pixel 16 is the disk centre).
TEXTURE_SIZE = 33

#: Work-array budget of one render batch: spots x window pixels x positions.
_BATCH_ELEMENTS = 4e6


# -------------------------------------------------------------------- rendering
def disk_profile(rho: np.ndarray, radius: float, edge: float) -> np.ndarray:
    """Soft-edged disk: 1 inside, 0 outside, error-function edge of width ``edge``."""
    return 0.5 * erfc((rho - radius) / (math.sqrt(2.0) * edge))


def _window_half(C: np.ndarray, radius: float, edge: float) -> int:
    """Half side (pixels) of the square window that holds one disk and its edge."""
    sv = np.linalg.svd(C, compute_uv=False)
    return int(math.ceil((radius + 3.0 * edge) / sv.min())) + 1


def _texture_weights(textures, texture_index, rotation, d, radius) -> np.ndarray:
    """Bilinear samples (B, S, W) of each disk's texture at calibrated offsets ``d``.

    ``d`` (B, S, W, 2) is rotated by ``-rotation`` into the crystal frame;
    texture pixel ``(T-1)/2`` is the disk centre and the texture spans
    ``[-radius, radius]``.
    """
    B, S = d.shape[:2]
    T = textures.shape[-1]
    c, s = np.cos(rotation), np.sin(rotation)
    # crystal-frame offset: R(-phi) d
    dx = c[:, None, None] * d[..., 0] + s[:, None, None] * d[..., 1]
    dy = -s[:, None, None] * d[..., 0] + c[:, None, None] * d[..., 1]
    scale = (T - 1) / (2.0 * radius)
    fx = np.clip(dx * scale + (T - 1) / 2.0, 0, T - 1.000001)
    fy = np.clip(dy * scale + (T - 1) / 2.0, 0, T - 1.000001)
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    wx, wy = fx - ix, fy - iy
    tex = textures[texture_index]  # (B, S, T, T)
    bi = np.arange(B)[:, None, None]
    si = np.arange(S)[None, :, None]
    t00 = tex[bi, si, ix, iy]
    t10 = tex[bi, si, ix + 1, iy]
    t01 = tex[bi, si, ix, iy + 1]
    t11 = tex[bi, si, ix + 1, iy + 1]
    return (
        t00 * (1 - wx) * (1 - wy)
        + t10 * wx * (1 - wy)
        + t01 * (1 - wx) * wy
        + t11 * wx * wy
    )


def render_patterns(
    A: np.ndarray,
    origins: np.ndarray,
    g: np.ndarray,
    intensity: np.ndarray,
    C: np.ndarray,
    pattern_shape: tuple[int, int],
    radius: float,
    edge: float,
    textures=None,
    texture_index=None,
    rotation=None,
) -> np.ndarray:
    """Render patterns for a batch of positions.

    Parameters
    ----------
    A : (B, 2, 2)
        Lattice transforms (reference -> measured, calibrated frame).
    origins : (B, 2)
        Direct-beam position in detector pixels (row, column).
    g : (S, 2)
        Reference spot vectors in A^-1 (the direct beam included as (0, 0)).
    intensity : (S,)
        Spot intensities (used when ``textures`` is None).
    C : (2, 2)
        Detector matrix (pixel offsets -> calibrated A^-1).
    pattern_shape : (int, int)
        Detector ``(Qx, Qy)``, pixels.
    radius, edge : float
        Disk radius and edge width, A^-1.
    textures : (G, S, T, T) or None
        Per-group disk images (integrated intensity already included),
        sampled at the calibrated offset from the disk centre (rotated by
        ``-rotation`` into the crystal frame); texture pixel ``(T-1)/2`` is
        the disk centre and the texture spans ``[-radius, radius]``.
    texture_index : (B,) int
        Group of each position.
    rotation : (B,) float
        Lattice rotation phi (radians, +qx toward +qy) of each position.

    Returns
    -------
    (B, Qx, Qy) float64
    """
    B = A.shape[0]
    Qx, Qy = pattern_shape
    gq = np.einsum("bij,sj->bsi", A, g)  # (B, S, 2) calibrated
    Cinv = np.linalg.inv(C)
    pc = origins[:, None, :] + gq @ Cinv.T  # (B, S, 2) detector pixels
    half = _window_half(C, radius, edge)
    o = np.arange(-half, half + 1)
    offs = np.stack(np.meshgrid(o, o, indexing="ij"), -1).reshape(-1, 2)  # (W, 2)
    centre = np.rint(pc).astype(np.int64)
    pix = centre[:, :, None, :] + offs[None, None]  # (B, S, W, 2)
    inside = (
        (pix[..., 0] >= 0) & (pix[..., 0] < Qx) & (pix[..., 1] >= 0) & (pix[..., 1] < Qy)
    )
    d = (pix - origins[:, None, None, :]) @ C.T - gq[:, :, None, :]  # calibrated offset
    rho = np.sqrt((d**2).sum(-1))
    val = disk_profile(rho, radius, edge)
    if textures is None:
        val *= intensity[None, :, None]
    else:
        val *= _texture_weights(textures, texture_index, rotation, d, radius)
    flat = (np.arange(B)[:, None, None] * Qx + pix[..., 0]) * Qy + pix[..., 1]
    out = np.bincount(flat[inside], weights=val[inside], minlength=B * Qx * Qy)
    return out.reshape(B, Qx, Qy)


# ------------------------------------------------------------ Bloch-wave disks
def _extend_disk(disk: np.ndarray, radius_px: float) -> np.ndarray:
    """Copy each pixel outside the filled disk from its nearest pixel inside."""
    from scipy.ndimage import distance_transform_edt

    n = disk.shape[0]
    i = np.arange(n) - n // 2
    outside = np.hypot(i[:, None], i[None, :]) >= radius_px
    if not outside.any() or outside.all():
        return disk
    idx = distance_transform_edt(outside, return_distances=False, return_indices=True)
    return disk[tuple(idx)]


def random_tilts(rng: np.random.Generator, num: int, tilt: float) -> np.ndarray:
    """Beam tilts (num, 2) in radians, uniform over a disk of radius ``tilt`` mrad.

    Draws ``num`` angles, then ``num`` radii, from ``rng``.
    """
    ang = rng.uniform(0, 2 * np.pi, num)
    mag = tilt * 1e-3 * np.sqrt(rng.uniform(0, 1, num))
    return np.stack([mag * np.cos(ang), mag * np.sin(ang)], -1)


def _bloch_disks(material, strain, thickness, alpha_q, k_max, voltage, tilt, px) -> dict:
    """py4DSTEM's LACBED disks (``hkl`` -> image) of one strained grain."""
    cr = crystal(material, strain=strain)
    cr.calculate_dynamical_structure_factors(
        accelerating_voltage=voltage,
        method="WK-CP",
        k_max=2.0 * k_max,
        thermal_sigma=0.08,
    )
    beams = cr.generate_diffraction_pattern(
        zone_axis_lattice=[0, 0, 1],
        sigma_excitation_error=0.02,
        tol_excitation_error_mult=3,
        tol_intensity=1e-7,  # drop forbidden beams: ~80x faster Bloch solves
        k_max=k_max,
    )
    alpha_mrad = alpha_q * cr.wavelength * 1e3
    return cr.generate_CBED(
        beams,
        thickness=thickness,
        alpha_mrad=alpha_mrad,
        pixel_size_inv_A=px,
        zone_axis_cartesian=[tilt[0], tilt[1], 1.0],
        LACBED=True,
        progress_bar=False,
    )


def dynamical_textures(
    material: str,
    grain_strain: np.ndarray,
    g_hkl: np.ndarray,
    thickness: float,
    alpha_q: float,
    k_max: float,
    size: int,
    voltage: float,
    tilts: np.ndarray,
) -> np.ndarray:
    """Bloch-wave disk images per grain: (G, S, size, size), S = direct beam + spots.

    Each grain's crystal is built with its own in-plane strain
    (``grain_strain[:, :3]``: exx, eyy, exy) so intensities change with
    strain; textures are resampled onto ``size x size`` pixels spanning the
    disk diameter ``2 * alpha_q`` (A^-1). ``g_hkl`` (S, 3) are the Miller
    indices of the disks (a disk py4DSTEM does not return stays zero),
    ``thickness`` is in A, ``k_max`` in A^-1, ``voltage`` in V. ``tilts``
    (G, 2) are per-grain beam tilts in radians (a crystal is never exactly on
    zone axis; a tilt breaks the disks' symmetry and shifts their apparent
    centres).
    """
    from scipy.ndimage import map_coordinates

    G = grain_strain.shape[0]
    S = g_hkl.shape[0]
    out = np.zeros((G, S, size, size))
    # tilt sampling: about 9 tilts across the disk diameter
    px = 2.0 * alpha_q / 8.0
    for gi in range(G):
        strain = tuple(grain_strain[gi, :3])
        lac = _bloch_disks(
            material, strain, thickness, alpha_q, k_max, voltage, tilts[gi], px
        )
        for si, hkl in enumerate(g_hkl):
            disk = lac.get(tuple(int(v) for v in hkl))
            if disk is None:
                continue
            n = disk.shape[0]
            # generate_CBED fills only tilts inside the convergence disk: extend
            # the edge values outward so interpolation at the rim sees no zeros
            disk = _extend_disk(np.asarray(disk, float), alpha_q / px)
            # texture pixel j spans [-alpha, alpha] -> source pixel n//2 + x/px
            x = np.linspace(-alpha_q, alpha_q, size) / px + n // 2
            xx, yy = np.meshgrid(x, x, indexing="ij")
            out[gi, si] = map_coordinates(disk, [xx, yy], order=1, mode="nearest")
    return out


# ------------------------------------------------------------------- detector
def descan_origins(
    scan_shape: tuple[int, int], pattern_shape: tuple[int, int], descan: float
) -> tuple[np.ndarray, np.ndarray]:
    """Direct-beam origin ``(qx0, qy0)`` per position, each (Rx, Ry), detector pixels.

    Near the detector centre (offset by a fraction of a pixel so no spot sits
    on a pixel centre), drifting across the scan as a plane of amplitude
    ``descan`` pixels (as py4DSTEM's origin fit models it).
    """
    Rx, Ry = scan_shape
    Qx, Qy = pattern_shape
    centre = np.array([Qx / 2.0 + 0.31, Qy / 2.0 - 0.17])
    u, v = np.meshgrid(
        np.linspace(-0.5, 0.5, Rx), np.linspace(-0.5, 0.5, Ry), indexing="ij"
    )
    qx0 = centre[0] + descan * (0.8 * u + 0.35 * v)
    qy0 = centre[1] + descan * (-0.45 * u + 0.7 * v)
    return qx0, qy0


@dataclass(frozen=True)
class Detector:
    """A simulated detector: its geometry and the disk size it records.

    Attributes
    ----------
    pattern_shape : (int, int)
        ``(Qx, Qy)``, pixels.
    q_pixel_size : float
        A^-1 per pixel.
    disk_radius, edge_width : float
        Disk (convergence) radius and Gaussian edge width, pixels.
    ellipse : (float, float, float) or None
        py4DSTEM's ellipse ``(a, b, theta)`` (pixels, pixels, radians).
    qr_rotation : float
        Q/R rotation, degrees.
    """

    pattern_shape: tuple[int, int]
    q_pixel_size: float
    disk_radius: float
    edge_width: float
    ellipse: tuple[float, float, float] | None = None
    qr_rotation: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        """Detector matrix ``C`` (pixel offsets -> calibrated A^-1)."""
        return detector_matrix(
            self.q_pixel_size, self.ellipse, math.radians(self.qr_rotation)
        )

    @property
    def radius_q(self) -> float:
        """Disk radius, A^-1."""
        return self.disk_radius * self.q_pixel_size

    @property
    def edge_q(self) -> float:
        """Disk edge width, A^-1."""
        return self.edge_width * self.q_pixel_size

    def render(
        self,
        A: np.ndarray,
        origins: np.ndarray,
        g: np.ndarray,
        intensity: np.ndarray,
        textures=None,
        texture_index=None,
        rotation=None,
    ) -> np.ndarray:
        """Patterns (N, Qx, Qy) float32 of N positions, rendered in batches.

        Arguments as :func:`render_patterns` (``A`` (N, 2, 2), ``origins``
        (N, 2) pixels, ``g`` (S, 2) A^-1 with the direct beam); batches keep
        the (batch, S, window) work arrays near 100 MB.
        """
        C = self.matrix
        radius, edge = self.radius_q, self.edge_q
        n = A.shape[0]
        per_pos = g.shape[0] * (2 * _window_half(C, radius, edge) + 1) ** 2
        batch = max(1, int(_BATCH_ELEMENTS // per_pos))
        data = np.empty((n, *self.pattern_shape), dtype=np.float32)
        for start in range(0, n, batch):
            sl = slice(start, start + batch)
            data[sl] = render_patterns(
                A[sl],
                origins[sl],
                g,
                intensity,
                C,
                self.pattern_shape,
                radius,
                edge,
                textures=textures,
                texture_index=None if texture_index is None else texture_index[sl],
                rotation=None if rotation is None else rotation[sl],
            )
        return data

    def calibrate(self, datacube, origin: tuple, r_pixel_size: float) -> None:
        """Write this detector into ``datacube.calibration``.

        ``origin`` is ``(qx0, qy0)`` per position (pixels); ``r_pixel_size``
        the scan step in nm. The ellipse and Q/R rotation (no flip) are
        written only where used.
        """
        qx0, qy0 = origin
        cal = datacube.calibration
        cal.set_Q_pixel_size(self.q_pixel_size)
        cal.set_Q_pixel_units("A^-1")
        cal.set_R_pixel_size(r_pixel_size)
        cal.set_R_pixel_units("nm")
        cal.set_origin((qx0.astype(np.float64), qy0.astype(np.float64)))
        if self.ellipse is not None:
            cal.set_ellipse(self.ellipse)
        if self.qr_rotation != 0.0:
            cal.set_QR_rotation_degrees(self.qr_rotation)
            cal.set_QR_flip(False)
        cal.set_convergence_semiangle_pixels(self.disk_radius)


def copy_calibration(src, dst) -> None:
    """Copy the detector calibration of DataCube ``src`` into DataCube ``dst``.

    Pixel sizes and units, origin, ellipse and Q/R rotation (radians) and flip
    where set, convergence semiangle.
    """
    s, d = src.calibration, dst.calibration
    d.set_Q_pixel_size(s.get_Q_pixel_size())
    d.set_Q_pixel_units(s.get_Q_pixel_units())
    d.set_R_pixel_size(s.get_R_pixel_size())
    d.set_R_pixel_units(s.get_R_pixel_units())
    d.set_origin(s.get_origin())
    if s.get_ellipse() is not None:
        d.set_ellipse(s.get_ellipse())
    if s.get_QR_rotation() is not None:
        d.set_QR_rotation(s.get_QR_rotation())
        d.set_QR_flip(s.get_QR_flip())
    d.set_convergence_semiangle_pixels(s.get_convergence_semiangle_pixels())
