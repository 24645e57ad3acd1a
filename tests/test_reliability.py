"""Reliability: no silent wrong answers, no lost files, a clear error for bad input.

One test (or more) per item of the reliability issue (#17); the fuzz test is
in ``test_fuzz.py``. Subprocesses run the races and the kills.
"""

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import h5py
import numpy as np
import pytest
import torch

from py4dstem_ccstae import CCSTAE
from py4dstem_ccstae import cli as cli_mod
from py4dstem_ccstae.io import OutputExistsError, atomic_write, clean_stale_temporaries
from py4dstem_ccstae.simulate import polycrystal

FAST = dict(size=32, epochs=3, batch_size=12, coarse_epochs=1, min_sensitivity=0.0)


@pytest.fixture(scope="module")
def scan():
    dc, _ = polycrystal(scan_shape=(8, 8), pattern_shape=(96, 96), num_grains=3, seed=2)
    return dc


@pytest.fixture(scope="module")
def model(scan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CCSTAE(**FAST).fit(scan, seed=0, progress=False, device="cpu")


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model.h5"
    model.save(path)
    return path


def _python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------ 1: units
def test_units_are_compared_at_prediction(model, scan):
    dc = copy.deepcopy(scan)
    dc.calibration.set_Q_pixel_units("pixels")
    dc.calibration.set_Q_pixel_size(1.0)
    with pytest.raises(ValueError, match="units are 'pixels', but the model works in"):
        model.strain_map(dc)
    # prepared inputs of another geometry are refused too
    from py4dstem_ccstae.adapters import DiffractionInputs

    half = 0.5 * model.fitted_["q_max"]
    other = DiffractionInputs.from_datacube(scan, size=32, q_max=half)
    with pytest.raises(ValueError, match="prepared differently.*q_max"):
        model.predict(other)
    # a second fit of the same estimator takes its geometry from the options
    # (not from the first fit)
    refit = copy.deepcopy(model)
    refit.fitted_["q_max"] = 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit.fit(scan, progress=False, device="cpu")
    assert refit.fitted_["q_max"] == pytest.approx(model.fitted_["q_max"])


# -------------------------------------------------- 2: concurrent saves
RACE = """
import sys, time
from py4dstem_ccstae import CCSTAE
from py4dstem_ccstae.io import OutputExistsError
m = CCSTAE.load(sys.argv[1])
go = float(sys.argv[3])
while time.time() < go:
    pass
try:
    m.save(sys.argv[2])
    print("saved")
except OutputExistsError as e:
    print("refused", e)
"""


def test_two_concurrent_saves_exactly_one_wins(saved, tmp_path):
    for trial in range(3):
        target = tmp_path / f"race{trial}.h5"
        go = time.time() + 8.0  # both processes have imported by then
        procs = [_python(RACE, saved, target, go) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        results = sorted(o[0].split()[0] for o in outs)
        assert results == ["refused", "saved"], outs
        CCSTAE.load(target)  # the winner's file is whole
    assert sorted(os.listdir(tmp_path)) == [f"race{t}.h5" for t in range(3)]


def test_a_file_created_while_writing_is_never_replaced(tmp_path):
    target = tmp_path / "new.h5"
    with pytest.raises(OutputExistsError, match="created by another process"):
        with atomic_write(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"mine")
            target.write_bytes(b"theirs")  # another writer, not using the lock
    assert target.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["new.h5"]


def test_a_write_in_progress_elsewhere_is_refused_at_once(tmp_path, scan):
    target = tmp_path / "busy.h5"
    holder = _python(
        """
        import sys, time
        from py4dstem_ccstae.io import reserve_output
        with reserve_output(sys.argv[1]):
            print("held", flush=True)
            time.sleep(60)
        """,
        target,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputExistsError, match="being written by another process"):
            with atomic_write(target):
                pass
        # the command line finds it before reading or training anything
        t0 = time.perf_counter()
        src = tmp_path / "scan.h5"
        shutil.copy(os.devnull, src)  # never read: the reservation fails first
        with pytest.raises(OutputExistsError, match="--out: .*being written"):
            cli_mod.run_fit(src, out=target, progress=False)
        assert time.perf_counter() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    # the lock of the killed holder is stale: taken over
    with atomic_write(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"ok")
    assert target.read_bytes() == b"ok"
    assert sorted(os.listdir(tmp_path)) == ["busy.h5", "scan.h5"]


# ------------------------------------------------------ 3, 7, 11: checkpoint
def test_checkpoint_never_replaces_a_foreign_file(scan, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("my notes")
    kw = dict(progress=False, device="cpu", checkpoint=text)
    with pytest.raises(OutputExistsError, match="not a CCSTAE training checkpoint"):
        CCSTAE(**FAST).fit(scan, **kw)
    with pytest.raises(ValueError, match="not a CCSTAE training checkpoint; cannot resume"):
        CCSTAE(**FAST).fit(scan, resume=True, **kw)
    assert text.read_text() == "my notes"
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        CCSTAE(**FAST).fit(scan, resume=True, progress=False)
    with pytest.raises(ValueError, match="resume must be True or False"):
        CCSTAE(**FAST).fit(scan, resume="yes", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CCSTAE(**FAST).fit(scan, overwrite=True, **kw)
    assert torch.load(text, weights_only=True)["options"]  # replaced, as asked


def test_checkpoint_location_is_probed_before_training(scan, tmp_path, monkeypatch):
    import py4dstem_ccstae.fitting as est  # where fit trains

    monkeypatch.setattr(est, "fit_network", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match="checkpoint: .* is a folder"):
        CCSTAE(**FAST).fit(scan, progress=False, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="checkpoint: folder .* does not exist"):
        CCSTAE(**FAST).fit(scan, progress=False, checkpoint=tmp_path / "no" / "c.pt")
    if os.path.isdir("/proc"):
        with pytest.raises(ValueError, match="checkpoint: cannot create a file in folder"):
            CCSTAE(**FAST).fit(scan, progress=False, checkpoint="/proc/c.pt")
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        CCSTAE(**FAST).fit(scan, progress=False, checkpoint=3)
    assert os.listdir(tmp_path) == []


def test_resuming_with_other_network_options_names_them(scan, tmp_path):
    ckpt = tmp_path / "c.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CCSTAE(**{**FAST, "epochs": 1}).fit(
            scan, progress=False, device="cpu", checkpoint=ckpt
        )
    with pytest.raises(ValueError, match=r"other options: width=16 \(this fit: 32\)"):
        CCSTAE(**{**FAST, "width": 32}).fit(
            scan, progress=False, device="cpu", checkpoint=ckpt, resume=True
        )
    # a checkpoint of an older version (no options recorded): the shapes say it
    state = torch.load(ckpt, weights_only=True)
    del state["options"]
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="network of another shape .*width"):
        CCSTAE(**{**FAST, "width": 32}).fit(
            scan, progress=False, device="cpu", checkpoint=ckpt, resume=True
        )


# --------------------------------------------- 4, 5, 6: no valid-looking maps
def test_positions_whose_spots_fall_off_the_detector_are_invalid(model, scan):
    pred = model.predict(scan)
    assert pred["valid"].all()
    ox, oy = (np.asarray(v, float) for v in scan.calibration.get_origin())
    for shift, expect_valid in ((2, True), (30, False)):
        dc = copy.deepcopy(scan)
        dc.data = np.roll(dc.data, shift, axis=2)
        dc.calibration.set_origin((ox + shift, oy))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rs = model.strain_map(dc)
        mask = rs.get_slice("mask").data
        flagged = [w for w in caught if "off the detector" in str(w.message)]
        if expect_valid:
            assert mask.all() and not flagged
        else:
            assert not mask.any() and flagged
            assert np.isnan(rs.get_slice("e_xx").data).all()
    # only the positions whose origin moved are flagged
    dc = copy.deepcopy(scan)
    ox2 = ox.copy()
    ox2[:4] += 30
    dc.calibration.set_origin((ox2, oy))
    with pytest.warns(UserWarning, match="at 32 of 64 positions"):
        valid = model.predict(dc)["valid"]
    assert not valid[:4].any()


# ------------------------------------------------ 8: damaged model files
_MD = "ccstae/ccstae_model/metadatabundle/ccstae_model"


def _truncate(p):
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)


def _drop_key(p):
    with h5py.File(p, "a") as f:
        del f[_MD + "/fitted"]


def _not_json(p):
    with h5py.File(p, "a") as f:
        attrs = dict(f[_MD + "/config"].attrs)
        del f[_MD + "/config"]
        f[_MD + "/config"] = "{not json"
        f[_MD + "/config"].attrs.update(attrs)


def _drop_bases(p):
    with h5py.File(p, "a") as f:
        del f["ccstae/ccstae_model/bases"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, "cannot be read as a CCSTAE model .*truncated"),
        (_drop_key, "metadata of 'ccstae_model' lacks fitted"),
        (_not_json, "metadata 'config' of 'ccstae_model' is not valid JSON"),
        (_drop_bases, "has lost its 'bases' array"),
    ],
)
def test_damaged_model_files_give_a_value_error_naming_the_file(
    saved, tmp_path, damage, message, capsys
):
    p = tmp_path / "damaged.h5"
    shutil.copy(saved, p)
    damage(p)
    with pytest.raises(ValueError, match=f"path: '{p}'.*{message}"):
        CCSTAE.load(p)
    # the command line: exit 2 with the message (no traceback)
    assert cli_mod.main(["predict", str(p), str(p)]) == 2
    assert f"MODEL: '{p}'" in capsys.readouterr().err


