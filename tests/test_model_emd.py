"""CCSTAE model storage in EMD 1.0 files: alone, appended beside a DataCube, errors."""

import hashlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import py4DSTEM
import pytest
import torch

from py4dstem_ccstae import CCSTAE
from py4dstem_ccstae.io import OutputExistsError
from py4dstem_ccstae.persistence import LEGACY_MODEL_FORMAT, MODEL_FORMAT, find_models
from py4dstem_ccstae.simulate import polycrystal


@pytest.fixture(scope="module")
def data():
    dc, _ = polycrystal(scan_shape=(8, 8), pattern_shape=(64, 64), seed=0)
    dc.name = "datacube"
    return dc


@pytest.fixture(scope="module")
def model(data):
    torch.manual_seed(0)
    return CCSTAE(epochs=2, refine_steps=5).fit(data, seed=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def expected(model, data):
    return model.predict(data)


def _same_predictions(a, b):
    return all(np.array_equal(a[k], b[k]) for k in ("A", "class", "error"))


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _no_temporaries(folder):
    return not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def test_round_trip_reproduces_predictions_exactly(tmp_path, model, data, expected):
    path = model.save(tmp_path / "model.h5")
    assert path == tmp_path / "model.h5"
    loaded = CCSTAE.load(path)
    assert loaded.config == json.loads(json.dumps(model.config))
    assert loaded.fitted_.to_dict() == json.loads(json.dumps(model.fitted_.to_dict()))
    assert loaded.history_ == model.history_
    assert _same_predictions(loaded.predict(data), expected)
    # a valid EMD 1.0 file: the bases as a DiffractionSlice, metadata beside it
    node = py4DSTEM.read(str(path))
    assert node.name == "ccstae_model"
    assert node.metadata["ccstae_model"]["format"] == MODEL_FORMAT
    bases = node.tree("bases")
    assert isinstance(bases, py4DSTEM.DiffractionSlice)
    np.testing.assert_array_equal(bases.data, model.net.bases.detach().numpy()[:, 0])
    assert find_models(path) == ["ccstae/ccstae_model"]
    assert _no_temporaries(tmp_path)


def test_append_keeps_the_datacube_readable(tmp_path, model, data, expected):
    path = tmp_path / "scan.h5"
    py4DSTEM.save(str(path), data)
    model.save(path, append=True)
    dc = py4DSTEM.read(str(path))  # still the DataCube, model in its tree
    assert isinstance(dc, py4DSTEM.DataCube)
    np.testing.assert_array_equal(dc.data, data.data)
    assert dc.calibration.get_Q_pixel_size() == data.calibration.get_Q_pixel_size()
    root = dc.root.name
    assert find_models(path) == [f"{root}/datacube/ccstae_model"]
    assert _same_predictions(CCSTAE.load(path).predict(data), expected)

    # the same name again: refused without overwrite, file untouched
    before = _digest(path)
    with pytest.raises(FileExistsError, match="name: .*already exists"):
        model.save(path, append=True)
    assert _digest(path) == before
    model.save(path, append=True, overwrite=True)  # replaces that model only
    assert find_models(path) == [f"{root}/datacube/ccstae_model"]

    # a second model under another name and another node: load needs datapath
    model.save(path, append=True, name="second", datapath=root)
    with pytest.raises(ValueError, match="2 CCSTAE models.*datapath"):
        CCSTAE.load(path)
    second = CCSTAE.load(path, datapath=f"{root}/second")
    for k, v in model.net.state_dict().items():
        assert torch.equal(second.net.state_dict()[k], v), k
    np.testing.assert_array_equal(
        py4DSTEM.read(str(path), datapath=root).tree("datacube").data, data.data
    )

    # append to a missing file creates it
    model.save(tmp_path / "new.h5", append=True)
    assert find_models(tmp_path / "new.h5") == ["ccstae/ccstae_model"]
    assert _no_temporaries(tmp_path)


def test_files_read_without_the_plugin(tmp_path, model, data):
    model.save(tmp_path / "model.h5")
    py4DSTEM.save(str(tmp_path / "scan.h5"), data)
    model.save(tmp_path / "scan.h5", append=True)
    code = f"""
import sys, py4DSTEM
m = py4DSTEM.read({str(tmp_path / "model.h5")!r})
assert m.metadata["ccstae_model"]["format"] == {MODEL_FORMAT!r}
assert m.tree("bases").data.shape == (1, 64, 64), m.tree("bases").data.shape
assert "dense.1.weight" in m.tree("weights").treekeys
dc = py4DSTEM.read({str(tmp_path / "scan.h5")!r})
assert dc.data.shape == (8, 8, 64, 64)
assert "ccstae_model" in dc.treekeys
assert "py4dstem_ccstae" not in sys.modules
"""
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "Agg"}
    )


