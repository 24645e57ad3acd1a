"""The ``benchmark`` sub-command and :mod:`py4dstem_ccstae.benchmark`."""

import csv
import json
import re
import shlex
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from py4dstem_ccstae import benchmark as bm
from py4dstem_ccstae.cli import main

PAPER_TEXT = Path("/work/shared/seed/ccstae-paper.txt")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A tiny CC-ST-AE budget: these tests check the plumbing, not accuracy.
TINY_MODEL = json.dumps({"epochs": 1, "refine": False, "min_sensitivity": 0})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``benchmark --quick`` end to end on a 5x5 scan; returns (out folder, argv)."""
    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    # the quick settings, shrunk further: 5x5 scan, two levels, two dynamical grains
    mp.setitem(bm.QUICK, "scan", 5)
    mp.setitem(bm.QUICK, "levels", (0.0, 25.0))
    mp.setitem(bm.QUICK, "dynamical_grains", 2)
    argv = ["benchmark", "--quick", "--ccstae-config", TINY_MODEL, "--out", str(out)]
    try:
        rc = main(argv)
    finally:
        mp.undo()
    assert rc == 0
    return out, argv


def test_quick_benchmark_end_to_end(quick_run):
    out, argv = quick_run
    for name in bm.OUTPUT_FILES.values():
        assert (out / name).stat().st_size > 0, name
    for name in ("mae_vs_noise.png", "strain_maps.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind

    doc = json.loads((out / "benchmark.json").read_text())
    command = shlex.join(["py4dstem-ccstae", *argv])
    assert doc["meta"]["command"] == command
    assert f"Command: `{command}`" in (out / "benchmark.md").read_text()
    assert doc["settings"]["scan"] == [5, 5]
    assert doc["settings"]["ccstae_config"]["epochs"] == 1

    # every case and level has both methods with finite numbers
    got = {(r["case"], r["noise"], r["method"]) for r in doc["rows"]}
    want = {
        (case, level, m)
        for case, levels in (
            ("noise sweep", (0.0, 25.0)),
            ("full rotation", (0.0,)),
            ("dynamical", (0.0, 25.0)),
        )
        for level in levels
        for m in ("CC-ST-AE", "py4DSTEM")
    }
    assert got == want
    keys = ("mae_e_xx", "mae_e_yy", "mae_e_xy", "mae_theta_deg", "valid_fraction")
    for r in doc["rows"]:
        assert r["error"] == ""
        assert all(np.isfinite(r[k]) for k in keys), r
        assert r["seconds"] > 0 and r["patterns_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["theta_symmetry"] == (4 if r["case"] == "full rotation" else 1)
        if r["method"] == "CC-ST-AE":  # lock-on record (check off: one attempt)
            assert r["attempts"] == 1 and np.isfinite(r["sensitivity"])
        else:
            assert r["attempts"] is None and r["sensitivity"] is None  # NaN in JSON
    assert len(doc["ratios"]) == 5
    dyn = doc["settings"]["cases"]["dynamical"]
    assert dyn["dynamical"] and dyn["num_grains"] == 2

    # the Markdown table: one row per level and method, and a ratio row
    md = (out / "benchmark.md").read_text()
    sweep = md.split("## noise sweep")[1].split("## ")[0]
    for level in ("0", "25"):
        for m in ("CC-ST-AE", "py4DSTEM", "ratio"):
            (line,) = [
                ln for ln in sweep.splitlines() if ln.startswith(f"| {level} | {m} |")
            ]
            cells = [c.strip() for c in line.strip("|").split("|")][2:6]
            assert all(np.isfinite(float(c)) for c in cells), line
    assert "## full rotation" in md and "## dynamical" in md
    assert "![MAE vs noise](mae_vs_noise.png)" in md

    # the CSV holds the same rows plus the ratio rows
    with open(out / "benchmark.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(doc["rows"]) + len(doc["ratios"])
    assert sum(r["method"].startswith("ratio") for r in rows) == 5


def test_refuses_to_overwrite_without_force(quick_run, capsys):
    out, _ = quick_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc = main(["benchmark", "--quick", "--out", str(out)])
    assert rc == 2
    assert "--force" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def _fake_result(levels=(0.0, 25.0, 50.0), n=5, seed=0) -> bm.BenchmarkResult:
    """A BenchmarkResult made of random numbers, to test writing without running."""
    rng = np.random.default_rng(seed)
    rows = []
    for case, lv in (("noise sweep", levels), ("full rotation", (0.0,))):
        for level in lv:
            for m in bm.METHODS:
                rows.append(
                    {
                        "case": case,
                        "noise": level,
                        "method": m,
                        **{k: float(rng.uniform(1e-4, 3e-3)) for k in bm._MAE.values()},
                        "valid_fraction": 1.0,
                        "theta_symmetry": 4 if case == "full rotation" else 1,
                        "positions": n * n,
                        "seconds": 1.0,
                        "patterns_per_s": float(n * n),
                        "peak_rss_mb": 100.0,
                        "error": "",
                    }
                )
    rows[1].update(mae_e_xx=float("nan"), error="RuntimeError: no lattice")
    maps = {
        name: {k: rng.normal(0, 0.01, (n, n)) for k in bm.KEYS}
        for name in ("truth", *bm.METHODS)
    }
    figure = {
        "noise": 25.0,
        "position": (2, 2),
        "clean": rng.random((32, 32)),
        "noisy": rng.random((32, 32)),
        "grain": rng.integers(0, 3, (n, n)),
        "maps": maps,
    }
    settings = {
        "scan": [n, n],
        "pattern_shape": [32, 32],
        "seed": seed,
        "noise_levels": list(levels),
        "noise_model": "test",
        "ccstae_config": {},
        "cases": {
            "noise sweep": {
                "description": "test",
                "simulation": "polycrystal()",
                "num_grains": 3,
                "dynamical": False,
                "thickness_A": None,
                "noise_levels": list(levels),
                "theta_symmetry": 1,
            },
            "full rotation": {
                "description": "test",
                "simulation": "polycrystal(rotation_range='full')",
                "num_grains": 3,
                "dynamical": False,
                "thickness_A": None,
                "noise_levels": [0.0],
                "theta_symmetry": 4,
            },
        },
    }
    return bm.BenchmarkResult(rows=rows, settings=settings, figure=figure)


def test_writing_and_plots_with_agg(tmp_path):
    assert matplotlib.get_backend().lower() == "agg"
    res = _fake_result()
    paths = bm.write_results(res, tmp_path / "r", "cmd --x 'a b'")
    assert set(paths) == set(bm.OUTPUT_FILES)
    for p in paths.values():
        assert p.stat().st_size > 0
    md = paths["markdown"].read_text()
    assert "Command: `cmd --x 'a b'`" in md
    assert "failed: RuntimeError: no lattice" in md
    assert (
        "Theta error modulo 90 deg" in md
    )  # the full-rotation case's symmetry-aware theta
    doc = json.loads(paths["json"].read_text())
    assert doc["rows"][1]["mae_e_xx"] is None  # NaN is written as null
    assert doc["paper"]["e_xx"]["py4DSTEM"][0] == bm.PAPER_MAE["e_xx"]["py4DSTEM"][0]
    # the ratio of a failed method is undefined, not a number
    assert np.isnan(res.ratios()[0]["ratio_e_xx"])

    # existing results are kept unless forced, and no temporary is left behind
    mtime = paths["markdown"].stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="force"):
        bm.write_results(res, tmp_path / "r", "again")
    assert paths["markdown"].stat().st_mtime_ns == mtime
    bm.write_results(res, tmp_path / "r", "again", force=True)
    assert "Command: `again`" in paths["markdown"].read_text()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(
        bm.OUTPUT_FILES.values()
    )

    # without the noise sweep there is no Figure-2 panel
    res.figure = None
    paths = bm.write_results(res, tmp_path / "r2", "cmd")
    assert (
        "strain_maps" not in paths and "![strain maps" not in paths["markdown"].read_text()
    )


def test_paper_table_is_consistent():
    p = bm.PAPER_MAE
    assert tuple(p["noise"]) == bm.PAPER_LEVELS
    for k in ("e_xx", "e_yy", "e_xy"):
        for m in bm.METHODS:
            assert len(p[k][m]) == len(bm.PAPER_LEVELS)
    # the ratios quoted in the notes: about 0.56 at 50 % and 0.41 at 70 % for e_xx
    i50, i70 = bm.PAPER_LEVELS.index(50), bm.PAPER_LEVELS.index(70)
    assert p["e_xx"]["CC-ST-AE"][i50] / p["e_xx"]["py4DSTEM"][i50] == pytest.approx(
        0.56, 0.01
    )
    assert p["e_xx"]["CC-ST-AE"][i70] / p["e_xx"]["py4DSTEM"][i70] == pytest.approx(
        0.41, 0.01
    )


@pytest.mark.skipif(not PAPER_TEXT.exists(), reason="paper text not available")
def test_paper_table_matches_paper_text():
    """:data:`PAPER_MAE` is the paper's Figure 3 table, number for number."""
    table = {}
    for line in PAPER_TEXT.read_text().splitlines():
        m = re.fullmatch(r"(\d+)%?\t([\d.]+(?:\t[\d.]+){5})", line.strip())
        if m:
            table[float(m.group(1))] = [float(v) for v in m.group(2).split("\t")]
    assert sorted(table) == list(bm.PAPER_LEVELS)
    for i, level in enumerate(bm.PAPER_LEVELS):
        x = table[level]
        p = bm.PAPER_MAE
        assert x == [
            p["e_xx"]["py4DSTEM"][i],
            p["e_xx"]["CC-ST-AE"][i],
            p["e_yy"]["py4DSTEM"][i],
            p["e_yy"]["CC-ST-AE"][i],
            p["e_xy"]["py4DSTEM"][i],
            p["e_xy"]["CC-ST-AE"][i],
        ]


@pytest.mark.parametrize(
    "extra",
    [
        ["--levels", "0,150"],
        ["--levels", "a"],
        ["--scan", "1"],
        ["--ccstae-config", "[1]"],
        ["--ccstae-config", "{bad"],
    ],
)
def test_bad_arguments_exit_2(extra, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", *extra, "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_unknown_model_option_exits_2_before_running(tmp_path, capsys):
    rc = main(["benchmark", "--ccstae-config", '{"bogus": 1}', "--out", str(tmp_path)])
    assert rc == 2
    assert "bogus" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