# ------------------------------------------ 13, 7: the command line's outputs
def test_cli_output_errors_name_flags_and_come_before_training(
    scan, tmp_path, monkeypatch, capsys
):
    import py4DSTEM

    src = tmp_path / "scan.h5"
    py4DSTEM.save(str(src), scan)
    out = tmp_path / "out.h5"
    out.write_bytes(b"x")
    monkeypatch.setattr(CCSTAE, "fit", lambda *a, **k: pytest.fail("trained"))
    assert cli_mod.main(["fit", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out:" in err and "--force" in err and "overwrite=True" not in err
    if os.path.isdir("/proc"):
        assert cli_mod.main(["fit", str(src), "--out", "/proc/x.h5"]) == 2
        assert "--out: cannot create a file in folder '/proc'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["out.h5", "scan.h5"]


def test_cli_keeps_the_result_when_the_final_write_fails(
    model, scan, tmp_path, monkeypatch
):
    import py4DSTEM

    import py4dstem_ccstae.io as io_mod

    src = tmp_path / "scan.h5"
    py4DSTEM.save(str(src), scan)
    real = io_mod.save_emd
    calls = []

    def fail_first(path, node, **kw):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(path, node, **kw)

    monkeypatch.setattr(io_mod, "save_emd", fail_first)
    with pytest.raises(ValueError, match="--out: writing .* failed .*saved to '(.*)'") as e:
        cli_mod.run_predict(model, src, out=tmp_path / "out.h5")
    rescue = str(e.value).split("saved to '")[1].split("'")[0]
    try:
        assert py4DSTEM.read(rescue, datapath=cli_mod.STRAIN_DATAPATH).data.shape[0] == 7
    finally:
        os.remove(rescue)
    assert not (tmp_path / "out.h5").exists()


def test_cli_refine_steps_and_set_refine_must_agree(tmp_path, capsys):
    src = tmp_path / "x.h5"
    src.write_bytes(b"")
    code = cli_mod.main(["fit", str(src), "--set", "refine=false", "--refine-steps", "5"])
    assert code == 2
    assert "--refine-steps 5 contradicts --set refine=false" in capsys.readouterr().err


# ------------------------------------------- 15: stale temporary files
def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "m.h5"
    host = "".join(c if c.isalnum() or c == "_" else "_" for c in socket.gethostname())
    dead = tmp_path / f".m.h5.ccstae-{host}-{_dead_pid()}-abcd1234.tmp"
    live = tmp_path / f".m.h5.ccstae-{host}-{os.getpid()}-abcd1234.tmp"
    remote = tmp_path / ".m.h5.ccstae-otherhost-1-abcd1234.tmp"
    old = tmp_path / ".m.h5.k2j4h5g6.tmp"  # an older version's name
    other = tmp_path / f".n.h5.ccstae-{host}-{_dead_pid()}-abcd1234.tmp"
    for p in (dead, live, remote, old, other):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    with atomic_write(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    left = sorted(os.listdir(tmp_path))
    assert left == sorted(["m.h5", live.name, remote.name, other.name])
    assert clean_stale_temporaries(tmp_path / "n.h5") == [other]


# ------------------------------------------- kills: save and fit, resumed
KILLED_SAVE = """
import sys, os, h5py
from py4dstem_ccstae import CCSTAE
m = CCSTAE.load(sys.argv[1])
real = h5py.File.close
def stop(self):  # the moment the temporary file is half written
    print("writing", flush=True)
    import time; time.sleep(60)
h5py.File.close = stop
m.save(sys.argv[2], overwrite=True)
"""


def test_a_save_killed_mid_write_keeps_the_old_file_and_its_temp_is_removed(
    saved, model, tmp_path
):
    target = tmp_path / "m.h5"
    shutil.copy(saved, target)
    before = target.read_bytes()
    proc = _python(KILLED_SAVE, saved, target)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == before
    temps = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(temps) == 1 and f"-{proc.pid}-" in temps[0]
    model.save(target, overwrite=True)
    assert os.listdir(tmp_path) == ["m.h5"]
    CCSTAE.load(target)


KILLED_FIT = """
import sys, os, signal, json
import numpy as np, warnings
warnings.simplefilter("ignore")
from py4dstem_ccstae import CCSTAE
from py4dstem_ccstae.simulate import polycrystal
import py4dstem_ccstae.train as train
dc, _ = polycrystal(scan_shape=(6, 6), pattern_shape=(64, 64), num_grains=3, seed=1)
kw = json.loads(sys.argv[1])
ckpt, kill_after = sys.argv[2], int(sys.argv[3])
import torch
torch.set_num_threads(int(sys.argv[4]))  # as the parent: same float reductions
real = train._save_checkpoint
def save(path, state):
    real(path, state)
    if len(json.loads(state["history"])) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
train._save_checkpoint = save
m = CCSTAE(**kw).fit(dc, seed=0, progress=False, device="cpu", checkpoint=ckpt,
                     resume=True)
print(len(m.history_))
"""


def test_a_fit_killed_mid_training_resumes_to_the_same_network(tmp_path):
    kw = dict(size=32, epochs=4, batch_size=12, refine=False, coarse_epochs=1)
    kw["min_sensitivity"] = 0.0
    ckpt = tmp_path / "c.pt"
    proc = _python(KILLED_FIT, json.dumps(kw), ckpt, 2, torch.get_num_threads())
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert len(json.loads(torch.load(ckpt, weights_only=True)["history"])) == 2
    dc, _ = polycrystal(scan_shape=(6, 6), pattern_shape=(64, 64), num_grains=3, seed=1)
    resumed = CCSTAE(**kw).fit(
        dc, seed=0, progress=False, device="cpu", checkpoint=ckpt, resume=True
    )
    full = CCSTAE(**kw).fit(dc, seed=0, progress=False, device="cpu")
    assert len(resumed.history_) == len(full.history_) == 4
    for k, v in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[k], v, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


# ------------------------------------------ 16: --checkpoint / --resume
def test_cli_fit_checkpoint_and_resume(scan, tmp_path, capsys):
    import py4DSTEM

    src = tmp_path / "scan.h5"
    py4DSTEM.save(str(src), scan)
    ckpt = tmp_path / "c.pt"
    args = ["fit", str(src), "--epochs", "2", "--checkpoint", str(ckpt)]
    args += ["--set", "size=32", "--set", "min_sensitivity=0"]
    assert cli_mod.main([*args, "--out", str(tmp_path / "a.h5")]) == 0
    assert len(json.loads(torch.load(ckpt, weights_only=True)["history"])) >= 1
    capsys.readouterr()
    # resuming a finished checkpoint trains no further and gives the same model
    assert cli_mod.main([*args, "--resume", "--out", str(tmp_path / "b.h5")]) == 0
    a, b = CCSTAE.load(tmp_path / "a.h5"), CCSTAE.load(tmp_path / "b.h5")
    for k, v in a.net.state_dict().items():
        torch.testing.assert_close(b.net.state_dict()[k], v, rtol=0, atol=0)
    assert cli_mod.main(["fit", str(src), "--resume"]) == 2
    assert "--resume needs --checkpoint" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("keep")
    code = cli_mod.main(["fit", str(src), "--checkpoint", str(tmp_path / "notes.txt")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--checkpoint:" in err and "--force" in err
    assert (tmp_path / "notes.txt").read_text() == "keep"
