"""The one pixel <-> affine_grid conversion, pinned with off-centre spots."""

import numpy as np
import pytest
import torch

from py4dstem_ccstae.affine import LatticeTransform
from py4dstem_ccstae.warp import warp


def _spot(shape, pos, sigma=1.5):
    xx, yy = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((xx - pos[0]) ** 2 + (yy - pos[1]) ** 2) / (2 * sigma**2))


def _centroid(img):
    xx, yy = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(xx * img).sum(), (yy * img).sum()]) / img.sum()


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
@pytest.mark.parametrize(
    "strain",
    [(0.03, 0, 0, 0), (0, -0.02, 0, 0), (0, 0, 0.02, 0), (0.01, -0.02, 0.015, 0.3)],
)
def test_spot_moves_to_A_g(shape, strain):
    c = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    g = np.array([9.0, -5.0])  # off-centre, different along rows and columns
    x = torch.tensor(_spot(shape, c + g), dtype=torch.float64)[None, None]
    A = LatticeTransform.from_strain(*strain).params
    out = warp(x, torch.tensor(A)[None]).numpy()[0, 0]
    np.testing.assert_allclose(_centroid(out), c + A @ g, atol=0.02)


def test_identity_is_exact_and_center_is_honoured():
    x = torch.rand(2, 1, 32, 40, dtype=torch.float64)
    out = warp(x, torch.eye(2, dtype=torch.float64).expand(2, 2, 2))
    torch.testing.assert_close(out, x)
    # a pure expansion about a chosen centre keeps that centre fixed
    c = np.array([10.0, 22.0])
    img = torch.tensor(_spot((32, 40), c), dtype=torch.float64)[None, None]
    out = warp(img, torch.tensor(np.diag([1.1, 1.1]))[None], center=torch.tensor(c))
    np.testing.assert_allclose(_centroid(out.numpy()[0, 0]), c, atol=0.02)


def test_bad_shapes():
    with pytest.raises(ValueError, match="A must"):
        warp(torch.zeros(1, 1, 8, 8), torch.eye(3)[None])
    with pytest.raises(ValueError, match="x must"):
        warp(torch.zeros(8, 8), torch.eye(2)[None])
