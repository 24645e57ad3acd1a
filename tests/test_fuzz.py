"""Fuzz test: random small DataCubes, calibrations and options through the public API.

Every call of :func:`fit_strain` (and :meth:`CCSTAE.strain_map` of the fitted
model on a second, differently damaged scan) must either return a map whose
valid positions are finite (and whose invalid ones are NaN), or raise a
``ValueError``/``TypeError`` whose message names an argument; no file may
appear. Hypothesis runs derandomised (fixed seed), ``FUZZ_EXAMPLES`` cases.
"""

import copy
import math
import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from py4dstem_ccstae import CCSTAE, fit_strain
from py4dstem_ccstae.estimator import DEFAULT_CONFIG
from py4dstem_ccstae.simulate import polycrystal

FUZZ_EXAMPLES = int(os.environ.get("CCSTAE_FUZZ_EXAMPLES", "500"))

#: Words an error message must contain one of: it names what was wrong.
ARGUMENTS = {
    *DEFAULT_CONFIG,
    "datacube",
    "data",
    "reference",
    "seed",
    "device",
    "calibration",
    "origin",
    "ellipse",
    "indices",
}

_BASE = {}


def _base():
    """A 4x4 scan of 32x32 patterns (made once per process)."""
    if not _BASE:
        dc, _ = polycrystal(scan_shape=(4, 4), pattern_shape=(32, 32), num_grains=2, seed=1)
        _BASE["dc"] = dc
    return _BASE["dc"]


bad = st.sampled_from([math.nan, math.inf, -1.0, 0.0, "x", None, True, 1e9])

#: Per option: (valid values, invalid values); an invalid one is drawn 1 time in 10.
OPTIONS = {
    "size": (st.integers(16, 40), st.sampled_from([8, 600, 16.5, "32", None])),
    "q_max": (
        st.one_of(st.none(), st.floats(0.05, 3.0)),
        st.sampled_from([-1.0, 1e6, "1", math.nan]),
    ),
    "ring": (
        st.one_of(st.none(), st.tuples(st.floats(0.0, 1.5), st.floats(0.05, 3.0))),
        st.sampled_from([(0.5,), "ring", (1.0, 0.5), (math.nan, 1.0)]),
    ),
    "num_bases": (st.sampled_from([1, 2]), st.sampled_from([0, 2.5, "2"])),
    "symmetry": (st.sampled_from(["auto", 1, 2, 4, 6]), st.sampled_from([0, "x", True])),
    "scaling": (st.sampled_from(["sqrt", "linear", "log", "power"]), st.just("cubic")),
    "loss": (st.sampled_from(["mse", "l1", "poisson"]), st.just("huber")),
    "refine": (st.booleans(), st.sampled_from(["no", 1])),
    "refine_size": (st.sampled_from([None, 16, 24, 48]), st.sampled_from([8, 48.0])),
    "refine_steps": (st.integers(1, 4), st.sampled_from([0, -2, 2.5])),
    "background": (st.sampled_from(["radial", "none"]), st.just("flat")),
    "coarse_sigma": (st.floats(0.0, 6.0), st.sampled_from([-1.0, 1e6, math.nan])),
    "coarse_epochs": (st.sampled_from([0, 1, 2]), st.just(-1)),
    "spot_threshold": (st.floats(0.01, 0.6), st.sampled_from([0.0, 1.5, "a"])),
    "mask_schedule": (st.booleans(), st.just("yes")),
    "max_strain": (st.floats(0.01, 0.3), bad),
    "width": (st.sampled_from([8, 16]), st.sampled_from([6, 0])),
    "overshoot": (st.floats(0.1, 3.0), bad),
    "base_l1": (st.floats(0.0, 1e3), st.sampled_from([-1.0, math.inf])),
    "lr": (st.floats(1e-4, 1e-2), bad),
    "retries": (st.sampled_from([0, 1]), st.just(-1)),
    "min_sensitivity": (st.floats(0.0, 1.0), st.sampled_from([-0.5, "high"])),
    "equivariance": (
        st.sampled_from([0.0, 1e-3, 0.1]),
        st.sampled_from([-1e-3, math.inf, "on"]),
    ),
}


