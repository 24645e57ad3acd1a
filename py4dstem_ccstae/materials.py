"""The simulator's materials: crystal structures, structure factors, Bragg spots.

First stage of the simulator (:mod:`py4dstem_ccstae.simulate`). Each material
is a unit cell (fractional positions, atomic numbers, lattice vectors in A as
rows) built into py4DSTEM's ``Crystal``; kinematic spot positions and
intensities come from its structure factors (:func:`material_spots`), Bloch-wave
disks from its dynamical structure factors (:mod:`py4dstem_ccstae.disks`).

Conventions
-----------
Every structure is seen down its [001] zone axis; ``qx`` lies along ``a*``.
An in-plane strain ``(exx, eyy, exy)`` (fractions, tensor shear) deforms the
lattice vectors as ``r' = V r`` with ``V = [[1 + exx, exy], [exy, 1 + eyy]]``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MATERIALS",
    "check_material",
    "crystal",
    "first_order_spacing",
    "material_spots",
]

#: Materials known to the simulator: name -> (description, in-plane symmetry order).
MATERIALS = {
    "Si": ("diamond-cubic silicon, a = 5.431 A, [001] zone", 4),
    "MoS2": ("2H-MoS2, a = 3.16 A, c = 12.29 A, [001] zone", 6),
    "WS2": ("2H-WS2, a = 3.153 A, c = 12.32 A, [001] zone", 6),
    "MoSe2": ("2H-MoSe2, a = 3.288 A, c = 12.93 A, [001] zone", 6),
}

#: 2H transition-metal dichalcogenides: a, c (A), metal and chalcogen atomic numbers.
_TMD_CELLS = {
    "MoS2": (3.16, 12.29, 42, 16),
    "WS2": (3.153, 12.32, 74, 16),
    "MoSe2": (3.288, 12.93, 42, 34),
}


def check_material(material: str) -> str:
    """Require a key of :data:`MATERIALS`; return it."""
    if material not in MATERIALS:
        raise ValueError(f"material must be one of {sorted(MATERIALS)}, got {material!r}")
    return material


def _unit_cell(material: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fractional positions (n, 3), atomic numbers (n,), lattice vectors (3, 3; rows, A)."""
    if material == "Si":
        fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        positions = np.vstack([fcc, fcc + 0.25])
        return positions, np.full(8, 14), np.diag([5.431, 5.431, 5.431])
    a, c, zm, zx = _TMD_CELLS[check_material(material)]
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
    return positions, numbers_, lat


def crystal(material: str, strain: tuple[float, float, float] | None = None):
    """py4DSTEM ``Crystal`` of ``material``, optionally strained in plane.

    Parameters
    ----------
    material : str
        One of :data:`MATERIALS`.
    strain : (float, float, float), optional
        In-plane ``(exx, eyy, exy)`` (fractions, tensor shear) applied to the
        lattice vectors as ``r' = V r`` (see module docs).

    Returns
    -------
    py4DSTEM.process.diffraction.Crystal
    """
    from py4DSTEM.process.diffraction import Crystal

    positions, numbers_, lat = _unit_cell(material)
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
    cr = crystal(check_material(material))
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


def first_order_spacing(material: str) -> float:
    """Length of the shortest reflection of ``material``'s [001] zone, A^-1."""
    probe = material_spots(material, k_max=1.0)
    return float(np.min(np.hypot(*probe["g"].T)))
