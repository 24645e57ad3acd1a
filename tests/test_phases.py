"""Several bases (num_bases > 1): phases and vacuum in one scan (simulator and model)."""

import json
import warnings

import numpy as np
import pytest

from py4dstem_ccstae.estimator import CCSTAE
from py4dstem_ccstae.simulate import MIXTURE_TRUTH_SLICES, phase_mixture

FAST = dict(size=48, epochs=6, batch_size=32, num_bases=2)
KEYS = ("e_xx", "e_yy", "e_xy")


@pytest.fixture(scope="module")
def vacuum():
    return phase_mixture((16, 16), (96, 96), materials=("Si", "vacuum"), num_grains=4)


@pytest.fixture(scope="module")
def two_crystals():
    return phase_mixture((16, 16), (96, 96), materials=("Si", "MoS2"), num_grains=3)


def _fit(dc):
    with warnings.catch_warnings():
        # scans this small rarely lock the encoder on (the lock-on check
        # warns); the refinement still finds every pattern's lattice
        warnings.simplefilter("ignore", RuntimeWarning)
        return CCSTAE(**FAST).fit(dc, seed=0, progress=False, device="cpu")


def _majority(cls, where):
    return int(np.bincount(cls[where]).argmax())


def test_phase_mixture_layout_and_truth(vacuum, two_crystals):
    dc, truth = vacuum
    assert list(truth.slicelabels) == list(MIXTURE_TRUTH_SLICES)
    phase = truth.get_slice("phase").data.astype(int)
    assert 0.15 < phase.mean() < 0.45  # a disk of the second phase
    ref = truth.get_slice("reference").data.astype(bool)
    assert ref.any() and not (ref & (phase == 1)).any()
    assert (truth.get_slice("mask").data == (phase == 0)).all()
    assert (truth.get_slice("grain").data[phase == 1] == -1).all()
    # vacuum: the direct beam alone, with a whole pattern's intensity
    data = np.asarray(dc.data)
    qx, qy = np.mgrid[:96, :96]
    ox, oy = dc.calibration.get_origin()
    far = np.hypot(qx - ox[0, 0], qy - oy[0, 0]) > 8
    vac = data[phase == 1]
    assert vac[:, far].max() < 1e-6 * vac.max()
    totals = data.sum((-1, -2))
    np.testing.assert_allclose(
        totals[phase == 1].mean(), totals[phase == 0].mean(), rtol=0.02
    )
    # two crystals: each has its own reference grain, grains numbered apart
    _, t2 = two_crystals
    p2 = t2.get_slice("phase").data.astype(int)
    r2 = t2.get_slice("reference").data.astype(bool)
    assert (r2 & (p2 == 0)).any() and (r2 & (p2 == 1)).any()
    grain = t2.get_slice("grain").data
    assert set(np.unique(grain[p2 == 1])).isdisjoint(np.unique(grain[p2 == 0]))
    assert truth.metadata["simulation"]["materials"] == ["Si", "vacuum"]


def test_phase_mixture_bad_input():
    with pytest.raises(ValueError, match="materials"):
        phase_mixture((8, 8), materials=("Si", "Gold"))
    with pytest.raises(ValueError, match="materials"):
        phase_mixture((8, 8), materials=("vacuum", "vacuum"))
    with pytest.raises(ValueError, match="radius"):
        phase_mixture((8, 8), radius=0.5)
    with pytest.raises(TypeError, match="reference_position"):
        phase_mixture((8, 8), reference_position=(0, 0))


@pytest.fixture(scope="module")
def vacuum_model(vacuum):
    return _fit(vacuum[0])


