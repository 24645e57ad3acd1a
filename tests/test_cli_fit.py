"""``py4dstem-ccstae fit`` / ``predict`` and ``examples/batch_process.py`` on tiny scans."""

import argparse
import contextlib
import csv
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import py4DSTEM
import pytest

from py4dstem_ccstae import CCSTAE
from py4dstem_ccstae.cli import main, parse_reference
from py4dstem_ccstae.estimator import DEFAULT_CONFIG
from py4dstem_ccstae.simulate import polycrystal

SLICES = ["e_xx", "e_yy", "e_xy", "theta", "mask", "class", "error"]
# 2 epochs do not lock on: no lock-on check (tested in test_model.py)
FAST = ["--epochs", "2", "--refine-steps", "5", "--device", "cpu"]
FAST += ["--set", "min_sensitivity=0"]
ENV = {**os.environ, "MPLBACKEND": "Agg"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two tiny simulated scans saved with py4DSTEM.save (calibration included)."""
    folder = tmp_path_factory.mktemp("scans")
    for seed in (0, 1):
        dc, _ = polycrystal(scan_shape=(8, 8), pattern_shape=(64, 64), seed=seed)
        dc.name = "datacube"
        py4DSTEM.save(str(folder / f"scan{seed}.h5"), dc)
    return folder


@pytest.fixture(scope="module")
def fitted(scans):
    """One ``fit`` run through ``main``; returns (output, plot, stdout)."""
    out, plot = scans / "fit.h5", scans / "fit.png"
    argv = ["fit", str(scans / "scan0.h5"), *FAST, "--reference", "0:4,0:4"]
    argv += ["--set", "coarse_epochs=1", "--set", "loss=l1"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([*argv, "--out", str(out), "--plot", str(plot)])
    assert rc == 0
    return out, plot, buf.getvalue()


def test_fit_writes_strain_and_model_to_one_emd_file(fitted, scans):
    out, plot, text = fitted
    assert f"strain: {out}" in text and "model:" in text and "trained in" in text
    assert "lock-on: 1 training attempt(s), encoder sensitivity" in text
    model = CCSTAE.load(out)
    assert f"spots:  {len(model.fitted_['spots'])} spots of the base refined" in text
    strain = py4DSTEM.read(str(out), datapath="ccstae/ccstae_strain")
    assert list(strain.slicelabels) == SLICES
    assert strain.data.shape == (7, 8, 8)
    assert strain.metadata["ccstae"]["reference_positions"] == 16
    run = py4DSTEM.read(str(out), datapath="ccstae", tree=False).metadata["ccstae_run"]
    assert run["command"] == "fit" and run["reference"] == "0:4,0:4"
    model = CCSTAE.load(out)
    assert model.config["epochs"] == 2 and model.config["refine_steps"] == 5
    assert model.config["coarse_epochs"] == 1 and model.config["loss"] == "l1"
    assert plot.stat().st_size > 1000


def test_fit_refuses_to_overwrite(fitted, scans, capsys):
    out, plot, _ = fitted
    mtime = out.stat().st_mtime_ns
    rc = main(["fit", str(scans / "scan0.h5"), *FAST, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert out.stat().st_mtime_ns == mtime
    # the plot is checked before training too
    rc = main(
        ["fit", str(scans / "scan0.h5"), "--out", str(scans / "n.h5"), "--plot", str(plot)]
    )
    assert rc == 2 and "--plot" in capsys.readouterr().err
    assert not (scans / "n.h5").exists()


def test_predict_via_subprocess_and_read_without_plugin(fitted, scans, tmp_path):
    out, _, _ = fitted
    mask = np.zeros((8, 8), bool)
    mask[4:, 4:] = True
    np.save(tmp_path / "ref.npy", mask)
    pred = tmp_path / "pred.h5"
    cmd = [sys.executable, "-m", "py4dstem_ccstae.cli", "predict", str(out)]
    proc = subprocess.run(
        [*cmd, str(scans / "scan1.h5"), "--reference-mask", str(tmp_path / "ref.npy")]
        + ["--out", str(pred), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"strain: {pred}" in proc.stdout
    code = f"""
import sys, py4DSTEM
for path in ({str(pred)!r}, {str(out)!r}):
    s = py4DSTEM.read(path, datapath="ccstae/ccstae_strain")
    assert list(s.slicelabels) == {SLICES!r}, s.slicelabels
    assert s.data.shape == (7, 8, 8)
assert py4DSTEM.read({str(pred)!r}, datapath="ccstae", tree=False).metadata[
    "ccstae_run"]["reference"].startswith("mask file")
assert "py4dstem_ccstae" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)


@pytest.mark.parametrize(
    "ref", ["1:2", "a:b,0:3", "0:4;0:4", "4:2,0:3", "-1:3,0:2", "0:4,0:4,0:1"]
)
def test_bad_reference_string_exits_2_with_one_line(ref, scans):
    # a subprocess for the first case only (checks the real exit path); main for the rest
    if ref == "1:2":
        proc = subprocess.run(
            [sys.executable, "-m", "py4dstem_ccstae.cli", "fit", str(scans / "scan0.h5")]
            + ["--reference", ref],
            capture_output=True,
            text=True,
            env=ENV,
        )
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "--reference" in proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        with pytest.raises(SystemExit) as exc:
            main(["fit", str(scans / "scan0.h5"), "--reference", ref])
        assert exc.value.code == 2


