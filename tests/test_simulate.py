import numpy as np
import pytest
from py4DSTEM import DataCube, RealSlice

from py4dstem_ccstae.affine import LatticeTransform
from py4dstem_ccstae.simulate import (
    TRUTH_SLICES,
    detector_matrix,
    material_spots,
    polycrystal,
    truth_transform,
)


def test_outputs_and_calibration(tiny):
    dc, truth = tiny
    assert isinstance(dc, DataCube) and isinstance(truth, RealSlice)
    assert dc.data.shape == (6, 5, 64, 64) and dc.data.dtype == np.float32
    assert np.all(np.isfinite(dc.data)) and dc.data.min() >= 0
    cal = dc.calibration
    assert cal.get_Q_pixel_units() == "A^-1" and cal.get_Q_pixel_size() > 0
    assert cal.get_R_pixel_size() == 1.0 and cal.get_R_pixel_units() == "nm"
    assert cal.get_origin()[0].shape == (6, 5)
    assert tuple(truth.slicelabels) == TRUTH_SLICES
    ref = truth.get_slice("reference").data.astype(bool)
    assert ref.any()
    for k in ("e_xx", "e_yy", "e_xy", "theta"):
        assert np.all(truth.get_slice(k).data[ref] == 0)
        assert np.abs(truth.get_slice(k).data).max() <= 0.1
    assert np.all(truth.get_slice("grain").data[ref] == 0)
    assert truth.metadata["simulation"]["material"] == "Si"


def test_reproducible_and_seed_dependent():
    a, ta = polycrystal(scan_shape=(4, 4), pattern_shape=(64, 64), num_grains=3, seed=5)
    b, tb = polycrystal(scan_shape=(4, 4), pattern_shape=(64, 64), num_grains=3, seed=5)
    c, tc = polycrystal(scan_shape=(4, 4), pattern_shape=(64, 64), num_grains=3, seed=6)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(ta.data, tb.data)
    assert not np.array_equal(ta.data, tc.data)


def _spot_centroid(dp, centre, half=5):
    x0, y0 = int(round(centre[0])), int(round(centre[1]))
    win = dp[x0 - half : x0 + half + 1, y0 - half : y0 + half + 1].astype(float)
    xx, yy = np.mgrid[-half : half + 1, -half : half + 1]
    return np.array([x0 + (xx * win).sum() / win.sum(), y0 + (yy * win).sum() / win.sum()])


@pytest.mark.parametrize(
    "kw",
    [{}, {"descan": 3.0, "ellipticity": 0.05, "qr_rotation": 25.0}],
    ids=["plain", "distorted"],
)
def test_spots_sit_at_exact_subpixel_positions(kw):
    dc, truth = polycrystal(
        scan_shape=(5, 5), pattern_shape=(128, 128), num_grains=4, seed=2, **kw
    )
    cal = dc.calibration
    ell = cal.get_ellipse() if kw else None
    rot = cal.get_QR_rotation() if kw else 0.0
    C = detector_matrix(cal.get_Q_pixel_size(), ell, rot)
    T = truth_transform(truth)
    spots = material_spots("Si", 0.6)  # the four 220 spots
    assert len(spots["g"]) == 4
    for rx, ry in [(0, 0), (4, 3), (2, 4)]:
        origin = np.array(cal.get_origin(rx, ry))
        for g in spots["g"]:
            p = origin + np.linalg.solve(C, T[rx, ry].apply(g))
            got = _spot_centroid(dc.data[rx, ry], p)
            np.testing.assert_allclose(got, p, atol=0.03)


def test_smooth_fields_and_materials():
    dc, truth = polycrystal(
        scan_shape=(8, 8), pattern_shape=(64, 64), num_grains=1, field="gradient", seed=0
    )
    exx = truth.get_slice("e_xx").data
    ref = truth.get_slice("reference").data.astype(bool)
    assert ref.all()  # one grain: it is the reference, which stays unstrained
    dc, truth = polycrystal(
        scan_shape=(12, 12), pattern_shape=(64, 64), num_grains=4, field="gradient", seed=0
    )
    exx = truth.get_slice("e_xx").data
    ref = truth.get_slice("reference").data.astype(bool)
    assert len(np.unique(exx[~ref])) > 4  # varies smoothly inside the grain
    dc, truth = polycrystal(
        scan_shape=(12, 12), pattern_shape=(64, 64), num_grains=4, field="bend", seed=0
    )
    ref = truth.get_slice("reference").data.astype(bool)
    assert len(np.unique(truth.get_slice("theta").data[~ref])) > 4
    dc, truth = polycrystal(
        scan_shape=(4, 4), pattern_shape=(96, 96), material="MoS2", rotation_range="full"
    )
    th = truth.get_slice("theta").data
    assert np.all(np.abs(th) <= np.pi / 6 + 1e-12)
    assert truth.metadata["simulation"]["symmetry"] == 6


def test_dynamical_disks_are_not_uniform():
    kw = dict(scan_shape=(3, 3), pattern_shape=(96, 96), num_grains=2, seed=0)
    kin, _ = polycrystal(**kw)
    dyn, truth = polycrystal(dynamical=True, thickness=100.0, **kw)
    spots = material_spots("Si", 0.6)
    cal = dyn.calibration
    C = detector_matrix(cal.get_Q_pixel_size())
    r = cal.get_convergence_semiangle_pixels() - 1.0
    T = truth_transform(truth)

    def disk_cv(dc):
        origin = np.array(cal.get_origin(1, 1))
        p = origin + np.linalg.solve(C, T[1, 1].apply(spots["g"][0]))
        xx, yy = np.mgrid[: dc.data.shape[2], : dc.data.shape[3]]
        inside = np.hypot(xx - p[0], yy - p[1]) < r
        v = dc.data[1, 1][inside]
        return v.std() / v.mean()

    assert disk_cv(kin) < 0.02
    assert disk_cv(dyn) > 0.05


@pytest.mark.parametrize(
    "kw, exc, name",
    [
        ({"scan_shape": (0, 4)}, ValueError, "scan_shape"),
        ({"scan_shape": (4,)}, TypeError, "scan_shape"),
        ({"scan_shape": (4.5, 4)}, TypeError, "scan_shape"),
        ({"pattern_shape": (16, 16)}, ValueError, "pattern_shape"),
        ({"pattern_shape": (1024, 1024)}, ValueError, "pattern_shape"),
        ({"material": "Unobtainium"}, ValueError, "material"),
        ({"num_grains": 0}, ValueError, "num_grains"),
        ({"num_grains": 2.0}, TypeError, "num_grains"),
        ({"strain_range": -0.1}, ValueError, "strain_range"),
        ({"rotation_range": "some"}, ValueError, "rotation_range"),
        ({"field": "wave"}, ValueError, "field"),
        ({"q_pixel_size": 0.2}, ValueError, "q_pixel_size"),
        ({"ellipticity": 0.5}, ValueError, "ellipticity"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_input(kw, exc, name):
    with pytest.raises(exc, match=name):
        polycrystal(**{"scan_shape": (4, 4), "pattern_shape": (64, 64), **kw})


def test_truth_transform_round_trip(tiny):
    _, truth = tiny
    T = truth_transform(truth)
    assert isinstance(T, LatticeTransform)
    s = T.strain()
    for k in s:
        np.testing.assert_allclose(s[k], truth.get_slice(k).data, atol=1e-12)
