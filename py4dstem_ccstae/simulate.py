"""Ground-truth 4D-STEM simulator: strained polycrystals with exact labels.

No public 4D-STEM data can be downloaded, so every test and benchmark makes its
data here. :func:`polycrystal` returns a calibrated ``py4DSTEM.DataCube`` and a
``py4DSTEM.RealSlice`` holding the true strain in py4DSTEM's conventions.

Physics
-------
* Crystal structures (Si diamond-cubic [001], 2H-MoS2 / 2H-WS2 [001]) are
  built from positions, atomic numbers and cell with py4DSTEM's ``Crystal``;
  spot positions and kinematic intensities come from its structure factors.
* Each scan position has a lattice transform ``A`` (see
  :mod:`py4dstem_ccstae.affine`): spots are rendered at ``g' = A @ g`` (i.e.
  ``F^-T g`` for the real-space deformation gradient ``F``) with exact
  sub-pixel positions, as finite-convergence disks with a soft (error-function)
  edge. Disk size is set by the probe and does not scale with strain.
* ``dynamical=True`` replaces uniform disks by Bloch-wave convergent-beam disks
  (py4DSTEM's ``generate_CBED`` with ``LACBED=True``) computed per grain for the
  grain's strained cell and the chosen ``thickness``, so intensity varies across
  each disk and with thickness and strain.

Detector model
--------------
Rendering works in the *calibrated* frame: a detector pixel ``p = (qx, qy)``
(row, column) maps to calibrated reciprocal coordinates ``C @ (p - origin)``,
with ``C = Rot(QR) @ Flip @ (q_pixel_size * T_ellipse)`` composed exactly as
py4DSTEM's ``BraggVectors.cal`` applies centre -> ellipse -> pixel size ->
Q/R rotation. Descan (a per-position origin), an elliptical distortion and a
Q/R rotation are written into the DataCube's calibration, so py4DSTEM's own
calibrated Bragg vectors recover the undistorted lattice.

Ground truth
------------
``truth`` slices ``e_xx, e_yy, e_xy, theta`` are the strain of
:meth:`LatticeTransform.strain` (py4DSTEM's formulas with the rotation removed
exactly; fractions, tensor shear, radians, py4DSTEM's sign of ``theta``),
relative to the reference grain, in scan coordinates; ``mask`` is 1 everywhere,
``grain`` holds grain indices (0 is the zero-strain, zero-rotation reference
grain) and ``reference`` is 1 on the reference grain (use
``truth.get_slice("reference").data.astype(bool)`` as the reference mask).
``beta_00 .. beta_11`` hold the exact lattice matrix ``A`` (py4DSTEM's
``beta``); ``LatticeTransform(beta).strain_linear()`` is what an error-free
py4DSTEM ``get_strain`` reports, including its small-rotation approximation.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.special import erfc

from ._validation import check_number, check_seed, check_shape2
from .affine import STRAIN_KEYS, LatticeTransform
from .calibration import detector_matrix
from .noise import add_background_noise, add_poisson_noise

__all__ = [
    "polycrystal",
    "phase_mixture",
    "add_background_noise",
    "add_poisson_noise",
    "MATERIALS",
    "material_spots",
    "detector_matrix",
    "truth_transform",
    "TRUTH_SLICES",
    "MIXTURE_TRUTH_SLICES",
]

#: Materials known to the simulator: name -> (description, in-plane symmetry order).
MATERIALS = {
    "Si": ("diamond-cubic silicon, a = 5.431 A, [001] zone", 4),
    "MoS2": ("2H-MoS2, a = 3.16 A, c = 12.29 A, [001] zone", 6),
    "WS2": ("2H-WS2, a = 3.153 A, c = 12.32 A, [001] zone", 6),
    "MoSe2": ("2H-MoSe2, a = 3.288 A, c = 12.93 A, [001] zone", 6),
}

_FIELDS = ("grains", "gradient", "bend")

#: Slices of the ground-truth RealSlice returned by :func:`polycrystal`.
TRUTH_SLICES = (
    "e_xx",
    "e_yy",
    "e_xy",
    "theta",
    "mask",
    "grain",
    "reference",
    "beta_00",
    "beta_01",
    "beta_10",
    "beta_11",
)

#: Slices of the ground-truth RealSlice returned by :func:`phase_mixture`.
MIXTURE_TRUTH_SLICES = TRUTH_SLICES + ("phase",)

#: Name of the empty phase of :func:`phase_mixture` (direct beam only).
VACUUM = "vacuum"


# --------------------------------------------------------------------- crystals
def _crystal(material: str, strain=None):
    """py4DSTEM ``Crystal`` for ``material``; optional in-plane (exx, eyy, exy) strain."""
    from py4DSTEM.process.diffraction import Crystal

    if material == "Si":
        fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        positions = np.vstack([fcc, fcc + 0.25])
        numbers_ = np.full(8, 14)
        lat = np.diag([5.431, 5.431, 5.431])
    elif material in ("MoS2", "WS2", "MoSe2"):
        # a, c (A), metal and chalcogen atomic numbers
        a, c, zm, zx = {
            "MoS2": (3.16, 12.29, 42, 16),
            "WS2": (3.153, 12.32, 74, 16),
            "MoSe2": (3.288, 12.93, 42, 34),
        }[material]
        z = 0.621
        positions = np.array(
            [
                [1 / 3, 2 / 3, 0.25],
                [2 / 3, 1 / 3, 0.75],
                [1 / 3, 2 / 3, z],
                [2 / 3, 1 / 3, z + 0.5],
                [2 / 3, 1 / 3, 1 - z],
                [1 / 3, 2 / 3, 0.5 - z],
            ]
        )
        numbers_ = np.array([zm, zm, zx, zx, zx, zx])
        lat = np.array([[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, c]])
    else:  # pragma: no cover - validated by callers
        raise ValueError(f"material must be one of {sorted(MATERIALS)}, got {material!r}")
    if strain is not None:
        exx, eyy, exy = strain
        V = np.array([[1 + exx, exy, 0], [exy, 1 + eyy, 0], [0, 0, 1]])
        lat = lat @ V.T  # lattice vectors are rows: r' = V r
    return Crystal(positions, numbers_, lat)


def material_spots(material: str, k_max: float) -> dict:
    """Kinematic Bragg spots of the unstrained [001] zone up to ``k_max``.

    Parameters
    ----------
    material : str
        One of :data:`MATERIALS`.
    k_max : float
        Largest scattering vector, A^-1.

    Returns
    -------
    dict
        ``g`` (n, 2) spot positions ``(qx, qy)`` in A^-1 (``qx`` along a*),
        ``intensity`` (n,) kinematic intensities normalised to a maximum of 1,
        ``hkl`` (n, 3) Miller indices. The direct beam is excluded.
    """
    if material not in MATERIALS:
        raise ValueError(f"material must be one of {sorted(MATERIALS)}, got {material!r}")
    cr = _crystal(material)
    cr.setup_diffraction(300e3)
    cr.calculate_structure_factors(k_max=k_max * 1.05, tol_structure_factor=1e-4)
    pl = cr.generate_diffraction_pattern(
        zone_axis_lattice=[0, 0, 1],
        sigma_excitation_error=0.02,
        tol_intensity=1e-5,
        k_max=k_max,
    )
    d = pl.data
    g = np.stack([d["qx"], d["qy"]], -1).astype(np.float64)
    hkl = np.stack([d["h"], d["k"], d["l"]], -1).astype(int)
    keep = np.hypot(g[:, 0], g[:, 1]) > 1e-9
    g, hkl, inten = g[keep], hkl[keep], np.asarray(d["intensity"], float)[keep]
    return {"g": g, "intensity": inten / inten.max(), "hkl": hkl}


# ---------------------------------------------------------------- microstructure
@dataclass
class _Microstructure:
    grain: np.ndarray  # (Rx, Ry) int
    strain: dict  # e_xx, e_yy, e_xy, theta maps (Rx, Ry)
    grain_strain: np.ndarray  # (G, 4) per-grain e_xx, e_yy, e_xy, theta


def _microstructure(
    scan_shape,
    num_grains,
    strain_range,
    rotation_range,
    field,
    field_amplitude,
    rng,
    reference_position=(0.18, 0.18),
) -> _Microstructure:
    Rx, Ry = scan_shape
    # grain 0 (reference) seeded near a corner so it is never squeezed out
    seeds = rng.uniform(0, 1, size=(num_grains, 2)) * np.array([Rx, Ry])
    seeds[0] = (reference_position[0] * Rx, reference_position[1] * Ry)
    xx, yy = np.meshgrid(np.arange(Rx) + 0.5, np.arange(Ry) + 0.5, indexing="ij")
    d2 = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    grain = np.argmin(d2, axis=-1)

    gs = np.zeros((num_grains, 4))
    gs[1:, :3] = rng.uniform(-strain_range, strain_range, size=(num_grains - 1, 3))
    gs[1:, 3] = rng.uniform(rotation_range[0], rotation_range[1], size=num_grains - 1)
    strain = {k: gs[grain, i].copy() for i, k in enumerate(STRAIN_KEYS)}

    ref = grain == 0
    u = (xx / Rx) - 0.5
    v = (yy / Ry) - 0.5
    if field == "gradient":
        # linear strain gradient across the scan, zero at the reference grain's seed
        u0, v0 = seeds[0] / np.array([Rx, Ry]) - 0.5
        strain["e_xx"] += np.where(ref, 0.0, field_amplitude * (u - u0))
        strain["e_yy"] += np.where(ref, 0.0, field_amplitude * (v - v0))
    elif field == "bend":
        # a bend: rotation varying smoothly across the scan
        strain["theta"] += np.where(ref, 0.0, field_amplitude * np.sin(np.pi * (u + v)))
    return _Microstructure(grain=grain, strain=strain, grain_strain=gs)


# -------------------------------------------------------------------- rendering
def _disk_profile(rho: np.ndarray, radius: float, edge: float) -> np.ndarray:
    """Soft-edged disk: 1 inside, 0 outside, error-function edge of width ``edge``."""
    return 0.5 * erfc((rho - radius) / (math.sqrt(2.0) * edge))


def _render(
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
    sv = np.linalg.svd(C, compute_uv=False)
    half = int(math.ceil((radius + 3.0 * edge) / sv.min())) + 1
    o = np.arange(-half, half + 1)
    offs = np.stack(np.meshgrid(o, o, indexing="ij"), -1).reshape(-1, 2)  # (W, 2)
    centre = np.rint(pc).astype(np.int64)
    pix = centre[:, :, None, :] + offs[None, None]  # (B, S, W, 2)
    inside = (
        (pix[..., 0] >= 0) & (pix[..., 0] < Qx) & (pix[..., 1] >= 0) & (pix[..., 1] < Qy)
    )
    d = (pix - origins[:, None, None, :]) @ C.T - gq[:, :, None, :]  # calibrated offset
    rho = np.sqrt((d**2).sum(-1))
    val = _disk_profile(rho, radius, edge)
    if textures is None:
        val *= intensity[None, :, None]
    else:
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
        si = np.arange(g.shape[0])[None, :, None]
        t00 = tex[bi, si, ix, iy]
        t10 = tex[bi, si, ix + 1, iy]
        t01 = tex[bi, si, ix, iy + 1]
        t11 = tex[bi, si, ix + 1, iy + 1]
        val *= (
            t00 * (1 - wx) * (1 - wy)
            + t10 * wx * (1 - wy)
            + t01 * (1 - wx) * wy
            + t11 * wx * wy
        )
    flat = (np.arange(B)[:, None, None] * Qx + pix[..., 0]) * Qy + pix[..., 1]
    out = np.bincount(flat[inside], weights=val[inside], minlength=B * Qx * Qy)
    return out.reshape(B, Qx, Qy)


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


def _dynamical_textures(
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

    Each grain's crystal is built with its own in-plane strain so intensities
    change with strain; textures are resampled onto ``size x size`` pixels
    spanning the disk diameter ``2 * alpha_q`` (A^-1). ``tilts`` (G, 2) are
    per-grain beam tilts in radians (a crystal is never exactly on zone axis;
    a tilt breaks the disks' symmetry and shifts their apparent centres).
    """
    from scipy.ndimage import map_coordinates

    G = grain_strain.shape[0]
    S = g_hkl.shape[0]
    out = np.zeros((G, S, size, size))
    # tilt sampling: about 9 tilts across the disk diameter
    px = 2.0 * alpha_q / 8.0
    for gi in range(G):
        cr = _crystal(material, strain=tuple(grain_strain[gi, :3]))
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
        lac = cr.generate_CBED(
            beams,
            thickness=thickness,
            alpha_mrad=alpha_mrad,
            pixel_size_inv_A=px,
            zone_axis_cartesian=[tilts[gi, 0], tilts[gi, 1], 1.0],
            LACBED=True,
            progress_bar=False,
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


# ------------------------------------------------------------------------ main
def _check_rotation_range(rotation_range, symmetry: int) -> tuple[float, float]:
    if isinstance(rotation_range, str):
        if rotation_range != "full":
            raise ValueError(
                "rotation_range must be a number of degrees or 'full', "
                f"got {rotation_range!r}"
            )
        half = math.pi / symmetry
        return (-half, half)
    r = check_number(rotation_range, "rotation_range", low=0.0, high=180.0)
    return (-math.radians(r), math.radians(r))


def polycrystal(
    scan_shape: tuple[int, int] = (64, 64),
    pattern_shape: tuple[int, int] = (128, 128),
    *,
    material: str = "Si",
    num_grains: int = 12,
    strain_range: float = 0.02,
    rotation_range: float | str = 5.0,
    field: str = "grains",
    field_amplitude: float = 0.01,
    q_pixel_size: float | None = None,
    disk_radius: float | None = None,
    edge_width: float = 0.6,
    direct_beam_fraction: float = 0.5,
    dynamical: bool = False,
    thickness: float = 100.0,
    tilt: float = 2.0,
    voltage: float = 300e3,
    descan: float = 0.0,
    ellipticity: float = 0.0,
    ellipse_angle: float = 0.4,
    qr_rotation: float = 0.0,
    r_pixel_size: float = 1.0,
    reference_position: tuple[float, float] = (0.18, 0.18),
    seed: int = 0,
):
    """Simulate a strained polycrystal 4D-STEM data set with ground truth.

    Parameters
    ----------
    scan_shape : (int, int)
        Real-space scan ``(Rx, Ry)``, each >= 2.
    pattern_shape : (int, int)
        Detector ``(Qx, Qy)`` in pixels, each in [32, 512].
    material : str
        ``"Si"`` (cubic [001]), ``"MoS2"`` or ``"WS2"`` (hexagonal [001]).
    num_grains : int
        Number of Voronoi grains, >= 1; grain 0 is the reference.
    strain_range : float
        Per-grain ``e_xx, e_yy, e_xy`` uniform in ``[-strain_range, strain_range]``
        (fractions), in [0, 0.1].
    rotation_range : float or "full"
        Per-grain rotation uniform in ``[-r, r]`` degrees, or ``"full"`` for
        the whole symmetry-distinct range ``[-180/n, 180/n)`` degrees (n = 4
        for Si, 6 for the hexagonal materials).
    field : {"grains", "gradient", "bend"}
        ``"grains"``: piecewise constant. ``"gradient"``: adds a linear
        gradient of ``e_xx`` along Rx and ``e_yy`` along Ry (total change
        ``field_amplitude`` across the scan). ``"bend"``: adds a smoothly
        varying rotation of amplitude ``field_amplitude`` radians. The
        reference grain stays unstrained and unrotated.
    field_amplitude : float
        Amplitude of the smooth field.
    q_pixel_size : float, optional
        Reciprocal sampling in A^-1 per pixel. Default: the first-order
        reflection sits at ``min(pattern_shape) / 6.5`` pixels.
    disk_radius : float, optional
        Disk (convergence) radius in detector pixels. Default
        ``min(pattern_shape) / 32``.
    edge_width : float
        Gaussian width of the disk edge, pixels.
    direct_beam_fraction : float
        Fraction of each pattern's intensity in the direct beam (kinematic
        mode), in (0, 1).
    dynamical : bool
        Bloch-wave disks (py4DSTEM ``generate_CBED``, LACBED) per grain at
        ``thickness`` instead of uniform kinematic disks.
    thickness : float
        Crystal thickness in A (dynamical mode).
    tilt : float
        Largest per-grain beam tilt off the zone axis in mrad (dynamical
        mode); each grain draws a random tilt of up to this magnitude.
    voltage : float
        Accelerating voltage in V (dynamical mode).
    descan : float
        Amplitude in pixels of the origin drift across the scan (a plane, as
        py4DSTEM's origin fit models it). 0: fixed origin.
    ellipticity : float
        Elliptical distortion ``1 - b/a`` in [0, 0.2); written to the
        calibration as py4DSTEM's ``(a, b, theta)``.
    ellipse_angle : float
        Ellipse angle ``theta`` in radians (py4DSTEM convention).
    qr_rotation : float
        Q/R rotation in degrees written to the calibration; the patterns are
        rotated on the detector so that py4DSTEM's calibration undoes it.
    r_pixel_size : float
        Scan step in nm.
    reference_position : (float, float)
        Seed of the reference grain (grain 0) as fractions of ``(Rx, Ry)``,
        each in [0, 1]; the other grains' seeds are random.
    seed : int
        Seed of every random choice.

    Returns
    -------
    datacube : py4DSTEM.DataCube
        float32 ``[Rx, Ry, Qx, Qy]`` with calibration: Q pixel size (A^-1),
        R pixel size (nm), origin per position, and where used the ellipse and
        Q/R rotation.
    truth : py4DSTEM.RealSlice
        Slices :data:`TRUTH_SLICES` (see module docs); metadata
        ``simulation`` holds every parameter and the per-grain table.
    """
    from emdfile import Metadata
    from py4DSTEM import DataCube, RealSlice

    scan_shape = check_shape2(scan_shape, "scan_shape", 2, 4096)
    pattern_shape = check_shape2(pattern_shape, "pattern_shape", 32, 512)
    if material not in MATERIALS:
        raise ValueError(f"material must be one of {sorted(MATERIALS)}, got {material!r}")
    if isinstance(num_grains, bool) or not isinstance(num_grains, numbers.Integral):
        raise TypeError(f"num_grains must be an int, got {type(num_grains).__name__}")
    if not 1 <= num_grains <= scan_shape[0] * scan_shape[1]:
        raise ValueError(
            f"num_grains must be in [1, Rx*Ry={scan_shape[0] * scan_shape[1]}], "
            f"got {num_grains}"
        )
    strain_range = check_number(strain_range, "strain_range", low=0.0, high=0.1)
    symmetry = MATERIALS[material][1]
    rot_lo, rot_hi = _check_rotation_range(rotation_range, symmetry)
    if field not in _FIELDS:
        raise ValueError(f"field must be one of {_FIELDS}, got {field!r}")
    field_amplitude = check_number(field_amplitude, "field_amplitude", low=0.0, high=0.2)
    edge_width = check_number(edge_width, "edge_width", low=0.0, high=10.0, low_open=True)
    direct_beam_fraction = check_number(
        direct_beam_fraction, "direct_beam_fraction", low=0.0, high=0.99, low_open=True
    )
    thickness = check_number(thickness, "thickness", low=1.0, high=2000.0)
    tilt = check_number(tilt, "tilt", low=0.0, high=50.0)
    voltage = check_number(voltage, "voltage", low=1e3, high=2e6)
    descan = check_number(descan, "descan", low=0.0, high=min(pattern_shape) / 4)
    ellipticity = check_number(ellipticity, "ellipticity", low=0.0, high=0.2)
    ellipse_angle = check_number(ellipse_angle, "ellipse_angle")
    qr_rotation = check_number(qr_rotation, "qr_rotation", low=-360.0, high=360.0)
    r_pixel_size = check_number(r_pixel_size, "r_pixel_size", low=0.0, low_open=True)
    if not isinstance(reference_position, (tuple, list)) or len(reference_position) != 2:
        raise TypeError(
            f"reference_position must be a pair of fractions, got {reference_position!r}"
        )
    reference_position = tuple(
        check_number(v, "reference_position", low=0.0, high=1.0) for v in reference_position
    )
    seed = check_seed(seed)
    nmin = min(pattern_shape)
    if disk_radius is None:
        disk_radius = nmin / 32.0
    disk_radius = check_number(disk_radius, "disk_radius", low=0.5, high=nmin / 4)

    # reciprocal sampling from the first-order reflection
    probe = material_spots(material, k_max=1.0)
    g1 = float(np.min(np.hypot(*probe["g"].T)))
    if q_pixel_size is None:
        q_pixel_size = g1 / (nmin / 6.5)
    q_pixel_size = check_number(q_pixel_size, "q_pixel_size", low=0.0, low_open=True)
    if g1 / q_pixel_size < 2.2 * disk_radius:
        raise ValueError(
            f"q_pixel_size={q_pixel_size:.4g} A^-1 puts first-order disks "
            f"{g1 / q_pixel_size:.1f} px apart, less than a disk diameter "
            f"({2 * disk_radius:.1f} px): lower q_pixel_size or disk_radius"
        )

    rng = np.random.default_rng(seed)
    micro = _microstructure(
        scan_shape,
        num_grains,
        strain_range,
        (rot_lo, rot_hi),
        field,
        field_amplitude,
        rng,
        reference_position,
    )
    truth_T = LatticeTransform.from_strain(**micro.strain)
    A_all = truth_T.params.reshape(-1, 2, 2)
    _, phi_all = truth_T.polar()
    phi_all = phi_all.reshape(-1)

    # detector geometry
    Rx, Ry = scan_shape
    Qx, Qy = pattern_shape
    centre = np.array([Qx / 2.0 + 0.31, Qy / 2.0 - 0.17])
    u, v = np.meshgrid(
        np.linspace(-0.5, 0.5, Rx), np.linspace(-0.5, 0.5, Ry), indexing="ij"
    )
    qx0 = centre[0] + descan * (0.8 * u + 0.35 * v)
    qy0 = centre[1] + descan * (-0.45 * u + 0.7 * v)
    origins = np.stack([qx0.ravel(), qy0.ravel()], -1)
    ellipse = None
    if ellipticity > 0:
        a_ell = g1 / q_pixel_size
        ellipse = (a_ell, a_ell * (1.0 - ellipticity), ellipse_angle)
    C = detector_matrix(q_pixel_size, ellipse, math.radians(qr_rotation))

    # spots: everything that can land on the detector, strained by up to 10 %
    k_max = float(np.linalg.svd(C, compute_uv=False).max()) * math.hypot(Qx, Qy) / 2 * 1.1
    spots = material_spots(material, k_max=k_max)
    g = np.vstack([[0.0, 0.0], spots["g"]])
    hkl = np.vstack([[0, 0, 0], spots["hkl"]])
    inten = spots["intensity"]
    inten = np.concatenate(
        [[direct_beam_fraction], inten / inten.sum() * (1.0 - direct_beam_fraction)]
    )
    # the disk of unit intensity integrates to pi r^2 pixels: normalise per pixel
    radius_q = disk_radius * q_pixel_size
    edge_q = edge_width * q_pixel_size

    textures = tex_index = None
    if dynamical:
        tex_size = 33
        ang = rng.uniform(0, 2 * np.pi, num_grains)
        mag = tilt * 1e-3 * np.sqrt(rng.uniform(0, 1, num_grains))
        tilts = np.stack([mag * np.cos(ang), mag * np.sin(ang)], -1)
        textures = _dynamical_textures(
            material,
            micro.grain_strain,
            hkl,
            thickness,
            radius_q,
            k_max,
            tex_size,
            voltage,
            tilts,
        )
        tex_index = micro.grain.ravel()

    data = np.empty((Rx * Ry, Qx, Qy), dtype=np.float32)
    # batch so the (B, S, W) work arrays stay ~100 MB
    half = math.ceil((radius_q + 3 * edge_q) / np.linalg.svd(C, compute_uv=False).min()) + 1
    per_pos = g.shape[0] * (2 * half + 1) ** 2
    batch = max(1, int(4e6 // per_pos))
    for start in range(0, Rx * Ry, batch):
        sl = slice(start, start + batch)
        data[sl] = _render(
            A_all[sl],
            origins[sl],
            g,
            inten,
            C,
            pattern_shape,
            radius_q,
            edge_q,
            textures=textures,
            texture_index=None if tex_index is None else tex_index[sl],
            rotation=phi_all[sl],
        )
    data = data.reshape(Rx, Ry, Qx, Qy)

    datacube = DataCube(data=data, name="simulated_polycrystal")
    cal = datacube.calibration
    cal.set_Q_pixel_size(q_pixel_size)
    cal.set_Q_pixel_units("A^-1")
    cal.set_R_pixel_size(r_pixel_size)
    cal.set_R_pixel_units("nm")
    cal.set_origin((qx0.astype(np.float64), qy0.astype(np.float64)))
    if ellipse is not None:
        cal.set_ellipse(ellipse)
    if qr_rotation != 0.0:
        cal.set_QR_rotation_degrees(qr_rotation)
        cal.set_QR_flip(False)
    cal.set_convergence_semiangle_pixels(disk_radius)

    ref = micro.grain == 0
    s = truth_T.strain()
    beta = truth_T.beta
    truth = RealSlice(
        data=np.stack(
            [s[k] for k in STRAIN_KEYS]
            + [np.ones(scan_shape), micro.grain.astype(np.float64), ref.astype(np.float64)]
            + [beta[..., i, j] for i in range(2) for j in range(2)]
        ),
        name="truth",
        slicelabels=list(TRUTH_SLICES),
    )
    params = dict(
        material=material,
        symmetry=symmetry,
        scan_shape=scan_shape,
        pattern_shape=pattern_shape,
        num_grains=num_grains,
        strain_range=strain_range,
        rotation_range=str(rotation_range),
        field=field,
        field_amplitude=field_amplitude,
        q_pixel_size=q_pixel_size,
        disk_radius=disk_radius,
        edge_width=edge_width,
        direct_beam_fraction=direct_beam_fraction,
        dynamical=dynamical,
        thickness=thickness,
        tilt=tilt,
        voltage=voltage,
        descan=descan,
        ellipticity=ellipticity,
        ellipse_angle=ellipse_angle,
        qr_rotation=qr_rotation,
        r_pixel_size=r_pixel_size,
        reference_position=list(reference_position),
        seed=seed,
        first_order_spacing=g1,
        grain_table=micro.grain_strain,
    )
    truth.metadata = Metadata(name="simulation", data=params)
    return datacube, truth


def phase_mixture(
    scan_shape: tuple[int, int] = (64, 64),
    pattern_shape: tuple[int, int] = (128, 128),
    *,
    materials: tuple[str, str] = ("Si", VACUUM),
    radius: float = 0.3,
    seed: int = 0,
    **options,
):
    """Two phases in one scan: a disk of ``materials[1]`` inside ``materials[0]``.

    The second phase fills a disk centred at ``(0.68 Rx, 0.68 Ry)`` of radius
    ``radius * min(Rx, Ry)``; the first phase fills the rest. A phase is a
    material of :data:`MATERIALS` (a strained polycrystal of its own,
    :func:`polycrystal`) or ``"vacuum"`` (the direct beam alone, carrying a
    whole pattern's intensity). Both phases share the detector: pixel size,
    disk radius, origin (and descan), ellipse and Q/R rotation. Each
    crystalline phase has its own unstrained reference grain, seeded at
    ``(0.18, 0.18)`` of the scan for the first phase and at the disk's
    centre for the second, so both lie in their phase's region.

    Parameters
    ----------
    scan_shape, pattern_shape : (int, int)
        As :func:`polycrystal`.
    materials : (str, str)
        The two phases, each a key of :data:`MATERIALS` or ``"vacuum"``; at
        least one crystalline.
    radius : float
        Radius of the second phase's disk as a fraction of ``min(Rx, Ry)``,
        in (0, 0.32] (the disk stays inside the scan).
    seed : int
        Seed of every random choice (the second phase uses ``seed + 1``).
    **options
        Passed to :func:`polycrystal` for each crystalline phase (e.g.
        ``num_grains``, ``strain_range``, ``rotation_range``, ``dynamical``,
        ``descan``, ``ellipticity``, ``q_pixel_size``); not
        ``material``, ``reference_position`` or ``seed``.

    Returns
    -------
    datacube : py4DSTEM.DataCube
        float32 ``[Rx, Ry, Qx, Qy]``, calibrated as by :func:`polycrystal`.
    truth : py4DSTEM.RealSlice
        Slices :data:`MIXTURE_TRUTH_SLICES`: those of :func:`polycrystal`,
        each phase's strain relative to its own unstrained lattice (0 in
        vacuum), ``mask`` 0 in vacuum, ``grain`` numbered across both phases
        (the second phase's from the first's ``num_grains``; -1 in vacuum),
        ``reference`` 1 on each crystalline phase's reference grain, and
        ``phase`` the index into ``materials`` of every position. Metadata
        ``simulation`` holds ``materials``, ``radius``, ``seed`` and each
        crystalline phase's :func:`polycrystal` parameters as
        ``phase_<k>.<name>``.
    """
    from emdfile import Metadata
    from py4DSTEM import DataCube, RealSlice

    scan_shape = check_shape2(scan_shape, "scan_shape", 2, 4096)
    pattern_shape = check_shape2(pattern_shape, "pattern_shape", 32, 512)
    if (
        not isinstance(materials, (tuple, list))
        or len(materials) != 2
        or any(m not in MATERIALS and m != VACUUM for m in materials)
    ):
        raise ValueError(
            f"materials must be two of {sorted(MATERIALS)} or {VACUUM!r}, got {materials!r}"
        )
    if all(m == VACUUM for m in materials):
        raise ValueError("materials: at least one phase must be a crystal, got two vacuums")
    radius = check_number(radius, "radius", low=0.0, high=0.32, low_open=True)
    seed = check_seed(seed)
    fixed = {"material", "reference_position", "seed"} & set(options)
    if fixed:
        raise TypeError(f"phase_mixture sets {sorted(fixed)} itself; do not pass them")
    Rx, Ry = scan_shape
    xx, yy = np.meshgrid(np.arange(Rx) + 0.5, np.arange(Ry) + 0.5, indexing="ij")
    centre = (0.68, 0.68)
    phase = (
        (xx - centre[0] * Rx) ** 2 + (yy - centre[1] * Ry) ** 2
        <= (radius * min(Rx, Ry)) ** 2
    ).astype(int)
    # one detector for both phases: the second crystal (if any) takes the
    # pixel size and disk radius the first one was rendered with
    rendered = {}
    for k, material in enumerate(materials):
        if material != VACUUM:
            rendered[k] = polycrystal(
                scan_shape,
                pattern_shape,
                material=material,
                reference_position=(0.18, 0.18) if k == 0 else centre,
                seed=seed + k,
                **options,
            )
            params = rendered[k][1].metadata["simulation"]
            options["q_pixel_size"] = params["q_pixel_size"]
            options["disk_radius"] = params["disk_radius"]
    k0 = min(rendered)
    datacube0, truth0 = rendered[k0]
    data = np.array(datacube0.data)
    for k, (dc_k, _) in rendered.items():
        if k != k0:
            data[phase == k] = dc_k.data[phase == k]
    if len(rendered) == 1:  # a vacuum phase: the direct beam alone
        kv = 1 - k0
        params = truth0.metadata["simulation"]
        cal = datacube0.calibration
        qps = float(params["q_pixel_size"])
        ellipse = cal.get_ellipse()
        C = detector_matrix(qps, ellipse, math.radians(float(params["qr_rotation"])))
        ox, oy = cal.get_origin()
        where = phase == kv
        origins = np.stack([np.asarray(ox)[where], np.asarray(oy)[where]], -1)
        n = len(origins)
        data[where] = _render(
            np.tile(np.eye(2), (n, 1, 1)),
            origins,
            np.zeros((1, 2)),
            np.ones(1),
            C,
            pattern_shape,
            float(params["disk_radius"]) * qps,
            float(params["edge_width"]) * qps,
        )
    datacube = DataCube(data=data, name="simulated_phase_mixture")
    # the calibration of the first crystal's DataCube (same detector for both)
    src = datacube0.calibration
    cal = datacube.calibration
    cal.set_Q_pixel_size(src.get_Q_pixel_size())
    cal.set_Q_pixel_units(src.get_Q_pixel_units())
    cal.set_R_pixel_size(src.get_R_pixel_size())
    cal.set_R_pixel_units(src.get_R_pixel_units())
    cal.set_origin(src.get_origin())
    if src.get_ellipse() is not None:
        cal.set_ellipse(src.get_ellipse())
    if src.get_QR_rotation() is not None:
        cal.set_QR_rotation(src.get_QR_rotation())
        cal.set_QR_flip(src.get_QR_flip())
    cal.set_convergence_semiangle_pixels(
        float(truth0.metadata["simulation"]["disk_radius"])
    )

    slices = {}
    for name in TRUTH_SLICES:
        out = np.zeros(scan_shape)
        if name in ("beta_00", "beta_11"):
            out[:] = 1.0  # vacuum: identity
        if name == "grain":
            out[:] = -1.0
        for k, (_, t_k) in rendered.items():
            v = np.asarray(t_k.get_slice(name).data, dtype=np.float64)
            if name == "grain" and k == 1 and 0 in rendered:
                v = v + int(rendered[0][1].metadata["simulation"]["num_grains"])
            if name == "reference":
                v = v * (phase == k)
            out[phase == k] = v[phase == k]
        slices[name] = out
    slices["phase"] = phase.astype(np.float64)
    truth = RealSlice(
        data=np.stack([slices[k] for k in MIXTURE_TRUTH_SLICES]),
        name="truth",
        slicelabels=list(MIXTURE_TRUTH_SLICES),
    )
    meta = {"materials": list(materials), "radius": radius, "seed": seed}
    for k, (_, t_k) in rendered.items():
        sim = t_k.metadata["simulation"]
        meta.update({f"phase_{k}.{key}": sim[key] for key in sim.keys})
    truth.metadata = Metadata(name="simulation", data=meta)
    return datacube, truth


def truth_transform(truth) -> LatticeTransform:
    """The exact per-position :class:`LatticeTransform` stored in ``truth``."""
    beta = np.stack(
        [truth.get_slice(f"beta_{i}{j}").data for i in range(2) for j in range(2)], -1
    )
    return LatticeTransform(beta.reshape(*beta.shape[:-1], 2, 2))