def test_argument_errors_found_before_training(scans, tmp_path, capsys):
    scan = str(scans / "scan0.h5")
    cases = {
        ("--reference", "0:20,0:4"): "outside the scan",
        ("--datapath", "nowhere"): "datapath",
        ("--reference-mask", str(tmp_path / "none.npy")): "--reference-mask",
        ("--out", str(tmp_path / "missing" / "o.h5")): "does not exist",
        ("--out", scan, "--force"): "is the INPUT file",
    }
    np.save(tmp_path / "int.npy", np.ones((8, 8), int))
    cases[("--reference-mask", str(tmp_path / "int.npy"))] = "bool"
    np.save(tmp_path / "shape.npy", np.ones((4, 4), bool))
    cases[("--reference-mask", str(tmp_path / "shape.npy"))] = "scan shape"
    for extra, message in cases.items():
        out = [] if "--out" in extra else ["--out", str(tmp_path / "o.h5")]
        assert main(["fit", scan, *out, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
    assert main(["fit", str(tmp_path / "nothing.h5")]) == 2
    assert (
        main(["predict", scan, str(scans / "scan1.h5"), "--out", str(tmp_path / "p.h5")])
        == 2
    )
    assert "MODEL: no CCSTAE model" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [] or all(
        n.endswith(".npy") for n in os.listdir(tmp_path)
    )


def test_set_option_parsing(scans, tmp_path, capsys):
    from py4dstem_ccstae.cli import config_option

    assert config_option("size=96") == ("size", 96)
    assert config_option("loss=l1") == ("loss", "l1")
    assert config_option("ring=[0.2, 1.5]") == ("ring", (0.2, 1.5))
    assert config_option("q_max=null") == ("q_max", None)
    scan = str(scans / "scan0.h5")
    for bad in ("nokey", "colour=red", "=3"):
        with pytest.raises(SystemExit) as exc:
            main(["fit", scan, "--set", bad])
        assert exc.value.code == 2
        assert "--set" in capsys.readouterr().err
    # a known option with a bad value: one line naming it, nothing written
    out = tmp_path / "o.h5"
    assert main(["fit", scan, "--out", str(out), "--set", "loss=huber"]) == 2
    assert "loss" in capsys.readouterr().err and not out.exists()
    # a boolean given as a word is refused ('no' would have been true)
    assert main(["fit", scan, "--out", str(out), "--set", "refine=no"]) == 2
    assert "refine must be True or False" in capsys.readouterr().err
    assert not out.exists()
    # refine=false: the report does not claim refined spots
    quick = ["--epochs", "2", "--device", "cpu", "--set", "min_sensitivity=0"]
    assert main(["fit", scan, *quick, "--out", str(out), "--set", "refine=false"]) == 0
    text = capsys.readouterr().out
    assert (
        "refinement off (refine=false)" in text and "spots of the base refined" not in text
    )


def test_parse_reference():
    m = parse_reference("1:3,:2", (4, 5))
    assert m.sum() == 4 and m[1:3, :2].all()
    assert parse_reference(":,2:", (4, 5)).sum() == 12
    with pytest.raises(ValueError, match="outside the scan"):
        parse_reference("0:2,5:", (4, 5))


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_help_lists_every_option(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    common = ["INPUT", "--datapath", "--reference", "--reference-mask", "--out", "--plot"]
    common += ["--force", "--device"]
    extra = (
        ["--braggvectors", "--epochs", "--seed", "--refine-steps"]
        if command == "fit"
        else []
    )
    for opt in common + extra + (["MODEL"] if command == "predict" else []):
        assert opt in text, opt
    if command == "fit":
        assert f"training epochs ({DEFAULT_CONFIG['epochs']})" in text


def _batch_module():
    spec = importlib.util.spec_from_file_location(
        "batch_process", ROOT / "examples" / "batch_process.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_batch_script_fits_on_first_file_skips_and_reports(scans, tmp_path, capsys):
    batch = _batch_module()
    folder = tmp_path / "session"
    folder.mkdir()
    for name in ("scan0.h5", "scan1.h5"):
        shutil.copy(scans / name, folder / name)
    (folder / "broken.h5").write_text("not a data file")
    argv = [str(folder), *FAST, "--reference", "0:4,0:4"]
    assert batch.main(argv) == 1  # one bad file: reported, the others processed
    out = folder / "ccstae"
    rows = {Path(r["input"]).name: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["broken.h5"]["status"] == "failed" and rows["broken.h5"]["message"]
    assert rows["scan0.h5"]["status"] == "fitted"
    assert rows["scan1.h5"]["status"] == "predicted"
    for name in ("scan0", "scan1"):
        s = py4DSTEM.read(str(out / f"{name}_ccstae.h5"), datapath="ccstae/ccstae_strain")
        assert list(s.slicelabels) == SLICES
        assert np.isfinite(float(rows[f"{name}.h5"]["median_e_xx"]))
    assert (out / "ccstae_model.h5").exists()
    capsys.readouterr()

    # second run: outputs exist -> skipped, the saved model is reused (no training)
    (folder / "broken.h5").unlink()
    assert batch.main(argv) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert "model: " in capsys.readouterr().out

    # a given model, --force redoes the outputs (one file, to stay fast)
    model = str(out / "ccstae_model.h5")
    assert batch.main([*argv, "--pattern", "scan1.h5", "--model", model, "--force"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [
        ("scan1.h5", "predicted")
    ]
    # bad arguments: exit 2
    assert batch.main([str(folder / "nope")]) == 2
    assert batch.main([str(folder), "--pattern", "*.xyz"]) == 2


def test_braggvectors_are_read_calibrated(scans, tmp_path, capsys):
    from py4dstem_ccstae.baseline import _probe_radius
    from py4dstem_ccstae.workflows import _read_braggvectors

    dc, _ = polycrystal(scan_shape=(4, 4), pattern_shape=(64, 64), seed=0)
    dc.name = "datacube"
    r = _probe_radius(dc)
    probe = py4DSTEM.Probe.generate_synthetic_probe(radius=r, width=1, Qshape=(64, 64))
    kernel = probe.get_kernel(mode="sigmoid", origin=(32, 32), radii=(r, 2.5 * r))
    dc.find_Bragg_disks(  # stored in the DataCube tree as "braggvectors"
        kernel,
        minAbsoluteIntensity=0,
        minPeakSpacing=2 * r,
        edgeBoundary=2,
        subpixel="poly",
    )
    path = tmp_path / "withbv.h5"
    py4DSTEM.save(str(path), dc)
    datapath = f"{dc.root.name}/datacube/braggvectors"
    got = _read_braggvectors(datapath, path)
    q = np.hypot(got.cal[1, 1].qx, got.cal[1, 1].qy)
    # calibrated: centred on the origin and in A^-1 (direct beam near q = 0)
    assert q.min() < 0.05 and q.max() < 64 * dc.calibration.get_Q_pixel_size()
    assert _read_braggvectors(str(path), scans / "scan0.h5") is not None  # a separate file
    with pytest.raises(ValueError, match="--braggvectors: no 'nope'"):
        _read_braggvectors("nope", path)
    with pytest.raises(ValueError, match="expected one BraggVectors"):
        _read_braggvectors(str(scans / "scan1.h5"), path)


def test_read_datacube_emd_and_raw(scans, tmp_path):
    from py4dstem_ccstae.io import find_datacubes, read_datacube

    dc, _ = polycrystal(scan_shape=(8, 8), pattern_shape=(64, 64), seed=0)
    got = read_datacube(scans / "scan0.h5")
    np.testing.assert_array_equal(got.data, dc.data)
    assert got.calibration.get_Q_pixel_size() == dc.calibration.get_Q_pixel_size()
    assert got.calibration.get_Q_pixel_units() == dc.calibration.get_Q_pixel_units()
    # two DataCubes in one file: the datapath chooses
    two = tmp_path / "two.h5"
    shutil.copy(scans / "scan0.h5", two)
    other, _ = polycrystal(scan_shape=(4, 4), pattern_shape=(64, 64), seed=2)
    other.name = "second"
    py4DSTEM.save(str(two), other, mode="a")
    paths = find_datacubes(two)
    assert len(paths) == 2
    with pytest.raises(ValueError, match="2 DataCubes; choose one with datapath"):
        read_datacube(two)
    assert read_datacube(two, paths[1]).data.shape[:2] == (4, 4)
    # a raw format goes through py4DSTEM.import_file (EMPAD: 130x128 float32 frames)
    raw = tmp_path / "scan.raw"
    np.random.default_rng(0).random((9, 130, 128)).astype(np.float32).tofile(raw)
    assert read_datacube(raw).data.shape == (3, 3, 128, 128)
    with pytest.raises(ValueError, match="datapath: only for py4DSTEM/EMD"):
        read_datacube(raw, "root/datacube")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="input: cannot read"):
        read_datacube(tmp_path / "x.txt")


def test_help_of_every_command_and_subcommand(capsys):
    # every parser's --help renders (a bare '%' in a help string made
    # `demo --help` raise inside argparse)
    from py4dstem_ccstae.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for argv in [["--help"]] + [[name, "--help"] for name in sub.choices]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
        assert "usage:" in capsys.readouterr().out, argv


def test_frame_option_is_checked_before_any_work(scans, tmp_path, capsys):
    from py4dstem_ccstae.workflows import run_fit

    scan = str(scans / "scan0.h5")
    with pytest.raises(SystemExit) as exc:
        main(["fit", scan, "--frame", "lab"])
    assert exc.value.code == 2 and "--frame" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--frame: must be one of auto, common, class"):
        run_fit(scan, out=tmp_path / "o.h5", frame="lab")
    assert os.listdir(tmp_path) == []