@st.composite
def options(draw, wrong: bool = False):
    """Training kept small; up to 6 other options; ``wrong``: one of them invalid."""
    opts = {
        "epochs": draw(st.sampled_from([1, 1, 2])),
        "epoch_size": draw(st.sampled_from([8, 16, 32])),
        "batch_size": draw(st.sampled_from([4, 8, 16])),
        "retries": 0,
    }
    keys = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=6, unique=True))
    for k in keys:
        opts[k] = draw(OPTIONS[k][0])
    if wrong:
        k = draw(st.sampled_from(sorted(OPTIONS) + ["epochs"]))
        opts[k] = 0 if k == "epochs" else draw(OPTIONS[k][1])
    return opts


#: Ways a data set can be wrong (``datacubes(fault=...)``).
DATA_FAULTS = (
    "zeros",
    "nan",
    "inf",
    "neg",
    "qps",
    "origin_nan",
    "outside",
    "ellipse",
    "rot",
)


@st.composite
def datacubes(draw, fault: str | None = None):
    """A scan cut from the base one, random dtype, scale and calibration.

    ``fault`` (one of :data:`DATA_FAULTS`, or ``"any"`` to draw one): a
    defect the package must refuse or survive. Valid scans still vary: blank
    patterns, origin shifts up to 20 px, no origin (measured), pixel units,
    ellipse, Q/R rotation and flip.
    """
    if fault == "any":
        fault = draw(st.sampled_from(DATA_FAULTS))
    dc = copy.deepcopy(_base())
    rx, ry = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1e-3, 1.0, 1.0, 1e4]))
    data = dc.data[:rx, :ry].astype(np.float64) * scale
    if draw(st.integers(0, 4)) == 0:
        data[0, 0] = 0  # a blank pattern: allowed, must come out invalid or sound
    if fault == "zeros":
        data[:] = 0
    elif fault == "nan":
        data[0, 0, 3, 3] = np.nan
    elif fault == "inf":
        data[-1, -1, 5, 5] = np.inf
    elif fault == "neg":
        data[0, 0, 3, 3] = -1
    dtype = draw(st.sampled_from([np.float32, np.float64, np.uint16]))
    if dtype is np.uint16 and np.isfinite(data).all() and (data >= 0).all():
        top = data.max()  # detector counts, up to 4000 per pixel
        data = np.round(data * (4000.0 / top if top > 0 else 1.0)).astype(np.uint16)
    else:
        data = data.astype(dtype if dtype is not np.uint16 else np.float32)
    import py4DSTEM

    out = py4DSTEM.DataCube(data=data)
    cal, old = out.calibration, dc.calibration
    qps = old.get_Q_pixel_size()
    if fault == "qps":
        qps = draw(bad)
    elif draw(st.integers(0, 4)) == 0:
        qps = draw(st.floats(1e-3, 1.0))
    cal.set_Q_pixel_size(qps)
    cal.set_Q_pixel_units(draw(st.sampled_from(["A^-1", "A^-1", "pixels"])))
    ox, oy = (np.asarray(v, float)[:rx, :ry] for v in old.get_origin())
    origin = draw(st.sampled_from(["keep"] * 6 + ["shift"] * 2 + ["none"]))
    if fault == "origin_nan":
        ox = ox.copy()
        ox[0, 0] = np.nan
        cal.set_origin((ox, oy))
    elif fault == "outside":
        cal.set_origin((ox + 100, oy))
    elif origin == "shift":
        cal.set_origin((ox + draw(st.floats(-20, 20)), oy))
    elif origin == "keep":
        cal.set_origin((ox, oy))
    if fault == "ellipse":
        cal.set_ellipse((draw(bad), 1.0, 0.0))
    elif draw(st.integers(0, 3)) == 0:
        cal.set_ellipse((draw(st.floats(0.8, 1.2)), draw(st.floats(0.8, 1.2)), 0.3))
    if fault == "rot":
        cal.set_QR_rotation(draw(st.sampled_from([math.nan, math.inf])))
    elif draw(st.integers(0, 3)) == 0:
        cal.set_QR_rotation(draw(st.floats(-3.2, 3.2)))
    if draw(st.integers(0, 3)) == 0:
        cal.set_QR_flip(True)
    return out


