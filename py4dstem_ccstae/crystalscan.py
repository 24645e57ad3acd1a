"""One simulated polycrystal scan: :func:`polycrystal`'s options, disks and truth.

The assembly stage of the simulator, documented (physics, detector model,
ground truth) in :mod:`py4dstem_ccstae.simulate`, which re-exports
:func:`polycrystal`: the options checked once (defaults resolved), the
microstructure drawn (:mod:`~py4dstem_ccstae.microstructure`), the spots and,
in the dynamical mode, Bloch-wave textures of the material
(:mod:`~py4dstem_ccstae.materials`) rendered on the detector
(:mod:`~py4dstem_ccstae.disks`), the DataCube calibrated, and the truth
RealSlice with its ``simulation`` metadata.

Random draws, in order, from ``numpy.random.default_rng(seed)``: grain seeds,
grain strains, grain rotations, then (dynamical mode) beam tilts.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np

from ._validation import check_number, check_seed, check_shape2
from .affine import STRAIN_KEYS, LatticeTransform
from .disks import TEXTURE_SIZE, Detector, descan_origins, dynamical_textures, random_tilts
from .materials import MATERIALS, check_material, first_order_spacing, material_spots
from .microstructure import FIELDS, check_rotation_range, microstructure

__all__ = ["TRUTH_SLICES", "check_shapes", "polycrystal", "truth_slice"]

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


# ---------------------------------------------------------------------- options
def check_shapes(scan_shape, pattern_shape) -> tuple[tuple[int, int], tuple[int, int]]:
    """Scan ``(Rx, Ry)`` (each >= 2) and detector ``(Qx, Qy)`` (each in [32, 512])."""
    return (
        check_shape2(scan_shape, "scan_shape", 2, 4096),
        check_shape2(pattern_shape, "pattern_shape", 32, 512),
    )


@dataclass(frozen=True)
class _Setup:
    """The checked parameters of :func:`polycrystal` (as its docs), in metadata order.

    ``symmetry`` is the material's rotation order, ``q_pixel_size`` and
    ``disk_radius`` are resolved from their defaults, ``first_order_spacing``
    is the shortest reflection (A^-1) and ``rotation`` the per-grain rotation
    interval in radians (the one field not in the metadata).
    """

    material: str
    symmetry: int
    scan_shape: tuple[int, int]
    pattern_shape: tuple[int, int]
    num_grains: int
    strain_range: float
    rotation_range: float | str
    field: str
    field_amplitude: float
    q_pixel_size: float
    disk_radius: float
    edge_width: float
    direct_beam_fraction: float
    dynamical: bool
    thickness: float
    tilt: float
    voltage: float
    descan: float
    ellipticity: float
    ellipse_angle: float
    qr_rotation: float
    r_pixel_size: float
    reference_position: tuple[float, float]
    seed: int
    first_order_spacing: float
    rotation: tuple[float, float]

    def metadata(self, grain_table: np.ndarray) -> dict:
        """The ``simulation`` metadata: every parameter and the per-grain table."""
        params = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "rotation"
        }
        params["rotation_range"] = str(self.rotation_range)
        params["reference_position"] = list(self.reference_position)
        params["grain_table"] = grain_table
        return params

    def detector(self) -> Detector:
        """The detector: pixel size, disk size, ellipse (axes from the first order), Q/R."""
        ellipse = None
        if self.ellipticity > 0:
            a_ell = self.first_order_spacing / self.q_pixel_size
            ellipse = (a_ell, a_ell * (1.0 - self.ellipticity), self.ellipse_angle)
        return Detector(
            self.pattern_shape,
            self.q_pixel_size,
            self.disk_radius,
            self.edge_width,
            ellipse,
            self.qr_rotation,
        )


def _check_num_grains(num_grains, scan_shape) -> int:
    """Require an int in ``[1, Rx * Ry]``."""
    if isinstance(num_grains, bool) or not isinstance(num_grains, numbers.Integral):
        raise TypeError(f"num_grains must be an int, got {type(num_grains).__name__}")
    if not 1 <= num_grains <= scan_shape[0] * scan_shape[1]:
        raise ValueError(
            f"num_grains must be in [1, Rx*Ry={scan_shape[0] * scan_shape[1]}], "
            f"got {num_grains}"
        )
    return num_grains


def _check_sampling(material, pattern_shape, q_pixel_size, disk_radius):
    """Disk radius (pixels), pixel size (A^-1) and first-order spacing (A^-1).

    Defaults: disk radius ``min(pattern_shape) / 32``; the first-order
    reflection ``min(pattern_shape) / 6.5`` pixels from the centre. First-order
    disks must lie at least 1.1 disk diameters apart.
    """
    nmin = min(pattern_shape)
    if disk_radius is None:
        disk_radius = nmin / 32.0
    disk_radius = check_number(disk_radius, "disk_radius", low=0.5, high=nmin / 4)
    g1 = first_order_spacing(material)
    if q_pixel_size is None:
        q_pixel_size = g1 / (nmin / 6.5)
    q_pixel_size = check_number(q_pixel_size, "q_pixel_size", low=0.0, low_open=True)
    if g1 / q_pixel_size < 2.2 * disk_radius:
        raise ValueError(
            f"q_pixel_size={q_pixel_size:.4g} A^-1 puts first-order disks "
            f"{g1 / q_pixel_size:.1f} px apart, less than a disk diameter "
            f"({2 * disk_radius:.1f} px): lower q_pixel_size or disk_radius"
        )
    return disk_radius, q_pixel_size, g1


def _check_options(scan_shape, pattern_shape, *, material, num_grains, **o) -> _Setup:
    """Check :func:`polycrystal`'s arguments (named as there) into a :class:`_Setup`."""
    scan_shape, pattern_shape = check_shapes(scan_shape, pattern_shape)
    symmetry = MATERIALS[check_material(material)][1]
    num_grains = _check_num_grains(num_grains, scan_shape)
    strain_range = check_number(o["strain_range"], "strain_range", low=0.0, high=0.1)
    rotation = check_rotation_range(o["rotation_range"], symmetry)
    if o["field"] not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {o['field']!r}")
    num = {
        "field_amplitude": dict(low=0.0, high=0.2),
        "edge_width": dict(low=0.0, high=10.0, low_open=True),
        "direct_beam_fraction": dict(low=0.0, high=0.99, low_open=True),
        "thickness": dict(low=1.0, high=2000.0),
        "tilt": dict(low=0.0, high=50.0),
        "voltage": dict(low=1e3, high=2e6),
        "descan": dict(low=0.0, high=min(pattern_shape) / 4),
        "ellipticity": dict(low=0.0, high=0.2),
        "ellipse_angle": dict(),
        "qr_rotation": dict(low=-360.0, high=360.0),
        "r_pixel_size": dict(low=0.0, low_open=True),
    }
    checked = {name: check_number(o[name], name, **bounds) for name, bounds in num.items()}
    ref = o["reference_position"]
    if not isinstance(ref, (tuple, list)) or len(ref) != 2:
        raise TypeError(f"reference_position must be a pair of fractions, got {ref!r}")
    ref = tuple(check_number(v, "reference_position", low=0.0, high=1.0) for v in ref)
    seed = check_seed(o["seed"])
    disk_radius, q_pixel_size, g1 = _check_sampling(
        material, pattern_shape, o["q_pixel_size"], o["disk_radius"]
    )
    return _Setup(
        material=material,
        symmetry=symmetry,
        scan_shape=scan_shape,
        pattern_shape=pattern_shape,
        num_grains=num_grains,
        strain_range=strain_range,
        rotation_range=o["rotation_range"],
        field=o["field"],
        q_pixel_size=q_pixel_size,
        disk_radius=disk_radius,
        dynamical=o["dynamical"],
        reference_position=ref,
        seed=seed,
        first_order_spacing=g1,
        rotation=rotation,
        **checked,
    )


