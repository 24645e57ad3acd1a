"""The CC-ST-AE network: encoder, k-sparse class, affine head, learned bases.

Shapes and conventions
----------------------
* Input patterns ``x``: ``(B, 1, S, S)``, calibrated and resampled (see
  :mod:`py4dstem_ccstae.adapters`), axis -2 = ``qx``.
* The affine head predicts ``A`` (``(B, 2, 2)``), the lattice transform that
  maps the base onto the input: a spot at ``c + g`` in the base sits at
  ``c + A @ g`` in the input (pixel ``(qx, qy)`` coordinates about the pattern
  centre ``c``; :mod:`py4dstem_ccstae.warp`). ``A = P @ Q(phi)`` with ``P``
  symmetric (bounded strain) and ``Q`` a rotation, exactly the factorisation of
  :class:`~py4dstem_ccstae.affine.LatticeTransform`.
* Rotation is predicted in a continuous form ``(cos n phi, sin n phi)`` for a
  lattice of n-fold symmetry, so angles wrap correctly and no per-data-set
  offset is needed.
* Bases: ``(K, 1, S, S)`` learned "average" patterns; the k-sparse layer picks
  one per pattern (top-1 with a straight-through gradient). Training and the
  estimator use the base that reconstructs a pattern best instead of the
  head's own top-1 (:func:`py4dstem_ccstae.train.fit_network`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CCSTAENet", "compose_A", "nearest_equivalent"]


def compose_A(strain: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``A = (I - E) @ Q(phi)`` from ``strain = (e_xx, e_yy, e_xy)`` (B, 3), ``phi`` (B,).

    ``E`` and ``phi`` follow :meth:`LatticeTransform.from_strain` (``phi`` is
    the lattice rotation, ``theta = -phi``).
    """
    exx, eyy, exy = strain.unbind(-1)
    one = torch.ones_like(exx)
    P = torch.stack(
        [torch.stack([one - exx, -exy], -1), torch.stack([-exy, one - eyy], -1)], -2
    )
    c, s = torch.cos(phi), torch.sin(phi)
    Q = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return P @ Q


def nearest_equivalent(
    A: torch.Tensor, target: torch.Tensor, symmetry: int
) -> torch.Tensor:
    """The symmetry-equivalent of ``A`` closest to ``target`` (B, 2, 2 each).

    For a base of n-fold symmetry (``symmetry`` = n) the transforms ``A`` and
    ``A @ R(2 pi k / n)`` map it onto the same pattern (``R``: rotation;
    rotating the base by its own symmetry first changes nothing). The
    encoder's ``phi`` is wrapped into ``(-pi/n, pi/n]``, so a pattern whose
    rotation sits near the wrap and a slightly rotated copy of it get
    transforms that differ by ``R(2 pi / n)`` although they are neighbours.
    Returns ``A @ R(2 pi k / n)`` with ``k`` in ``{-1, 0, 1}`` minimising
    the Frobenius distance to ``target``, per pattern (enough for targets
    within a fraction of ``pi / n`` of ``A``; for n = 2 the candidates are
    ``A`` and ``-A``); ``A`` itself for n = 1, whose ``phi`` does not wrap.
    Differentiable in ``A`` (the choice of ``k`` is not).
    """
    if symmetry <= 1:
        return A
    ang = torch.tensor([-1.0, 0.0, 1.0], dtype=A.dtype, device=A.device) * (
        2.0 * torch.pi / symmetry
    )
    c, s = torch.cos(ang), torch.sin(ang)
    R = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (3, 2, 2)
    cand = A[:, None] @ R[None]  # (B, 3, 2, 2)
    dist = ((cand - target[:, None]) ** 2).sum((-1, -2))
    k = dist.argmin(1).detach()
    return cand[torch.arange(A.shape[0], device=A.device), k]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(4, cout)
        self.norm2 = nn.GroupNorm(4, cout)
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.act(self.norm1(self.conv1(x)))
        return self.act(h + self.norm2(self.conv2(h)))


class CCSTAENet(nn.Module):
    """Encoder + k-sparse classifier + affine head + learned bases.

    Parameters
    ----------
    size : int
        Pattern size S (square), >= 16.
    num_bases : int
        Number of learned bases K (1: no classification).
    symmetry : int
        In-plane symmetry order n of the patterns (rotation is learned modulo
        ``2 pi / n``).
    max_strain : float
        Bound of each strain component (``max_strain * tanh``).
    width : int
        Channels of the first convolution (doubling, capped at 4x).
    """

    def __init__(
        self,
        size: int,
        num_bases: int = 1,
        symmetry: int = 1,
        max_strain: float = 0.1,
        width: int = 16,
    ):
        super().__init__()
        self.size = int(size)
        self.num_bases = int(num_bases)
        self.symmetry = int(symmetry)
        self.max_strain = float(max_strain)
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        self.features = nn.Sequential(
            *[_Block(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)]
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 16, 128), nn.SiLU())
        self.strain_head = nn.Linear(128, 3)
        self.rot_head = nn.Linear(128, 2)
        self.class_head = nn.Linear(128, self.num_bases)
        for head in (self.strain_head, self.rot_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.rot_head.bias[0] = 1.0  # start at phi = 0
        self.bases = nn.Parameter(torch.zeros(self.num_bases, 1, self.size, self.size))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode patterns ``x`` (B, 1, S, S).

        Returns
        -------
        dict
            ``A`` (B, 2, 2) base -> input, ``strain`` (B, 3), ``phi`` (B,),
            ``probs`` (B, K), ``base`` (B, 1, S, S) the selected base (chosen
            by the straight-through one-hot of ``probs``), ``features``
            (B, 128) the dense features all heads read.
        """
        h = self.dense(self.pool(self.features(x)))
        strain = self.max_strain * torch.tanh(self.strain_head(h))
        r = self.rot_head(h)
        phi = torch.atan2(r[:, 1], r[:, 0] + 1e-12) / self.symmetry
        probs = torch.softmax(self.class_head(h), -1)
        hard = nn.functional.one_hot(probs.argmax(-1), self.num_bases).to(probs.dtype)
        onehot = hard + probs - probs.detach()
        base = torch.einsum("bk,kchw->bchw", onehot, self.bases)
        return {
            "A": compose_A(strain, phi),
            "strain": strain,
            "phi": phi,
            "probs": probs,
            "base": base,
            "features": h,
        }
