"""Distributed and lazy prediction: row blocks equal the single-process result.

A ``LocalCluster`` of two worker processes (one thread each) maps a scan from
an EMD path and from an in-memory DataCube; a worker killed mid-run loses no
result.
"""

import os
import platform
import signal
import subprocess
import sys
import warnings

import numpy as np
import py4DSTEM
import pytest

from py4dstem_ccstae import CCSTAE
from py4dstem_ccstae import distributed as dist_mod
from py4dstem_ccstae.simulate import polycrystal

#: float32 rounding of the resampled patterns, carried through the refinement
TOL = 1e-6


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    dc, truth = polycrystal(
        scan_shape=(12, 8), pattern_shape=(96, 96), num_grains=3, seed=2
    )
    path = tmp_path_factory.mktemp("dist") / "scan.h5"
    py4DSTEM.save(str(path), dc, mode="o")
    return dc, path


@pytest.fixture(scope="module")
def model(scan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CCSTAE(
            size=32, epochs=3, batch_size=12, coarse_epochs=1, min_sensitivity=0
        ).fit(scan[0], progress=False, device="cpu")


@pytest.fixture(scope="module")
def expected(model, scan):
    return model.predict(scan[0])


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # dask writes its workers' OMP_NUM_THREADS=1 into this process's
    # environment too (seen by later subprocesses): restored afterwards
    saved = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
    os.environ.clear()
    os.environ.update(saved)


def _same(a: dict, b: dict, tol: float = TOL) -> None:
    assert (a["class"] == b["class"]).all() and (a["valid"] == b["valid"]).all()
    np.testing.assert_allclose(a["A"], b["A"], rtol=0, atol=tol)
    # the residual is a float32 sum over a whole pattern: blocks of other sizes
    # (the rotation search's FFTs and the refinement batch by block) round it
    # differently, by up to ~10 float32 ulp (measured 1.3e-6 relative)
    np.testing.assert_allclose(a["error"], b["error"], rtol=10 * tol, atol=0)


def test_a_path_is_read_lazily_in_blocks_with_the_same_result(model, scan, expected):
    dc, path = scan
    for block_rows in (None, 5, 1):
        _same(model.predict(path, block_rows=block_rows), expected)
    with pytest.raises(ValueError, match="block_rows must be an int >= 1"):
        model.predict(path, block_rows=0)
    with pytest.raises(ValueError, match="datapath: only used when data is a file path"):
        model.predict(dc, datapath="x")
    with pytest.raises(ValueError, match="is not a file"):
        model.predict(path.with_name("missing.h5"))


def test_a_small_file_is_read_once_in_one_process(model, scan, expected, monkeypatch):
    # without a client a path is opened lazily and read as a DataCube: a scan
    # that fits the cache is read once (statistics and cache in one pass)
    import py4dstem_ccstae.io as io

    dc, path = scan
    opened = io.open_datacube
    read = {"values": 0}

    class Counting:
        def __init__(self, data):
            self._data = data
            self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

        def __getitem__(self, key):
            out = self._data[key]
            read["values"] += np.size(out)
            return out

    def counting_open(*args, **kwargs):
        cube = opened(*args, **kwargs)
        return py4DSTEM.DataCube(data=Counting(cube.data), calibration=cube.calibration)

    monkeypatch.setattr(io, "open_datacube", counting_open)
    _same(model.predict(path), expected)
    assert read["values"] == np.size(dc.data)


def test_opening_a_file_survives_emdfiles_import_race(scan, monkeypatch):
    # emdfile walks sys.modules while it reads; an import in another thread
    # of a dask worker makes that walk raise (seen in benchmarks/large_data.py)
    import emdfile

    import py4dstem_ccstae.io as io

    dc, path = scan
    real, calls = emdfile.read, {"n": 0}

    def racing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("dictionary changed size during iteration")
        return real(*args, **kwargs)

    monkeypatch.setattr(emdfile, "read", racing)
    cube = io.open_datacube(path)
    assert calls["n"] == 3
    assert cube.calibration.get_Q_pixel_size() == dc.calibration.get_Q_pixel_size()
    # any other error, and the race once it outlasts the attempts, propagates
    calls["n"] = -10
    with pytest.raises(RuntimeError, match="changed size"):
        io.open_datacube(path)
    assert calls["n"] == -10 + io.EMD_READ_ATTEMPTS

    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(emdfile, "read", broken)
    with pytest.raises(RuntimeError, match="something else"):
        io.open_datacube(path)


def test_an_uncalibrated_origin_is_measured_on_blocks_as_in_one_process(
    model, scan, tmp_path
):
    dc, _ = scan
    bare = py4DSTEM.DataCube(data=np.asarray(dc.data))
    bare.calibration.set_Q_pixel_size(dc.calibration.get_Q_pixel_size())
    bare.calibration.set_Q_pixel_units(dc.calibration.get_Q_pixel_units())
    path = tmp_path / "bare.h5"
    py4DSTEM.save(str(path), bare, mode="o")
    with pytest.warns(UserWarning, match="no origin calibration"):
        one = model.predict(bare)
    with pytest.warns(UserWarning, match="no origin calibration"):
        blocks = model.predict(path, block_rows=3)
    _same(blocks, one)


def test_cluster_strain_map_equals_one_process(model, scan, client):
    dc, path = scan
    reference = np.zeros(dc.data.shape[:2], bool)
    reference[:4] = True
    one = model.strain_map(py4DSTEM.read(str(path)), reference=reference)
    for data in (path, dc):  # each task reads its rows / blocks scattered
        rs = model.strain_map(data, reference=reference, client=client, block_rows=3)
        assert rs.slicelabels == one.slicelabels
        np.testing.assert_allclose(rs.data, one.data, rtol=0, atol=TOL, equal_nan=True)


def test_a_worker_killed_mid_run_loses_no_result(
    model, scan, expected, client, monkeypatch
):
    _, path = scan
    pids = client.run(os.getpid)
    real = dist_mod._gather
    killed = []

    def gather_and_kill(cl, futures, resubmit=None):
        if not killed and len(futures) > 1:
            futures[0].result()  # the run is under way: kill a worker now
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        return real(cl, futures, resubmit)

    monkeypatch.setattr(dist_mod, "_gather", gather_and_kill)
    pred = model.predict(path, client=client, block_rows=1)
    assert killed
    _same(pred, expected)
    client.wait_for_workers(2, timeout=60)
    assert killed[0] not in client.run(os.getpid).values()


def test_batch_maps_every_scan_and_reports_a_corrupt_one(model, scan, tmp_path, capsys):
    from py4dstem_ccstae import cli
    from py4dstem_ccstae.workflows import predict_batch

    dc, path = scan
    good = [tmp_path / "a.h5", tmp_path / "b.h5"]
    for p in good:
        py4DSTEM.save(str(p), dc, mode="o")
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an HDF5 signature, no file
    model_path = tmp_path / "model.h5"
    model.save(model_path)
    out = tmp_path / "out"
    out.mkdir()
    records = predict_batch(model_path, [good[0], bad, good[1]], out_dir=out)
    assert [r["ok"] for r in records] == [True, False, True]
    assert "broken.h5" in records[1]["error"]
    assert sorted(os.listdir(out)) == ["a_ccstae.h5", "b_ccstae.h5"]
    one = model.strain_map(dc)
    for name in ("a_ccstae.h5", "b_ccstae.h5"):
        rs = py4DSTEM.read(str(out / name), datapath=cli.STRAIN_DATAPATH)
        np.testing.assert_allclose(rs.data, one.data, rtol=0, atol=TOL, equal_nan=True)
    # the command line: same batch, existing outputs refused per scan, exit 1
    code = cli.main(
        ["predict", str(model_path), str(good[0]), str(bad), "--out-dir", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "0 of 2 scans mapped, 2 failed" in captured.out
    assert "--force" in captured.err and "broken.h5" in captured.err
    with pytest.raises(ValueError, match="would both write"):
        predict_batch(model_path, [good[0], good[0]], out_dir=out)


def test_cli_predict_on_a_local_cluster(model, scan, tmp_path, capsys):
    from py4dstem_ccstae import cli

    dc, path = scan
    model_path = tmp_path / "model.h5"
    model.save(model_path)
    out = tmp_path / "o.h5"
    code = cli.main(
        ["predict", str(model_path), str(path), "--out", str(out), "--workers", "2"]
    )
    assert code == 0, capsys.readouterr().err
    rs = py4DSTEM.read(str(out), datapath=cli.STRAIN_DATAPATH)
    np.testing.assert_allclose(rs.data, model.strain_map(dc).data, atol=TOL, equal_nan=True)
    assert (
        cli.main(["predict", str(model_path), str(path), str(path), "--out", "x.h5"]) == 2
    )
    assert "only with one INPUT" in capsys.readouterr().err


def test_training_reads_its_subset_block_by_block(model, scan, client):
    from py4dstem_ccstae import DiffractionInputs
    from py4dstem_ccstae.distributed import training_patterns

    dc, path = scan
    opts = model._input_options(fitted={})
    idx = np.array([0, 5, 17, 40, 41, 95])
    expected = DiffractionInputs.from_datacube(dc, **opts).batch(idx)
    for kw in ({}, {"client": client}):
        inputs, got_idx, X = training_patterns(
            path, opts, lambda n: idx, block_rows=2, **kw
        )
        assert inputs.n_patterns == 96 and (got_idx == idx).all()
        np.testing.assert_allclose(X, expected, rtol=0, atol=1e-6)
    # fit from a path on the cluster: a sound model, as from the DataCube
    kw = dict(size=32, epochs=3, batch_size=12, coarse_epochs=1, min_sensitivity=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        remote = CCSTAE(**kw).fit(path, progress=False, device="cpu", client=client)
    assert remote.fitted_["train_patterns"] == 96
    assert remote.fitted_["q_max"] == pytest.approx(model.fitted_["q_max"])
    rs, one = remote.strain_map(dc), model.strain_map(dc)
    assert rs.get_slice("mask").data.mean() == one.get_slice("mask").data.mean()


def test_a_scan_too_large_for_the_cache_takes_its_statistics_from_a_subset(
    model, scan, client, monkeypatch
):
    import py4dstem_ccstae.adapters as adapters

    dc, path = scan
    monkeypatch.setattr(adapters, "CACHE_MB", 0.0)  # nothing fits: streamed
    monkeypatch.setattr(adapters, "STATS_PATTERNS", 10)
    inputs = adapters.DiffractionInputs.from_datacube(dc, **model._input_options())
    subset = inputs.stats_indices()  # whole rows, at least 10 patterns
    assert inputs._cache is None and len(subset) == 16
    assert np.unique(subset // 8).tolist() == [0, 11]
    one = model.predict(dc)
    _same(model.predict(path, block_rows=5), one)
    _same(model.predict(path, client=client, block_rows=5), one)


@pytest.mark.skipif(
    not os.path.exists("/proc/self/environ") or platform.libc_ver()[0] != "glibc",
    reason="glibc on Linux only",
)
def test_a_process_started_with_dasks_malloc_setting_gets_its_mmap_threshold_back():
    # dask's nannies start workers with MALLOC_TRIM_THRESHOLD_, which fixes
    # glibc's mmap threshold at 128 KiB (block tasks ran 2.4x slower); tasks
    # set it back once per process, and only in such a process
    code = (
        "from py4dstem_ccstae import distributed as d; "
        "print(d._restore_mmap_threshold(), d._restore_mmap_threshold())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for extra, expected in (
        ({"MALLOC_TRIM_THRESHOLD_": "65536"}, "True False"),
        ({}, "False False"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == expected
