import numpy as np
import pytest
from py4DSTEM import DataCube

from py4dstem_ccstae.noise import lorentzian_halo
from py4dstem_ccstae.simulate import add_background_noise, add_poisson_noise


def test_zero_percent_is_unchanged(tiny):
    dc, _ = tiny
    out = add_background_noise(dc, 0)
    assert out is not dc
    np.testing.assert_array_equal(out.data, dc.data)
    assert out.calibration.get_Q_pixel_size() == dc.calibration.get_Q_pixel_size()
    np.testing.assert_array_equal(
        out.calibration.get_origin()[0], dc.calibration.get_origin()[0]
    )


def test_expectation_is_the_mixed_pattern():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (16, 16))
    data = np.broadcast_to(img, (40, 50, 16, 16)).astype(np.float32)
    dc = DataCube(data=data.copy())
    w = 0.3
    out = add_background_noise(dc, 30, counts=1e4, seed=1).data.astype(np.float64)
    total = img.astype(np.float32).astype(np.float64).sum()
    expected = (img / total * (1 - w) + lorentzian_halo((16, 16)) * w) * total
    mean = out.reshape(-1, 16, 16).mean(0)
    # standard error of the mean of 2000 Poisson draws
    se = np.sqrt(expected * total / 1e4 / 2000)
    assert np.all(np.abs(mean - expected) < 5 * se + 1e-9)
    assert not np.allclose(out[0, 0], out[0, 1])  # noise is really there


def test_halo_shape():
    bg = lorentzian_halo((64, 48))
    assert bg.sum() == pytest.approx(1.0)
    assert np.unravel_index(bg.argmax(), bg.shape) == (32, 24)


def test_seeds_and_no_mutation(tiny):
    dc, _ = tiny
    before = dc.data.copy()
    a = add_background_noise(dc, 50, seed=7).data
    b = add_background_noise(dc, 50, seed=7).data
    c = add_background_noise(dc, 50, seed=8).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(dc.data, before)


def test_poisson_dose(tiny):
    dc, _ = tiny
    out = add_poisson_noise(dc, counts=500, seed=0).data
    assert np.all(out == np.round(out))
    assert out.sum((2, 3)).mean() == pytest.approx(500, rel=0.05)


@pytest.mark.parametrize("percent", [-1, 100.5, np.nan])
def test_bad_percent(tiny, percent):
    with pytest.raises(ValueError, match="percent"):
        add_background_noise(tiny[0], percent)


@pytest.mark.parametrize("counts", [0, -5, np.inf])
def test_bad_counts(tiny, counts):
    with pytest.raises(ValueError, match="counts"):
        add_background_noise(tiny[0], 10, counts=counts)
    with pytest.raises(ValueError, match="counts"):
        add_poisson_noise(tiny[0], counts=counts)


def test_bad_types(tiny):
    with pytest.raises(TypeError, match="datacube"):
        add_background_noise(np.zeros((2, 2, 8, 8)), 10)
    with pytest.raises(TypeError, match="percent"):
        add_background_noise(tiny[0], "10")
    with pytest.raises(TypeError, match="seed"):
        add_background_noise(tiny[0], 10, seed=1.5)