def test_crash_mid_write_leaves_the_old_file(tmp_path, model, data, monkeypatch):
    path = tmp_path / "scan.h5"
    py4DSTEM.save(str(path), data)
    before = _digest(path)

    def crash(filepath, *args, **kwargs):
        with open(filepath, "ab") as f:
            f.write(b"half-written")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(py4DSTEM, "save", crash)
    for kwargs in ({"append": True}, {"overwrite": True}):
        with pytest.raises(RuntimeError, match="simulated crash"):
            model.save(path, **kwargs)
        assert _digest(path) == before
    with pytest.raises(RuntimeError):
        model.save(tmp_path / "fresh.h5")
    assert sorted(os.listdir(tmp_path)) == ["scan.h5"]


def test_bad_input_gives_clear_errors_and_writes_nothing(
    tmp_path, model, data, monkeypatch
):
    with pytest.raises(ValueError, match="path: folder .* does not exist"):
        model.save(tmp_path / "missing" / "m.h5")
    existing = tmp_path / "m.h5"
    existing.write_bytes(b"not hdf5")
    with pytest.raises(OutputExistsError, match="path: .*exists; pass overwrite=True"):
        model.save(existing)
    with pytest.raises(ValueError, match="not an EMD 1.0"):
        model.save(existing, append=True)
    assert existing.read_bytes() == b"not hdf5"
    with pytest.raises(ValueError, match="datapath: only used with append"):
        model.save(tmp_path / "x.h5", datapath="root")
    with pytest.raises(ValueError, match="name must be"):
        model.save(tmp_path / "x.h5", name="a/b")
    with pytest.raises(RuntimeError, match="not fitted"):
        CCSTAE().save(tmp_path / "x.h5")

    scan = tmp_path / "scan.h5"
    py4DSTEM.save(str(scan), data)
    with pytest.raises(ValueError, match="datapath: no EMD node"):
        model.save(scan, append=True, datapath="nowhere/at/all")
    with pytest.raises(ValueError, match="path: no CCSTAE model"):
        CCSTAE.load(scan)
    with pytest.raises(ValueError, match="not an HDF5"):
        CCSTAE.load(existing)
    with pytest.raises(ValueError, match="is not a file"):
        CCSTAE.load(tmp_path / "nothing.h5")

    # a folder that refuses new files: probed by creating one (root ignores
    # chmod, and os.access says yes on /proc), with an error naming the
    # argument, not the temporary file
    import tempfile

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match="path: cannot create a file in folder .*denied"):
        model.save(tmp_path / "ro.h5")
    monkeypatch.undo()
    if os.path.isdir("/proc"):
        with pytest.raises(ValueError, match="path: cannot create a file in folder '/proc"):
            model.save("/proc/x.h5")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(ValueError, match="cannot create a file"):
                model.save(ro / "m.h5")
        finally:
            ro.chmod(0o755)
    assert sorted(os.listdir(tmp_path)) == ["m.h5", "scan.h5"] + (
        ["ro"] if os.geteuid() != 0 else []
    )


def test_old_plain_hdf5_format_still_loads(tmp_path, model, data, expected):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:  # what CCSTAE.save wrote before EMD storage
        f.attrs["format"] = LEGACY_MODEL_FORMAT
        f.attrs["config"] = json.dumps(model.config)
        f.attrs["fitted"] = json.dumps(model.fitted_.to_dict())
        f.attrs["history"] = json.dumps(model.history_)
        g = f.create_group("state_dict")
        # the network's state, with the spot model's arrays (buffers then)
        for k, v in {**model.net.state_dict(), **model.spot_model_.state()}.items():
            g.create_dataset(k, data=v.detach().cpu().numpy())
    assert _same_predictions(CCSTAE.load(path).predict(data), expected)