def test_two_bases_separate_sample_from_vacuum(vacuum, vacuum_model, tmp_path):
    dc, truth = vacuum
    model = vacuum_model
    phase = truth.get_slice("phase").data.astype(int)
    ref = truth.get_slice("reference").data.astype(bool)
    rs = model.strain_map(dc, reference=ref)
    cls = rs.get_slice("class").data.astype(int)
    k_vac = _majority(cls, phase == 1)
    k_si = _majority(cls, phase == 0)
    assert k_vac != k_si
    assert np.mean(np.where(phase == 1, cls == k_vac, cls == k_si)) >= 0.97
    # the vacuum base has no spots: its positions are invalid, strain NaN
    assert model.fitted_["base_spots"][k_vac] is None
    assert model.fitted_["base_spots"][k_si] is not None
    mask = rs.get_slice("mask").data
    assert (mask[cls == k_vac] == 0).all() and (mask[cls == k_si] == 1).all()
    assert np.isnan(rs.get_slice("e_xx").data[cls == k_vac]).all()
    # the crystal's strain follows the truth
    crystal = (cls == k_si) & (phase == 0)
    for k in KEYS:
        est = rs.get_slice(k).data[crystal]
        true = truth.get_slice(k).data[crystal]
        assert np.abs(est - true).mean() < 1.5e-3, k
        assert np.corrcoef(est, true)[0, 1] > 0.95, k
    pred = model.predict(dc)
    np.testing.assert_array_equal(pred["valid"], cls == k_si)
    # py4DSTEM draws and stores the map with its NaNs and mask
    import matplotlib.pyplot as plt
    import py4DSTEM

    fig, _ = py4DSTEM.visualize.show_strain(
        rs, vrange=[-2, 2], vrange_theta=[-3, 3], returnfig=True
    )
    plt.close(fig)
    py4DSTEM.save(str(tmp_path / "strain.h5"), rs, mode="w")
    back = py4DSTEM.read(str(tmp_path / "strain.h5"))
    np.testing.assert_array_equal(back.data, rs.data)


def test_two_crystals_each_relative_to_its_own_reference(two_crystals, tmp_path):
    dc, truth = two_crystals
    model = _fit(dc)
    phase = truth.get_slice("phase").data.astype(int)
    ref = truth.get_slice("reference").data.astype(bool)
    rs = model.strain_map(dc, reference=ref)
    cls = rs.get_slice("class").data.astype(int)
    k0, k1 = _majority(cls, phase == 0), _majority(cls, phase == 1)
    assert k0 != k1
    assert np.mean(np.where(phase == 1, cls == k1, cls == k0)) >= 0.97
    # every base has its own spots (different lattices)
    spots = model.fitted_["base_spots"]
    assert spots[0] is not None and spots[1] is not None
    assert len(spots[0]) != len(spots[1]) or not np.allclose(spots[0], spots[1])
    assert (rs.get_slice("mask").data == 1).all()
    for k in KEYS:
        err = np.abs(rs.get_slice(k).data - truth.get_slice(k).data)
        assert err[cls == np.where(phase == 1, k1, k0)].mean() < 1.5e-3, k
    # a reference inside one phase only: the other class falls back to its
    # own median, with a warning that names it
    with pytest.warns(UserWarning, match=f"class {k1}"):
        rs2 = model.strain_map(dc, reference=ref & (phase == 0))
    same = cls == k0
    np.testing.assert_array_equal(
        rs2.get_slice("e_xx").data[same], rs.get_slice("e_xx").data[same]
    )
    # Si and MoS2 are two lattices: MoS2's base is not registered to Si's,
    # each phase keeps its own frame (the anchor, the first base with
    # spots, is whichever phase training put first)
    frames = model.fitted_["base_frames"]
    assert (frames[k0] is None) != (frames[k1] is None)
    other = k1 if frames[k1] is None else k0  # the phase that is not the anchor
    meta = json.loads(rs.metadata["ccstae"]["class_reference"])
    assert meta[str(other)]["frame"] == "own"
    # save/load keeps the per-base spots and patches
    path = model.save(tmp_path / "two.h5")
    loaded = CCSTAE.load(path)
    a, b = model.predict(dc), loaded.predict(dc)
    for key in ("A", "class", "error", "valid"):
        np.testing.assert_array_equal(a[key], b[key])


def test_one_base_on_a_scan_with_vacuum_warns(vacuum, vacuum_model):
    # a third of the scan shows none of the base's spots: fit says so
    dc, truth = vacuum
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.warns(UserWarning, match="num_bases=2"):
            model = CCSTAE(size=48, epochs=4, batch_size=32).fit(
                dc, seed=0, progress=False, device="cpu"
            )
    vacuum_share = float(truth.get_slice("phase").data.mean())
    assert abs(model.fitted_["weak_fraction"] - vacuum_share) < 0.05
    # with a base for the vacuum, no pattern of a crystal class is weak
    assert vacuum_model.fitted_["weak_fraction"] < 0.05


