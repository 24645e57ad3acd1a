"""The standalone benchmark scripts: shared metadata and the Cramer-Rao bound."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _meta
        import coarse_to_fine
        import crlb
        import refinement

        yield {"meta": _meta, "crlb": crlb, "refine": refinement, "c2f": coarse_to_fine}
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_run_meta_and_write(scripts, tmp_path):
    meta = scripts["meta"].run_meta("x.py", ["--a", "1"])
    assert meta["command"] == "python benchmarks/x.py --a 1"
    assert {"date", "machine", "git", "threads"} <= set(meta)
    scripts["meta"].write(tmp_path / "o", "x", {"k": 1}, "# x\n")
    assert json.loads((tmp_path / "o" / "x.json").read_text()) == {"k": 1}
    assert (tmp_path / "o" / "x.md").read_text() == "# x\n"


def test_cramer_rao_bound_behaves(scripts, tmp_path):
    crlb = scripts["crlb"]
    b = crlb.bounds([25.0, 50.0, 70.0], positions=3)
    for c in crlb.COMPONENTS:
        det = [b[lv]["detector"][c] for lv in (25.0, 50.0, 70.0)]
        binned = [b[lv]["binned_2x2"][c] for lv in (25.0, 50.0, 70.0)]
        assert det == sorted(det) and 1e-4 < det[0] < 2e-3, c  # more noise, larger
        assert all(d < s for d, s in zip(det, binned, strict=True)), c  # binning loses
    # Poisson: for the same pattern, the signal counts scale with (1 - w),
    # so the bound grows at least like 1 / sqrt(1 - w)
    r = b[70.0]["detector"]["e_xx"] / b[25.0]["detector"]["e_xx"]
    assert r > (0.75 / 0.3) ** 0.5
    # main: bound beside the measured MAE of a benchmark.json
    bench = {
        "meta": {"versions": {"git_commit": "abc"}},
        "settings": {"noise_levels": [0.0, 50.0]},
        "rows": [
            {
                "case": "noise sweep",
                "noise": 50.0,
                "method": m,
                **{f"mae_{c}": v for c in crlb.COMPONENTS},
            }
            for m, v in (("CC-ST-AE", 6e-4), ("py4DSTEM", 1.2e-3))
        ],
    }
    (tmp_path / "benchmark.json").write_text(json.dumps(bench))
    assert crlb.main(["--positions", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "crlb.json").read_text())["rows"]
    assert [r["noise"] for r in rows] == [50.0] * 3
    assert rows[0]["ccstae"] == 6e-4 and rows[0]["py4dstem"] == 1.2e-3
    md = (tmp_path / "crlb.md").read_text()
    assert "| 50 | e_xx |" in md and "(git abc)" in md


def test_markdown_tables(scripts):
    row = dict(noise=50.0, mae_e_xx=6e-4, mae_e_yy=6e-4, mae_e_xy=4e-4, mae_theta_deg=0.03)
    res = dict(command="c", date="d", machine="m", threads=2, git="g", repeats=3)
    md = scripts["refine"].markdown(
        {
            **res,
            "rows": [
                {
                    **row,
                    "variant": "refine_size=128",
                    "predict_s": 9.0,
                    "patterns_per_s": 455.0,
                }
            ],
        }
    )
    assert "| 50 | refine_size=128 | 0.600 | 0.600 | 0.400 | 0.030 | 9.0 | 455 |" in md
    assert "noise-sweep data" in md
    md = scripts["refine"].markdown({**res, "case": "dynamical", "rows": []})
    assert "dynamical (Bloch-wave) data" in md
    assert scripts["refine"]._label({}) == "defaults"
    assert scripts["refine"]._label({"refine_size": 128, "background": "radial"}) == (
        "refine_size=128, background=radial"
    )
    c2f = {"seed": 0, "coarse_sigma": 3.0, "epochs": 12, "fit_s": 80.0, "sensitivity": 0.3}
    for tag in ("encoder", "refined"):
        c2f.update({f"{tag}_{k}": v for k, v in row.items() if k != "noise"})
    md = scripts["c2f"].markdown({**res, "rows": [{**row, **c2f}]})
    assert "| 50 | 0 | 3 | 12 | 80 | 0.300 |" in md


@pytest.fixture()
def multislice(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "benchmarks" / "multislice"))
    try:
        import abtem_worker
        import multislice

        monkeypatch.setattr(multislice, "DATA", tmp_path)
        yield multislice, abtem_worker
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "multislice"))
        sys.path.remove(str(ROOT / "benchmarks"))


def test_multislice_detector_puts_k0_at_the_recorded_origin(multislice):
    import numpy as np

    _, worker = multislice
    job = {"box": 80.0, "sampling": 0.1, "bin": 2, "size": 128}
    N = 800
    far = np.zeros((N, N))
    far[N // 2, N // 2] = 1.0  # k = 0 of an fftshifted far field
    far[N // 2 + 40, N // 2] = 2.0  # k = (40 / box, 0): 20 binned pixels further
    out = worker._detector(far, job)
    o = np.asarray(worker.origin(job))
    assert out.shape == (128, 128) and out.sum() == 3.0
    rows, cols = np.nonzero(out)
    # each delta lands in the binned pixel whose centre is within half a pixel
    assert np.all(np.abs(rows - np.array([o[0], o[0] + 20.0])) <= 0.5)
    assert np.all(np.abs(cols - o[1]) <= 0.5)


def test_multislice_plan_and_assembly(multislice):
    import numpy as np

    from py4dstem_ccstae.affine import LatticeTransform

    ms, _ = multislice
    for name in ("Si001_grains", "MoS2_flake", "Si001_smooth"):
        p = ms.plan(name)
        Rx, Ry = ms.CASES[name]["scan"]
        entries = p["job"]["entries"]
        assert p["entry"].shape == (Rx, Ry) and p["entry"].max() == len(entries) - 1
        # every position's job deforms the crystal by F = A^-T of its truth
        for i, j in [(0, 0), (Rx // 2, Ry // 3), (Rx - 1, Ry - 1)]:
            e = entries[p["entry"][i, j]]
            if e.get("crystal") == "vacuum":
                assert p["phase"][i, j] == 1
                continue
            F = np.asarray(e["F"])
            np.testing.assert_allclose(np.linalg.inv(F).T, p["A"][i, j], atol=1e-12)
        # a synthetic library coding (job, thickness) in two pixels
        nt = len(ms.CASES[name]["cells"])
        lib = np.zeros((len(entries), nt, 8, 8), np.float32)
        lib[:, :, 0, 0] = np.arange(len(entries))[:, None]
        lib[:, :, 0, 1] = np.arange(nt)[None]
        np.savez(
            ms.DATA / f"{name}.npz", patterns=lib, q_pixel_size=0.025, origin=[3.5, 3.5]
        )
        dc, truth = ms.assemble(name)
        assert dc.data.shape == (Rx, Ry, 8, 8)
        assert np.array_equal(dc.data[..., 0, 0], p["entry"])
        assert np.array_equal(dc.data[..., 0, 1], ms.thickness_index(name))
        assert dc.calibration.get_Q_pixel_size() == 0.025
        T = LatticeTransform(p["A"])
        s = T.relative_to(T.reference_from_mask(p["reference"])).strain()
        crystal = p["phase"] == 0
        for k in ("e_xx", "e_yy", "e_xy", "theta"):
            np.testing.assert_allclose(truth.get_slice(k).data[crystal], s[k][crystal])
        # the truth as a map (its mask: 0 in vacuum) scores 0, vacuum invalid
        row = ms.score(truth, truth, ms.CASES[name]["symmetry"])
        assert row["mae_strain_mean"] == 0.0 and row["mae_theta"] == 0.0
        if (~crystal).any():
            assert row["vacuum_invalid"] == 1.0


def test_multislice_merge_names_every_run(multislice, tmp_path):
    ms, _ = multislice

    def row(case, method, v):
        r = {"case": case, "noise": 0.0, "method": method, "seconds": 1.0, "fit_s": 1.0}
        r.update({f"mae_{k}": v for k in ms.KEYS}, mae_strain_mean=v, valid_crystal=1.0)
        if method == "CC-ST-AE":
            r.update(symmetry_detected=4, attempts=1, sensitivity=[0.4])
        else:
            r["params"] = {"corr_power": 1.0}
        return r

    meta = dict(machine="m", threads=2, counts=1e5)
    a = dict(
        meta, command="run A", date="d1", git="g1", cases=["Si001_grains", "Si110_grains"]
    )
    a["rows"] = [row("Si001_grains", m, 1e-3) for m in ("CC-ST-AE", "py4DSTEM")]
    b = dict(meta, command="run B", date="d2", git="g2", cases=["MoS2_flake"])
    b["rows"] = [row("MoS2_flake", m, 2e-3) for m in ("CC-ST-AE", "py4DSTEM")]
    for name, r in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    out = tmp_path / "out"
    ms.main(
        ["merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]
    )
    merged = json.loads((out / "multislice.json").read_text())
    assert merged["cases"] == ["Si001_grains", "MoS2_flake"]  # Si110 never ran
    assert len(merged["rows"]) == 4 and merged["command"] == "run A"
    assert [r["command"] for r in merged["earlier_runs"]] == ["run B"]
    md = (out / "multislice.md").read_text()
    assert "## Si001_grains" in md and "## MoS2_flake" in md and "Si110" not in md
    assert "`run B`" in md and "| 0 | 1.00 / 1.00 / 1.00 | 0.057 |" in md


def test_multislice_crlb_rigid_disk_derivative_matches_a_rerendered_pattern():
    """benchmarks/multislice_crlb.py: the disks it finds and their derivative."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import multislice_crlb as mc
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    S, dq, cell, radius = 64, 0.01, np.array([6.25, 6.25]), 2.5  # 16 px apart
    origin = np.array([31.5, 31.25])
    up = 8  # pixel-integrated rendering: 8 x 8 samples per detector pixel
    yy, xx = (np.mgrid[: S * up, : S * up] + 0.5) / up - 0.5
    A = np.array([[1.01, 0.02], [-0.01, 0.99]])
    inner = (slice(8, -8), slice(8, -8))  # the disks at the edge are cut

    def render(A, o=origin, edge=0.8):
        img = np.zeros((S * up, S * up))
        for h in range(-3, 4):
            for k in range(-3, 4):
                if (h + k) % 2:  # extinct: lattice points without a disk
                    continue
                c = o + A @ np.array([h / cell[0], k / cell[1]]) / dq
                z = np.clip((np.hypot(yy - c[0], xx - c[1]) - radius) / edge, -50, 50)
                img += (1.0 + 0.1 * h) / (1.0 + np.exp(z))
        return img.reshape(S, up, S, up).mean((1, 3))

    def true_derivatives(edge, eps=1e-4):
        E = np.array([[1.0, 0.0], [0.0, 0.0]])  # e_xx, applied as (I - E) @ A
        exx = render((np.eye(2) - eps * E) @ A, edge=edge)
        exx -= render((np.eye(2) + eps * E) @ A, edge=edge)
        row = render(A, origin + [eps, 0], edge) - render(A, origin - [eps, 0], edge)
        return exx / (2 * eps), row / (2 * eps)

    img = render(A)
    centres, owner = mc._disks(img, origin, A, cell, dq, radius)
    assert len(centres) == 13  # the 5 x 5 lattice points less the 12 extinct
    assert owner.shape == img.shape and set(np.unique(owner)) == set(range(13))
    for edge in (0.8, 0.05):
        img = render(A, edge=edge)
        d, n = mc.derivatives(img, origin, A, cell, dq, radius)
        assert n == 13
        lam = img[inner] + 1e-3  # expected counts, a little background
        for est, true in zip((d[0], d[4]), true_derivatives(edge), strict=True):
            info = (est[inner] ** 2 / lam).sum() / (true[inner] ** 2 / lam).sum()
            if edge == 0.8:  # edges a pixel wide: the derivative itself
                err = np.abs(est[inner] - true[inner]).sum() / np.abs(true[inner]).sum()
                assert err < 0.1 and 0.95 < info < 1.05
            else:
                # sharp edges: the difference spreads the change onto dark
                # neighbours, so the information is overestimated and the
                # bound is a lower estimate (what the reading relies on)
                assert info > 1.0