#: What is wrong in a generated case: nothing (half of them) or one kind of input.
FAULTS = ["none"] * 5 + ["option", "data", "seed", "reference", "other"]


@st.composite
def cases(draw):
    """(datacube, second datacube, options, seed, reference kind, fault)."""
    fault = draw(st.sampled_from(FAULTS))
    dc = draw(datacubes("any" if fault == "data" else None))
    other = draw(datacubes("any" if fault == "other" else None))
    opts = draw(options(wrong=fault == "option"))
    seed = draw(
        st.sampled_from([-1, 2**70, 1.5, "0"]) if fault == "seed" else st.integers(0, 99)
    )
    reference = "wrong" if fault == "reference" else draw(st.sampled_from(["none", "half"]))
    return dc, other, opts, seed, reference, fault


def _describe(dc) -> str:
    """The calibration of ``dc`` (for failure messages)."""
    cal = dc.calibration
    return (
        f"shape {dc.data.shape} {dc.data.dtype}; Q pixel size {cal.get_Q_pixel_size()!r} "
        f"{cal.get_Q_pixel_units()!r}; origin "
        f"{None if cal.get_origin() is None else np.ravel(cal.get_origin()[0])[:2]!r}; "
        f"ellipse {cal.get_ellipse()!r}; rotation {cal.get_QR_rotation()!r}; "
        f"flip {cal.get_QR_flip()!r}"
    )


def _names_an_argument(err: Exception) -> bool:
    msg = str(err)
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", msg) for n in ARGUMENTS)


def _check_map(rs) -> None:
    mask = rs.get_slice("mask").data
    assert set(np.unique(mask)) <= {0.0, 1.0}
    for key in ("e_xx", "e_yy", "e_xy", "theta"):
        v = rs.get_slice(key).data
        assert np.isfinite(v[mask == 1]).all(), key
        assert np.isnan(v[mask == 0]).all(), key


@pytest.mark.filterwarnings("ignore")
@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=cases(), one_call=st.booleans())
def test_every_call_returns_a_sound_map_or_names_the_bad_argument(case, one_call):
    dc, other, opts, seed, reference, fault = case
    shape = dc.data.shape[:2]
    ref = None
    if reference == "half":
        ref = np.zeros(shape, bool)
        ref[: max(1, shape[0] // 2)] = True
    elif reference == "wrong":
        ref = np.ones((shape[0] + 1, shape[1]), bool)
    before = set(os.listdir("."))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = None
        try:
            if one_call:
                rs = fit_strain(
                    dc, reference=ref, seed=seed, progress=False, device="cpu", **opts
                )
            else:
                model = CCSTAE(**opts).fit(dc, seed=seed, progress=False, device="cpu")
                rs = model.strain_map(dc, reference=ref)
        except (ValueError, TypeError) as err:
            assert _names_an_argument(err), (repr(err), _describe(dc))
            event(f"refused ({fault})")
        else:
            _check_map(rs)
            event(f"mapped ({fault})")
        if model is not None:
            # the fitted model on another scan (other damage, calibration)
            try:
                _check_map(model.strain_map(other))
                event("other scan mapped")
            except (ValueError, TypeError) as err:
                assert _names_an_argument(err), (repr(err), _describe(other))
                event("other scan refused")
    assert set(os.listdir(".")) == before


@pytest.fixture(autouse=True)
def _in_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