# ------------------------------------------------------------------- one scan
def _spot_table(material: str, detector: Detector, direct_beam_fraction: float):
    """Disks of a scan: ``g`` (S, 2) A^-1, ``hkl`` (S, 3), intensities (S,), ``k_max``.

    Every spot that can land on the detector strained by up to 10 % (``k_max``,
    A^-1), the direct beam first at ``(0, 0)``; the direct beam carries
    ``direct_beam_fraction`` of the intensity, the spots the rest in
    proportion to their kinematic intensities.
    """
    C = detector.matrix
    Qx, Qy = detector.pattern_shape
    k_max = float(np.linalg.svd(C, compute_uv=False).max()) * math.hypot(Qx, Qy) / 2 * 1.1
    spots = material_spots(material, k_max=k_max)
    g = np.vstack([[0.0, 0.0], spots["g"]])
    hkl = np.vstack([[0, 0, 0], spots["hkl"]])
    inten = spots["intensity"]
    inten = np.concatenate(
        [[direct_beam_fraction], inten / inten.sum() * (1.0 - direct_beam_fraction)]
    )
    return g, hkl, inten, k_max


def _render_scan(s: _Setup, micro, truth_T, detector: Detector, origin, rng) -> np.ndarray:
    """Patterns (Rx, Ry, Qx, Qy) float32 of the scan; Bloch-wave disks if ``s.dynamical``.

    ``origin`` is ``(qx0, qy0)`` per position (pixels); ``rng`` draws the
    per-grain beam tilts of the dynamical mode.
    """
    A_all = truth_T.params.reshape(-1, 2, 2)
    _, phi_all = truth_T.polar()
    g, hkl, inten, k_max = _spot_table(s.material, detector, s.direct_beam_fraction)
    textures = tex_index = None
    if s.dynamical:
        tilts = random_tilts(rng, s.num_grains, s.tilt)
        textures = dynamical_textures(
            s.material,
            micro.grain_strain,
            hkl,
            s.thickness,
            detector.radius_q,
            k_max,
            TEXTURE_SIZE,
            s.voltage,
            tilts,
        )
        tex_index = micro.grain.ravel()
    qx0, qy0 = origin
    data = detector.render(
        A_all,
        np.stack([qx0.ravel(), qy0.ravel()], -1),
        g,
        inten,
        textures=textures,
        texture_index=tex_index,
        rotation=phi_all.reshape(-1),
    )
    return data.reshape(*s.scan_shape, *s.pattern_shape)