def test_models_without_per_base_spots_still_predict(two_crystals):
    # models saved before per-base spots used the first base's spots for
    # every base; one base: nothing changes
    dc, truth = two_crystals
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # lock-on, as in _fit
        model = CCSTAE(size=48, epochs=4, batch_size=32).fit(
            dc, seed=0, progress=False, device="cpu"
        )
    before = model.predict(dc)
    # a model saved before per-base spots: its fitted state has no base_spots
    from py4dstem_ccstae.spotmodel import SpotModel

    legacy = {k: v for k, v in model.fitted_.to_dict().items() if k != "base_spots"}
    sm = model.spot_model_
    model.spot_model_ = SpotModel.from_saved(
        legacy, model.net.num_bases, sm.size, model.config["refine_size"], sm.state()
    )
    after = model.predict(dc)
    for key in ("A", "class", "error", "valid"):
        np.testing.assert_array_equal(before[key], after[key])


def test_command_line_report_lists_every_base(vacuum_model, capsys):
    from py4dstem_ccstae.cli import _report

    res = {
        "scan_shape": (16, 16),
        "pattern_shape": (96, 96),
        "input": "x.h5",
        "seconds": 1.0,
        "model": vacuum_model,
        "output": "out.h5",
        "strain_datapath": "ccstae/strain",
        "plot": None,
    }
    _report(res, "fit")
    text = capsys.readouterr().out
    per_base = vacuum_model.fitted_["base_spots"]
    k_vac = per_base.index(None)
    assert f"base {k_vac}: none (invalid)" in text
    assert f"base {1 - k_vac}: {len(per_base[1 - k_vac])}" in text


def test_heterostructure_mismatch_in_the_reference_frame():
    """Two lattices 4 % apart (MoS2 | MoSe2): the common frame reports the mismatch.

    The reference lies in MoS2; MoSe2's lattice relative to it is its own
    (strain of its grains) scaled by a_MoS2 / a_MoSe2 = 3.16 / 3.288
    (real-space strain +4.05 %). With ``frame="class"`` each class is
    relative to itself and the mismatch disappears.
    """
    from py4dstem_ccstae.affine import LatticeTransform
    from py4dstem_ccstae.simulate import truth_transform

    dc, truth = phase_mixture(
        (16, 16), (96, 96), materials=("MoS2", "MoSe2"), num_grains=3, radius=0.3
    )
    phase = truth.get_slice("phase").data.astype(int)
    ref = truth.get_slice("reference").data.astype(bool) & (phase == 0)
    A = truth_transform(truth).params.copy()
    A[phase == 1] *= 3.16 / 3.288
    T = LatticeTransform(A)
    true = T.relative_to(T.reference_from_mask(ref)).strain()
    model = _fit(dc)
    frames = model.fitted_["base_frames"]
    assert sum(f is not None for f in frames) == 2  # one lattice, both bases
    rs = model.strain_map(dc, reference=ref)
    mism = np.median(true["e_xx"][phase == 1])
    assert 0.035 < mism < 0.045
    for k in KEYS:
        err = np.abs(rs.get_slice(k).data - true[k])
        assert err[phase == 0].mean() < 1.5e-3, k
        assert err[phase == 1].mean() < 2e-3, k
    meta = json.loads(rs.metadata["ccstae"]["class_reference"])
    assert {m["frame"] for m in meta.values()} == {"common"}
    # per-class frames: the class without reference positions is relative
    # to itself (its median strain is ~0, not the mismatch)
    cls = rs.get_slice("class").data.astype(int)
    lone = [k for k in np.unique(cls) if not (ref & (cls == k)).any()]
    if lone:
        with pytest.warns(UserWarning, match="no position of class"):
            rc = model.strain_map(dc, reference=ref, frame="class")
        k = lone[0]
        assert abs(np.median(rc.get_slice("e_xx").data[cls == k])) < 5e-3
    with pytest.raises(ValueError, match="frame"):
        model.strain_map(dc, reference=ref, frame="lab")
