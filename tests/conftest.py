"""Shared fixtures: small simulated data sets, made once per session."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402

from py4dstem_ccstae.simulate import polycrystal  # noqa: E402


@pytest.fixture(scope="session")
def si_small():
    """Noise-free Si polycrystal, 24x24 scan of 128x128 patterns, +-5 deg rotations."""
    return polycrystal(scan_shape=(24, 24), pattern_shape=(128, 128), num_grains=8, seed=3)


@pytest.fixture(scope="session")
def tiny():
    """A very small data set for fast checks."""
    return polycrystal(scan_shape=(6, 5), pattern_shape=(64, 64), num_grains=3, seed=1)
