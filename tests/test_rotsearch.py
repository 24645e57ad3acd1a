"""The exhaustive in-plane rotation search (rotsearch) and its use in fit/predict."""

import math

import numpy as np
import pytest
import torch

from py4dstem_ccstae.affine import LatticeTransform
from py4dstem_ccstae.estimator import CCSTAE
from py4dstem_ccstae.rotsearch import ring_radii, rotation_matrix, rotation_search
from py4dstem_ccstae.simulate import material_spots, polycrystal

S = 64


def _lattice():
    g = material_spots("Si", 1.2)["g"] / 0.5208 * 12.0
    r = np.hypot(*g.T)
    return g[(r > 6) & (r < 28)]


def _render(g, A, sigma=1.5):
    c = (S - 1) / 2
    xx, yy = np.mgrid[:S, :S]
    out = np.zeros((S, S))
    for q in g @ A.T:
        out += np.exp(-((xx - c - q[0]) ** 2 + (yy - c - q[1]) ** 2) / (2 * sigma**2))
    return out


def _ring():
    yy, xx = np.mgrid[:S, :S] - (S - 1) / 2
    r = np.hypot(yy, xx)
    return torch.tensor((r > 5) & (r < 30), dtype=torch.float32)


def _scene(deltas, A0):
    """Inputs rendered under ``A0 @ R(delta)``; base under the identity."""
    g = _lattice()
    R = rotation_matrix(torch.tensor(deltas)).numpy()
    A_true = A0 @ R
    X = torch.tensor(np.stack([_render(g, a) for a in A_true]), dtype=torch.float32)
    base = torch.tensor(_render(g, np.eye(2)), dtype=torch.float32)[None, None]
    return X, base, A_true


def _angle_error(A, B, symmetry=4):
    """Smallest rotation between two transforms' lattices, modulo the symmetry (rad)."""
    d = np.arctan2(*(np.linalg.solve(A, B)[..., [1, 0], 0].T))
    period = 2 * np.pi / symmetry
    return np.abs((d + period / 2) % period - period / 2)


def test_rotation_search_finds_the_rotation_on_top_of_the_encoder_transform():
    # the convention: inputs under A0 @ R(delta) give back A0 @ R(delta), for
    # rotations up to the lattice's half period, from the identity and from a
    # strained, rotated start
    deltas = [0.0, 0.05, -0.3, 0.6, -0.7]
    A_start = LatticeTransform.from_strain(0.015, -0.01, 0.005, 0.2).params
    for A0 in (np.eye(2), A_start):
        X, base, A_true = _scene(deltas, A0)
        A0s = torch.tensor(np.broadcast_to(A0, (len(deltas), 2, 2)).copy())
        out = rotation_search(
            X, A0s, base, torch.zeros(len(deltas), dtype=torch.long), _ring(), 4
        )
        assert out.dtype == A0s.dtype and out.shape == (len(deltas), 2, 2)
        err = _angle_error(out.numpy(), A_true)
        assert err.max() < math.radians(0.15), np.degrees(err)
        # the strain part is the start's (only a rotation is added)
        np.testing.assert_allclose(
            np.linalg.det(out.numpy()), np.linalg.det(A0s.numpy()), rtol=1e-9
        )


def test_rotation_search_stays_within_half_the_lattice_period():
    # a 4-fold lattice rotated by 60 deg is the same lattice rotated by -30 deg:
    # the smallest equivalent rotation is returned
    X, base, A_true = _scene([math.radians(60.0)], np.eye(2))
    out = rotation_search(
        X, torch.eye(2)[None], base, torch.zeros(1, dtype=torch.long), _ring(), 4
    )
    angle = math.atan2(float(out[0, 1, 0]), float(out[0, 0, 0]))
    assert abs(math.degrees(angle) - (-30.0)) < 0.15


def test_rotation_search_ignores_a_radially_symmetric_halo():
    # each radius loses its mean over the angles: a halo (the direct beam's,
    # the diffuse background) under the spots does not pull the rotation
    X, base, A_true = _scene([0.2, -0.45], np.eye(2))
    yy, xx = np.mgrid[:S, :S] - (S - 1) / 2
    halo = torch.tensor(30.0 / (1.0 + (yy**2 + xx**2) / 60.0), dtype=torch.float32)
    out = rotation_search(
        X + halo,
        torch.eye(2).expand(2, 2, 2),
        base,
        torch.zeros(2, dtype=torch.long),
        _ring(),
        4,
    )
    assert _angle_error(out.numpy(), A_true).max() < math.radians(0.15)


