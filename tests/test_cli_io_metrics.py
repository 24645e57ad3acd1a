import os
import subprocess
import sys

import numpy as np
import pytest
from py4DSTEM import RealSlice

from py4dstem_ccstae.cli import main
from py4dstem_ccstae.estimator import CCSTAE
from py4dstem_ccstae.io import save_emd
from py4dstem_ccstae.metrics import strain_errors, wrap_angle


def _rs(values, mask=None):
    shape = np.shape(values[0])
    mask = np.ones(shape) if mask is None else mask
    return RealSlice(
        data=np.stack([*values, mask]),
        slicelabels=["e_xx", "e_yy", "e_xy", "theta", "mask"],
    )


def test_metrics_on_hand_made_arrays():
    z = np.zeros((2, 2))
    truth = _rs([z, z, z, z])
    est = _rs(
        [z + 0.001, z - 0.002, z, np.full((2, 2), np.radians(1.0))],
        mask=np.array([[1, 1], [1, 0.0]]),
    )
    e = strain_errors(est, truth)
    assert e["mae_e_xx"] == pytest.approx(0.001)
    assert e["mae_e_yy"] == pytest.approx(0.002)
    assert e["mae_e_xy"] == 0
    assert e["mae_theta_deg"] == pytest.approx(1.0)
    assert e["valid_fraction"] == 0.75
    # symmetry-aware theta: 89 deg off on a 4-fold lattice is 1 deg off
    est = _rs([z, z, z, np.full((2, 2), np.radians(89.0))])
    assert strain_errors(est, truth, symmetry=4)["mae_theta_deg"] == pytest.approx(1.0)
    assert wrap_angle(np.radians(359.0))[()] == pytest.approx(np.radians(-1.0))
    with pytest.raises(ValueError, match="scan shape"):
        strain_errors(_rs([np.zeros((3, 3))] * 4), truth)


def test_save_emd_is_atomic_and_never_overwrites(tmp_path, tiny):
    _, truth = tiny
    p = save_emd(tmp_path / "t.h5", truth)
    assert p.exists()
    mtime = p.stat().st_mtime_ns
    with pytest.raises(ValueError, match="exists"):
        save_emd(p, truth)
    assert p.stat().st_mtime_ns == mtime
    save_emd(p, truth, overwrite=True)
    with pytest.raises(ValueError, match="does not exist"):
        save_emd(tmp_path / "missing" / "t.h5", truth)
    assert sorted(os.listdir(tmp_path)) == ["t.h5"]  # no temporary left behind


def test_demo_end_to_end(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--scan", "8", "--noise", "10"])
    assert rc == 0
    text = capsys.readouterr().out
    read_call = text.strip().splitlines()[-1].strip()
    assert read_call.startswith("py4DSTEM.read(")
    assert "py4DSTEM (rotation-free truth)" in text and "CC-ST-AE" in text
    assert (tmp_path / "strain_ccstae.png").exists() and (tmp_path / "demo.h5").exists()
    # one file: the model sits next to the DataCube and loads back
    model = CCSTAE.load(tmp_path / "demo.h5")
    assert model.fitted_["spots"] is not None
    assert (tmp_path / "strain_py4dstem.png").stat().st_size > 1000
    # refuses to overwrite without --force
    assert main(["demo", "--out", str(tmp_path), "--scan", "8"]) == 2
    # the file reads back in a fresh process without this package
    code = (
        f"import py4DSTEM, sys; r = {read_call}; "
        "assert list(r.slicelabels) == "
        "['e_xx','e_yy','e_xy','theta','mask','class','error']; "
        "assert 'py4dstem_ccstae' not in sys.modules"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "Agg"}
    )


@pytest.mark.parametrize("argv", [["demo", "--scan", "x"], ["demo", "--noise", "150"], []])
def test_bad_arguments_exit_2(argv):
    proc = subprocess.run(
        [sys.executable, "-m", "py4dstem_ccstae.cli", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "error" in proc.stderr and "Traceback" not in proc.stderr
