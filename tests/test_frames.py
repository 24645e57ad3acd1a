"""Bases registered to a common frame: register_spots, reduce_rotation."""

import numpy as np
import pytest


def _hex_spots(spacing=10.0, reach=26.0):
    a1, a2 = np.array([spacing, 0.0]), np.array([spacing / 2, spacing * 3**0.5 / 2])
    pts = np.array([h * a1 + k * a2 for h in range(-4, 5) for k in range(-4, 5)])
    r = np.linalg.norm(pts, axis=1)
    return pts[(r > 1) & (r < reach)]


def _rot(deg):
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def test_register_spots_recovers_the_lattice_matrix():
    from py4dstem_ccstae.spotfit import register_spots

    rng = np.random.default_rng(0)
    a = _hex_spots()
    M0 = 1.04 * _rot(3.0) @ np.array([[1.005, 0.002], [0.002, 0.998]])
    b = a @ M0.T + rng.normal(0, 0.03, a.shape)
    b = b[np.linalg.norm(b, axis=1) < 26]
    rng.shuffle(b)  # no order shared with the anchor
    M = register_spots(a, b, symmetry=6)
    assert np.abs(M - M0).max() < 2e-3
    # a rotation beyond half the lattice period: the smallest equivalent one
    np.testing.assert_allclose(
        register_spots(a, a @ _rot(57.0).T, 6), _rot(-3.0), atol=1e-9
    )
    # another lattice (30 % larger, or square) is not registered
    assert register_spots(a, 1.3 * a, 6) is None
    sq = np.array([[i, j] for i in range(-2, 3) for j in range(-2, 3) if i or j]) * 9.0
    assert register_spots(a, sq, 6) is None
    assert register_spots(a[:2], a[:2], 6) is None


def test_reduce_rotation_keeps_the_strain_in_the_reference_axes():
    from py4dstem_ccstae.affine import LatticeTransform, reduce_rotation

    T = LatticeTransform.from_strain(0.01, -0.005, 0.002, np.deg2rad(5.0))
    # the same square lattice described with a 90-degree turn of its axes
    turned = LatticeTransform(T.params @ _rot(90.0))
    back = reduce_rotation(turned, 4).strain()
    for k, v in T.strain().items():
        assert back[k] == pytest.approx(v, abs=1e-12), k
