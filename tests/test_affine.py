import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from py4dstem_ccstae.affine import LatticeTransform

small = st.floats(-0.05, 0.05)
angle = st.floats(-np.pi + 1e-3, np.pi - 1e-3)


@settings(max_examples=200, deadline=None)
@given(small, small, small, angle)
def test_from_strain_round_trip(exx, eyy, exy, theta):
    s = LatticeTransform.from_strain(exx, eyy, exy, theta).strain()
    np.testing.assert_allclose(
        [s["e_xx"], s["e_yy"], s["e_xy"], s["theta"]], [exx, eyy, exy, theta], atol=1e-12
    )


def test_matches_py4dstem_formulas_without_rotation():
    T = LatticeTransform.from_strain(0.012, -0.007, 0.004, 0.0)
    lin, s = T.strain_linear(), T.strain()
    for k in s:
        assert lin[k] == pytest.approx(s[k], abs=1e-15)


def test_py4dstem_sign_of_theta_and_axes():
    # lattice rotated by +phi from +qx toward +qy: g = (1, 0) goes to (cos, sin)
    phi = 0.01
    c, s = np.cos(phi), np.sin(phi)
    T = LatticeTransform.from_lattice_vectors(
        np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[c, s], [-s, c]])
    )
    assert T.strain()["theta"] == pytest.approx(-phi)
    assert T.strain_linear()["theta"] == pytest.approx(-np.sin(phi))
    # diffraction pattern expanded along qx -> compressive e_xx
    T = LatticeTransform(np.diag([1.01, 1.0]))
    assert T.strain()["e_xx"] == pytest.approx(-0.01)
    assert T.strain()["e_yy"] == pytest.approx(0.0)
    # real-space stretch along x by 2 % -> F = diag(1.02, 1)
    T = LatticeTransform.from_deformation_gradient(np.diag([1.02, 1.0]))
    assert T.strain_biot()["e_xx"] == pytest.approx(0.02)
    assert T.strain()["e_xx"] == pytest.approx(1 - 1 / 1.02)


def test_rotation_does_not_leak_into_strain():
    T = LatticeTransform.from_strain(0.0, 0.0, 0.0, np.radians(30))
    s = T.strain()
    assert abs(s["e_xx"]) < 1e-12 and abs(s["e_yy"]) < 1e-12
    # py4DSTEM's infinitesimal formulas do leak: 1 - cos(30 deg)
    assert T.strain_linear()["e_xx"] == pytest.approx(1 - np.cos(np.radians(30)))


def test_batch_relative_reference_and_compose():
    rng = np.random.default_rng(0)
    e = rng.uniform(-0.02, 0.02, (3, 4, 5))
    th = rng.uniform(-0.1, 0.1, (4, 5))
    T = LatticeTransform.from_strain(*e, th)
    assert T.shape == (4, 5)
    ref = T[0, 0]
    rel = T.relative_to(ref)
    np.testing.assert_allclose((rel @ ref).params, T.params, atol=1e-14)
    mask = np.zeros((4, 5), bool)
    mask[0, 0] = True
    np.testing.assert_allclose(T.reference_from_mask(mask).params, ref.params)
    np.testing.assert_allclose(
        (T @ T.inverse).params, np.broadcast_to(np.eye(2), (4, 5, 2, 2)), atol=1e-14
    )
    g = np.array([[1.0, 0.0], [0.3, 0.7]])
    np.testing.assert_allclose(T[1, 2].apply(g), g @ T[1, 2].params.T)


def test_bad_input():
    with pytest.raises(ValueError, match="params"):
        LatticeTransform(np.eye(3))
    with pytest.raises(ValueError, match="finite"):
        LatticeTransform(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="determinant"):
        LatticeTransform(np.diag([1.0, -1.0]))
    T = LatticeTransform.identity((2, 2))
    with pytest.raises(ValueError, match="mask"):
        T.reference_from_mask(np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="mask"):
        T.reference_from_mask(np.ones((2, 2)))
    with pytest.raises(ValueError, match="no position"):
        T.reference_from_mask(np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="strain too large"):
        LatticeTransform.from_strain(1.5, 0, 0, 0)