def test_compare_sweeps_flags_regressions_and_counts_lock_on(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare_sweeps
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def row(noise, method, v, attempts=1, theta=1e-3, seconds=1.0):
        return {
            "case": "c",
            "noise": noise,
            "method": method,
            "mae_e_xx": v,
            "mae_e_yy": v,
            "mae_e_xy": v,
            "mae_theta_deg": theta,
            "attempts": attempts,
            "seconds": seconds,
        }

    old = {
        "rows": [
            row(0, "CC-ST-AE", 1e-3, attempts=3),
            row(0, "py4DSTEM", 2e-3),
            row(25, "CC-ST-AE", 1e-3, attempts=2),
            row(25, "py4DSTEM", 4e-3),
            row(50, "CC-ST-AE", 1e-3, seconds=7.0),  # carried into both unchanged
        ]
    }
    new = {
        "rows": [
            row(0, "CC-ST-AE", 1.02e-3),  # 2 % worse: within the tolerance
            row(0, "py4DSTEM", 2e-3),
            row(25, "CC-ST-AE", 1.2e-3, theta=3e-3),  # 20 % worse, theta 3x
            row(25, "py4DSTEM", 4e-3),
            row(50, "CC-ST-AE", 1e-3, seconds=7.0),
            row(70, "CC-ST-AE", 1e-3, attempts=2),  # no match in OLD
        ]
    }
    res = compare_sweeps.compare(old, new, tolerance=0.05, floor=1e-5)
    by = {r["noise"]: r for r in res["rows"]}
    assert by[0.0]["worse"] == [] and by[0.0]["new_vs_py4dstem"] == pytest.approx(0.51)
    assert by[25.0]["worse"] == ["mae_e_xx", "mae_e_yy", "mae_e_xy", "mae_theta_deg"]
    assert by[25.0]["ratio_mae_e_xx"] == pytest.approx(1.2)
    assert by[50.0]["same_row"] and not by[0.0]["same_row"]
    assert res["first_attempt_old"] == [0, 2] and res["first_attempt_new"] == [2, 2]
    assert res["first_attempt_new_all"] == [3, 4]
    assert res["unmatched"] == [["c", 70.0, "CC-ST-AE"]]
    assert res["mean_strain_ratio_geomean"] == pytest.approx((1.02 * 1.2) ** 0.5)
    # the absolute floor: 10 % worse on a 1e-6 component is not a regression
    tiny = compare_sweeps.compare(
        {"rows": [row(0, "CC-ST-AE", 1e-6)]},
        {"rows": [row(0, "CC-ST-AE", 1.1e-6)]},
        tolerance=0.05,
        floor=1e-5,
    )
    assert tiny["rows"][0]["worse"] == []
    md = compare_sweeps.markdown(res)
    assert "old 0/2, new 2/2" in md and "(same row in both)" in md
