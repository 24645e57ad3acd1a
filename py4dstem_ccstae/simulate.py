"""Ground-truth 4D-STEM simulator: strained polycrystals with exact labels.

No public 4D-STEM data can be downloaded, so every test and benchmark makes its
data here. :func:`polycrystal` returns a calibrated ``py4DSTEM.DataCube`` and a
``py4DSTEM.RealSlice`` holding the true strain in py4DSTEM's conventions;
:func:`phase_mixture` puts two phases (crystals or vacuum) in one scan.

This module is the simulator's public face; its stages are one module each:
:mod:`~py4dstem_ccstae.materials` (crystal structures, structure factors,
Bragg spots), :mod:`~py4dstem_ccstae.disks` (kinematic and Bloch-wave disks,
the detector model and its calibration),
:mod:`~py4dstem_ccstae.microstructure` (grains, per-grain strain, smooth
fields) and :mod:`~py4dstem_ccstae.crystalscan` (:func:`polycrystal`: options,
the spots and textures of a scan, the truth). Here: :func:`phase_mixture`,
:func:`truth_transform`, and the names re-exported for the tests, benchmarks
and examples.

Physics
-------
* Crystal structures (Si diamond-cubic [001], 2H-MoS2 / 2H-WS2 / 2H-MoSe2
  [001]) are built from positions, atomic numbers and cell with py4DSTEM's
  ``Crystal``; spot positions and kinematic intensities come from its
  structure factors.
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

import numpy as np

from ._validation import check_number, check_seed
from .affine import LatticeTransform
from .calibration import detector_matrix
from .crystalscan import TRUTH_SLICES, check_shapes, polycrystal, truth_slice
from .disks import Detector, copy_calibration
from .materials import MATERIALS, material_spots
from .microstructure import scan_grid
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

#: Slices of the ground-truth RealSlice returned by :func:`phase_mixture`.
MIXTURE_TRUTH_SLICES = TRUTH_SLICES + ("phase",)

#: Name of the empty phase of :func:`phase_mixture` (direct beam only).
VACUUM = "vacuum"

#: Centre of :func:`phase_mixture`'s second phase, fractions of ``(Rx, Ry)``.
_DISK_CENTRE = (0.68, 0.68)

#: Seed of the first phase's reference grain, fractions of ``(Rx, Ry)``.
_FIRST_REFERENCE = (0.18, 0.18)


# ---------------------------------------------------------------- two phases
def _check_materials(materials) -> tuple[str, str]:
    """Two phases, each a key of :data:`MATERIALS` or :data:`VACUUM`, one crystalline."""
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
    return materials


def _phase_map(scan_shape: tuple[int, int], radius: float) -> np.ndarray:
    """Phase index (Rx, Ry) int: 1 in the disk of ``radius * min(Rx, Ry)``, else 0."""
    Rx, Ry = scan_shape
    xx, yy = scan_grid(scan_shape)
    return (
        (xx - _DISK_CENTRE[0] * Rx) ** 2 + (yy - _DISK_CENTRE[1] * Ry) ** 2
        <= (radius * min(Rx, Ry)) ** 2
    ).astype(int)


def _render_phases(scan_shape, pattern_shape, materials, seed, options) -> dict:
    """``{k: (datacube, truth)}`` of :func:`polycrystal` for each crystalline phase ``k``.

    One detector for both phases: the second crystal (if any) takes the pixel
    size and disk radius the first one was rendered with.
    """
    options = dict(options)
    rendered = {}
    for k, material in enumerate(materials):
        if material != VACUUM:
            rendered[k] = polycrystal(
                scan_shape,
                pattern_shape,
                material=material,
                reference_position=_FIRST_REFERENCE if k == 0 else _DISK_CENTRE,
                seed=seed + k,
                **options,
            )
            params = rendered[k][1].metadata["simulation"]
            options["q_pixel_size"] = params["q_pixel_size"]
            options["disk_radius"] = params["disk_radius"]
    return rendered


def _vacuum_patterns(datacube, params, where: np.ndarray) -> np.ndarray:
    """Direct beam alone (n, Qx, Qy) float32 at the ``where`` positions.

    On the detector of the simulated ``datacube`` (its calibration and the
    disk size of its simulation ``params``), carrying a whole pattern's
    intensity.
    """
    cal = datacube.calibration
    detector = Detector(
        datacube.data.shape[2:],
        float(params["q_pixel_size"]),
        float(params["disk_radius"]),
        float(params["edge_width"]),
        cal.get_ellipse(),
        float(params["qr_rotation"]),
    )
    ox, oy = cal.get_origin()
    origins = np.stack([np.asarray(ox)[where], np.asarray(oy)[where]], -1)
    n = len(origins)
    return detector.render(
        np.tile(np.eye(2), (n, 1, 1)), origins, np.zeros((1, 2)), np.ones(1)
    )


def _mixture_patterns(rendered: dict, phase: np.ndarray) -> np.ndarray:
    """Patterns (Rx, Ry, Qx, Qy): each phase's positions from its own scan."""
    k0 = min(rendered)
    datacube0, truth0 = rendered[k0]
    data = np.array(datacube0.data)
    for k, (dc_k, _) in rendered.items():
        if k != k0:
            data[phase == k] = dc_k.data[phase == k]
    if len(rendered) == 1:  # a vacuum phase: the direct beam alone
        where = phase == 1 - k0
        data[where] = _vacuum_patterns(datacube0, truth0.metadata["simulation"], where)
    return data


def _mixture_slices(rendered: dict, phase: np.ndarray) -> dict:
    """The :data:`MIXTURE_TRUTH_SLICES` (see :func:`phase_mixture`)."""
    slices = {}
    for name in TRUTH_SLICES:
        out = np.zeros(phase.shape)
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
    return slices


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
    from py4DSTEM import DataCube

    scan_shape, pattern_shape = check_shapes(scan_shape, pattern_shape)
    materials = _check_materials(materials)
    radius = check_number(radius, "radius", low=0.0, high=0.32, low_open=True)
    seed = check_seed(seed)
    fixed = {"material", "reference_position", "seed"} & set(options)
    if fixed:
        raise TypeError(f"phase_mixture sets {sorted(fixed)} itself; do not pass them")
    phase = _phase_map(scan_shape, radius)
    rendered = _render_phases(scan_shape, pattern_shape, materials, seed, options)
    datacube = DataCube(
        data=_mixture_patterns(rendered, phase), name="simulated_phase_mixture"
    )
    # the calibration of the first crystal's DataCube (same detector for both)
    copy_calibration(rendered[min(rendered)][0], datacube)
    meta = {"materials": list(materials), "radius": radius, "seed": seed}
    for k, (_, t_k) in rendered.items():
        sim = t_k.metadata["simulation"]
        meta.update({f"phase_{k}.{key}": sim[key] for key in sim.keys})
    return datacube, truth_slice(
        _mixture_slices(rendered, phase), MIXTURE_TRUTH_SLICES, meta
    )


def truth_transform(truth) -> LatticeTransform:
    """The exact per-position :class:`LatticeTransform` stored in ``truth``."""
    beta = np.stack(
        [truth.get_slice(f"beta_{i}{j}").data for i in range(2) for j in range(2)], -1
    )
    return LatticeTransform(beta.reshape(*beta.shape[:-1], 2, 2))