def test_rotation_search_uses_each_pattern_s_own_base():
    g = _lattice()
    X, _, A_true = _scene([0.3, -0.2], np.eye(2))
    # base 0: the lattice; base 1: the lattice rotated by 0.3 rad
    bases = torch.tensor(
        np.stack(
            [_render(g, np.eye(2)), _render(g, rotation_matrix(torch.tensor(0.3)).numpy())]
        ),
        dtype=torch.float32,
    )[:, None]
    out = rotation_search(
        X, torch.eye(2).expand(2, 2, 2), bases, torch.tensor([1, 0]), _ring(), 4
    )
    # pattern 0 equals base 1: no rotation on top; pattern 1 is base 0 at -0.2
    assert _angle_error(out[:1].numpy(), np.eye(2)[None]).max() < math.radians(0.15)
    assert _angle_error(out[1:].numpy(), A_true[1:]).max() < math.radians(0.15)
    assert (
        len(
            rotation_search(
                X[:0], torch.eye(2)[:0], bases, torch.tensor([]).long(), _ring(), 4
            )
        )
        == 0
    )


def test_ring_radii_span_the_ring_and_refuse_an_empty_one():
    radii = ring_radii(_ring())
    assert float(radii[0]) == 6.0 and float(radii[-1]) == 29.0
    assert torch.all(torch.diff(radii) == 1.0)
    with pytest.raises(ValueError, match="ring"):
        ring_radii(torch.zeros(S, S))


FAST = dict(size=48, epochs=6, batch_size=32, refine_steps=6, retries=0)


@pytest.fixture(scope="module")
def full_rotation():
    # grains at every orientation: rotations far beyond the basin of the
    # reconstruction loss
    dc, truth = polycrystal(
        scan_shape=(12, 12),
        pattern_shape=(96, 96),
        num_grains=6,
        seed=5,
        rotation_range="full",
    )
    return dc, truth, truth.get_slice("reference").data.astype(bool)


def test_grains_at_every_orientation_are_mapped_with_the_search(full_rotation):
    from py4dstem_ccstae.metrics import strain_errors

    dc, truth, ref = full_rotation
    errors = {}
    for search in (True, False):
        model = CCSTAE(**FAST, rotation_search=search).fit(
            dc, seed=0, progress=False, device="cpu"
        )
        errors[search] = strain_errors(
            model.strain_map(dc, reference=ref), truth, symmetry=4
        )
    with_search, without = errors[True], errors[False]
    strain = np.mean([with_search[f"mae_{k}"] for k in ("e_xx", "e_yy", "e_xy")])
    assert with_search["mae_theta_deg"] < 0.5, with_search
    assert strain < 3e-3, with_search
    # without the search the refinement starts up to 45 deg off; since it
    # re-centres its patches on spots that moved far, it also recovers most
    # grains of this small scan (theta 0.057 against 0.037 deg with the
    # search, measured), so the search must be at least as good, not 3x
    assert with_search["mae_theta_deg"] <= without["mae_theta_deg"], without


def test_rotation_search_option_is_checked_and_legacy_models_map_without_it(
    full_rotation, tmp_path
):
    with pytest.raises(ValueError, match="rotation_search"):
        CCSTAE(rotation_search="yes")
    assert CCSTAE().config["rotation_search"] is True
    dc, _, _ = full_rotation
    model = CCSTAE(**{**FAST, "epochs": 2}).fit(dc, seed=0, progress=False, device="cpu")
    config, fitted, history, arrays = model._saved_state()
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    legacy = {k: v for k, v in config.items() if k != "rotation_search"}
    old = CCSTAE._from_state(legacy, fitted, history, state, "cpu")
    assert old.config["rotation_search"] is False
    again = CCSTAE._from_state(config, fitted, history, state, "cpu")
    assert again.config["rotation_search"] is True
    np.testing.assert_array_equal(again.predict(dc)["A"], model.predict(dc)["A"])
