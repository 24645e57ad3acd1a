"""Running the encoder over patterns, and the lock-on check (torch).

:func:`encode` gives every pattern the encoder's transform ``A`` (base ->
input, pixel frame ``(qx, qy)``), its strain, rotation ``phi`` and the class
head's top-1; :func:`encoder_sensitivity` measures how much that transform
follows a known warp of the input (the lock-on check of
:meth:`py4dstem_ccstae.CCSTAE.fit`: an encoder that never locked on scores ~0);
:func:`searched_transforms` corrects the encoder's transforms by the
exhaustive rotation search of :mod:`py4dstem_ccstae.rotsearch` (option
``rotation_search``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .model import CCSTAENet, nearest_equivalent
from .rotsearch import rotation_search
from .warp import warp

__all__ = ["encode", "SENSITIVITY_PROBES", "encoder_sensitivity", "searched_transforms"]


@torch.no_grad()
def encode(
    net: CCSTAENet, X: torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Run the encoder on all patterns; returns ``A``, ``strain``, ``phi``, ``cls``."""
    net.eval()
    outs: dict[str, list] = {"A": [], "strain": [], "phi": [], "cls": []}
    dev = next(net.parameters()).device
    for s in range(0, X.shape[0], batch_size):
        xb = X[s : s + batch_size].to(dev)[:, None]
        o = net(xb)
        outs["A"].append(o["A"].cpu())
        outs["strain"].append(o["strain"].cpu())
        outs["phi"].append(o["phi"].cpu())
        outs["cls"].append(o["probs"].argmax(-1).cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def searched_transforms(
    net: CCSTAENet, X: torch.Tensor, enc: dict, ring: torch.Tensor
) -> torch.Tensor:
    """The encoder's transforms ``enc["A"]`` corrected by the rotation search.

    Each pattern of ``X`` (N, S, S) against the base of its class
    ``enc["cls"]`` (N,), within half the lattice's period ``net.symmetry``
    (:func:`~py4dstem_ccstae.rotsearch.rotation_search`); ``ring`` (S, S) is
    the ring mask. Returns (N, 2, 2) in ``enc["A"]``'s dtype, on the CPU.
    """
    return rotation_search(X, enc["A"], net.bases, enc["cls"], ring, net.symmetry)


#: Probe transforms of :func:`encoder_sensitivity`: name -> ``T(delta)`` in
#: pixel ``(qx, qy)`` coordinates (a feature at ``c + g`` moves to ``c + T @ g``).
SENSITIVITY_PROBES = {
    "rotation": lambda d: [[math.cos(d), -math.sin(d)], [math.sin(d), math.cos(d)]],
    "scale_x": lambda d: [[1.0 + d, 0.0], [0.0, 1.0]],
    "scale_y": lambda d: [[1.0, 0.0], [0.0, 1.0 + d]],
    "shear": lambda d: [[1.0, d], [d, 1.0]],
}


@torch.no_grad()
def encoder_sensitivity(
    net: CCSTAENet, X: torch.Tensor, delta: float = 0.01, batch_size: int = 256
) -> dict[str, float]:
    """How much the encoder's transform follows a known warp of its input.

    Each pattern ``x`` of ``X`` (N, S, S) is warped by a small probe
    transform ``T`` (rotation by ``delta`` rad, scale along ``qx`` or ``qy``
    by ``1 + delta``, symmetric shear ``delta``; :data:`SENSITIVITY_PROBES`)
    with :func:`~py4dstem_ccstae.warp.warp`. A working encoder answers with
    ``A(warp(x, T)) ~= T @ A(x)``; the sensitivity to a probe is the
    regression slope of the observed change on the expected one,

    ``s = sum <A(warp(x, T)) - A(x), T A(x) - A(x)> / sum |T A(x) - A(x)|^2``

    over all patterns (``A(warp(x, T))`` taken as its symmetry-equivalent
    nearest ``T A(x)``, :func:`~py4dstem_ccstae.model.nearest_equivalent`,
    so a pattern whose rotation crosses the wrap at ``+-pi/n`` counts as
    following the warp): 1 follows the warp exactly, 0 ignores it. An encoder
    that never locked on (its features constant over the scan, its output
    the scan's mean transform) scores ~0 on every probe, whereas one that
    works scores well above it even on a crystal with no strain at all
    (the probe transforms are applied, not looked for in the data).

    Returns
    -------
    dict
        Sensitivity per probe name and their mean under ``"mean"``.
    """
    dev = next(net.parameters()).device
    A0 = encode(net, X, batch_size)["A"]
    out: dict[str, float] = {}
    for name, make in SENSITIVITY_PROBES.items():
        T = torch.tensor(make(delta), dtype=torch.float32)
        warped = []
        for s in range(0, X.shape[0], batch_size):
            xb = X[s : s + batch_size].to(dev, torch.float32)[:, None]
            warped.append(warp(xb, T.to(dev).expand(xb.shape[0], 2, 2))[:, 0].cpu())
        A1 = encode(net, torch.cat(warped), batch_size)["A"]
        TA0 = T @ A0
        # a pattern near the wrap of phi (+-pi/n) may come back rotated by 2 pi/n
        A1 = nearest_equivalent(A1, TA0, net.symmetry)
        expected = TA0 - A0
        num = float(((A1 - A0) * expected).sum())
        den = float((expected * expected).sum())
        out[name] = num / den if den > 0 else 0.0
    out["mean"] = float(np.mean([out[k] for k in SENSITIVITY_PROBES]))
    return out
