"""How often a fit reads a scan that does not fit the inputs' cache (issue #15)."""

import warnings

import numpy as np
import py4DSTEM
import pytest

from py4dstem_ccstae import CCSTAE, adapters, fitting
from py4dstem_ccstae.simulate import polycrystal


class _CountingData:
    """Array-like DataCube data that counts the patterns every read returns."""

    def __init__(self, array):
        self._a = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.size = array.size
        self.patterns_read = 0

    def __getitem__(self, key):
        out = self._a[key]
        self.patterns_read += np.size(out) // (self.shape[-2] * self.shape[-1])
        return out

    def __len__(self):
        return len(self._a)

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole data array was materialised")


@pytest.mark.parametrize("refine_size", [None, 48])
def test_a_streamed_scan_is_read_at_most_twice_per_fit(monkeypatch, refine_size):
    """Statistics pass, training subset and realignment: at most 2 x the scan.

    The scan is made "too large for RAM" by a cache of 0 MB and subsets
    scaled down with it (statistics rows, training set, realignment set are
    a fraction of the scan, as on a 256x256 scan with the defaults). Fails
    if a stage reads the whole scan again (e.g. a mean-pattern pass for the
    symmetry, or inputs built twice).
    """
    dc, _ = polycrystal(scan_shape=(16, 16), pattern_shape=(64, 64), seed=0)
    monkeypatch.setattr(adapters, "CACHE_MB", 0.0)
    monkeypatch.setattr(adapters, "STATS_PATTERNS", 32)
    monkeypatch.setattr(fitting, "MAX_TRAIN_PATTERNS", 96)
    monkeypatch.setattr(fitting, "REALIGN_PATTERNS", 48)
    data = _CountingData(np.asarray(dc.data))
    streamed = py4DSTEM.DataCube(data=data, calibration=dc.calibration.copy())
    model = CCSTAE(
        size=32,
        refine_size=refine_size,
        epochs=1,
        epoch_size=32,
        batch_size=16,
        retries=0,
        min_sensitivity=0.0,
    )
    n = 16 * 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = model.prepare(streamed)
        assert inputs._cache is None  # streamed
        stats = data.patterns_read
        model.fit(inputs, seed=0, progress=False)
        fit_reads = data.patterns_read
        model.strain_map(inputs)
    assert stats < n / 2  # the statistics pass reads spread rows only
    assert fit_reads <= 2 * n
    # the map reads the scan once more (twice with refine_size: both sizes)
    assert data.patterns_read - fit_reads <= (2 if refine_size else 1) * n
