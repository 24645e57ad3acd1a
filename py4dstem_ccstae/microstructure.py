"""The simulator's microstructure: Voronoi grains, per-grain strain, smooth fields.

Third stage of the simulator (:mod:`py4dstem_ccstae.simulate`): which grain
each scan position belongs to and the strain there, as the
``e_xx, e_yy, e_xy, theta`` maps of :meth:`LatticeTransform.from_strain`
(fractions, tensor shear, radians, py4DSTEM's sign of ``theta``), in scan
coordinates. Grain 0 is the reference grain: unstrained, unrotated, and left
so by the smooth fields.

Scan positions are pixel centres ``(rx + 0.5, ry + 0.5)`` (:func:`scan_grid`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._validation import check_number
from .affine import STRAIN_KEYS

__all__ = [
    "FIELDS",
    "Microstructure",
    "check_rotation_range",
    "microstructure",
    "scan_grid",
]

#: Strain fields of :func:`microstructure`: piecewise constant, plus a gradient or a bend.
FIELDS = ("grains", "gradient", "bend")


@dataclass
class Microstructure:
    """Grains and strain of a scan.

    Attributes
    ----------
    grain : (Rx, Ry) int
        Grain index per position (0: the reference grain).
    strain : dict
        ``e_xx, e_yy, e_xy, theta`` maps (Rx, Ry) (fractions; radians).
    grain_strain : (G, 4)
        Per-grain ``e_xx, e_yy, e_xy, theta`` before any smooth field.
    """

    grain: np.ndarray
    strain: dict
    grain_strain: np.ndarray


def scan_grid(scan_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(xx, yy)`` (Rx, Ry) of the scan positions."""
    Rx, Ry = scan_shape
    return np.meshgrid(np.arange(Rx) + 0.5, np.arange(Ry) + 0.5, indexing="ij")


def check_rotation_range(rotation_range, symmetry: int) -> tuple[float, float]:
    """Per-grain rotation interval (radians) of ``rotation_range``.

    A number ``r`` of degrees in [0, 180] gives ``[-r, r]``; ``"full"`` the
    whole symmetry-distinct range ``[-pi/n, pi/n)`` of an ``n``-fold lattice.
    """
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


def _add_smooth_field(strain, field, amplitude, xx, yy, scan_shape, seed0, ref) -> None:
    """Add the ``"gradient"`` or ``"bend"`` field to ``strain`` off the reference grain.

    ``"gradient"``: ``e_xx`` along Rx and ``e_yy`` along Ry, total change
    ``amplitude`` across the scan, zero at the reference grain's seed
    ``seed0`` (pixels). ``"bend"``: rotation ``amplitude * sin(pi (u + v))``
    radians, ``u, v`` the scan coordinates in [-0.5, 0.5].
    """
    Rx, Ry = scan_shape
    u = (xx / Rx) - 0.5
    v = (yy / Ry) - 0.5
    if field == "gradient":
        u0, v0 = seed0 / np.array([Rx, Ry]) - 0.5
        strain["e_xx"] += np.where(ref, 0.0, amplitude * (u - u0))
        strain["e_yy"] += np.where(ref, 0.0, amplitude * (v - v0))
    elif field == "bend":
        strain["theta"] += np.where(ref, 0.0, amplitude * np.sin(np.pi * (u + v)))


def microstructure(
    scan_shape: tuple[int, int],
    num_grains: int,
    strain_range: float,
    rotation_range: tuple[float, float],
    field: str,
    field_amplitude: float,
    rng: np.random.Generator,
    reference_position: tuple[float, float] = (0.18, 0.18),
) -> Microstructure:
    """Voronoi grains with random strain and rotation, and a smooth field.

    Parameters
    ----------
    scan_shape : (int, int)
        ``(Rx, Ry)``.
    num_grains : int
        Number of grains; grain 0 is the unstrained, unrotated reference.
    strain_range : float
        Per-grain ``e_xx, e_yy, e_xy`` uniform in ``[-strain_range, strain_range]``.
    rotation_range : (float, float)
        Per-grain rotation interval, radians (:func:`check_rotation_range`).
    field : str
        One of :data:`FIELDS`.
    field_amplitude : float
        Amplitude of the smooth field (fraction; radians for ``"bend"``).
    rng : numpy.random.Generator
        Draws the grain seeds, then the strains, then the rotations.
    reference_position : (float, float)
        Seed of the reference grain as fractions of ``(Rx, Ry)``.
    """
    Rx, Ry = scan_shape
    # grain 0 (reference) seeded near a corner so it is never squeezed out
    seeds = rng.uniform(0, 1, size=(num_grains, 2)) * np.array([Rx, Ry])
    seeds[0] = (reference_position[0] * Rx, reference_position[1] * Ry)
    xx, yy = scan_grid(scan_shape)
    d2 = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
    grain = np.argmin(d2, axis=-1)

    gs = np.zeros((num_grains, 4))
    gs[1:, :3] = rng.uniform(-strain_range, strain_range, size=(num_grains - 1, 3))
    gs[1:, 3] = rng.uniform(rotation_range[0], rotation_range[1], size=num_grains - 1)
    strain = {k: gs[grain, i].copy() for i, k in enumerate(STRAIN_KEYS)}
    _add_smooth_field(
        strain, field, field_amplitude, xx, yy, scan_shape, seeds[0], grain == 0
    )
    return Microstructure(grain=grain, strain=strain, grain_strain=gs)