def truth_slice(slices: dict, labels: tuple, params: dict):
    """The ``truth`` RealSlice: ``slices[label]`` (Rx, Ry) in ``labels`` order.

    ``params`` becomes its metadata ``simulation``.
    """
    from emdfile import Metadata
    from py4DSTEM import RealSlice

    truth = RealSlice(
        data=np.stack([slices[k] for k in labels]), name="truth", slicelabels=list(labels)
    )
    truth.metadata = Metadata(name="simulation", data=params)
    return truth


def _polycrystal_slices(truth_T: LatticeTransform, grain: np.ndarray) -> dict:
    """The :data:`TRUTH_SLICES` of one polycrystal (defined in :mod:`.simulate`)."""
    strain = truth_T.strain()
    beta = truth_T.beta
    slices = {k: strain[k] for k in STRAIN_KEYS}
    slices["mask"] = np.ones(grain.shape)
    slices["grain"] = grain.astype(np.float64)
    slices["reference"] = (grain == 0).astype(np.float64)
    for i in range(2):
        for j in range(2):
            slices[f"beta_{i}{j}"] = beta[..., i, j]
    return slices


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
        Slices :data:`TRUTH_SLICES` (see :mod:`~py4dstem_ccstae.simulate`); metadata
        ``simulation`` holds every parameter and the per-grain table.
    """
    from py4DSTEM import DataCube

    s = _check_options(
        scan_shape,
        pattern_shape,
        material=material,
        num_grains=num_grains,
        strain_range=strain_range,
        rotation_range=rotation_range,
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
        reference_position=reference_position,
        seed=seed,
    )
    rng = np.random.default_rng(s.seed)
    micro = microstructure(
        s.scan_shape,
        s.num_grains,
        s.strain_range,
        s.rotation,
        s.field,
        s.field_amplitude,
        rng,
        s.reference_position,
    )
    truth_T = LatticeTransform.from_strain(**micro.strain)
    detector = s.detector()
    origin = descan_origins(s.scan_shape, s.pattern_shape, s.descan)
    data = _render_scan(s, micro, truth_T, detector, origin, rng)
    datacube = DataCube(data=data, name="simulated_polycrystal")
    detector.calibrate(datacube, origin, s.r_pixel_size)
    slices = _polycrystal_slices(truth_T, micro.grain)
    truth = truth_slice(slices, TRUTH_SLICES, s.metadata(micro.grain_strain))
    return datacube, truth
