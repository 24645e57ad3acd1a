"""The bases' initialisation and their aligned-mean update (torch).

Bases are not learned by gradient steps: they start as means of groups of
mutually similar patterns (:func:`init_bases`) and are re-estimated after
every epoch as the aligned mean of the patterns assigned to them
(:func:`update_bases`: inputs warped into the base frame by the inverse of
their current transforms), an average over thousands of patterns, far less
noisy than a base learned by gradient steps. Which base a pattern is
assigned to is the training loss's choice (:func:`py4dstem_ccstae.train.best_bases`).
"""

from __future__ import annotations

import torch

from .model import CCSTAENet
from .warp import warp

__all__ = ["init_bases", "update_bases"]


@torch.no_grad()
def update_bases(
    net: CCSTAENet,
    X: torch.Tensor,
    A: torch.Tensor,
    cls: torch.Tensor,
    batch_size: int = 256,
) -> None:
    """Set each base to the aligned mean of its patterns (warped by ``inv(A)``)."""
    dev = net.bases.device
    S = net.size
    acc = torch.zeros(net.num_bases, 1, S, S, device=dev)
    wsum = torch.zeros(net.num_bases, 1, S, S, device=dev)
    ones = torch.ones(1, 1, S, S, device=dev)
    for s in range(0, X.shape[0], batch_size):
        xb = X[s : s + batch_size].to(dev)[:, None]
        Ainv = torch.linalg.inv(A[s : s + batch_size].to(dev))
        aligned = warp(xb, Ainv)
        cover = warp(ones.expand_as(xb), Ainv)
        onehot = torch.nn.functional.one_hot(cls[s : s + batch_size].to(dev), net.num_bases)
        onehot = onehot.to(xb.dtype)
        acc += torch.einsum("bk,bchw->kchw", onehot, aligned)
        wsum += torch.einsum("bk,bchw->kchw", onehot, cover)
    filled = wsum > 1e-6
    new = torch.where(filled, acc / wsum.clamp_min(1e-6), net.bases.data)
    net.bases.data.copy_(new)


@torch.no_grad()
def init_bases(
    net: CCSTAENet,
    X: torch.Tensor,
    mask: torch.Tensor,
    gen: torch.Generator,
    sample: int = 1024,
    neighbours: float = 0.03,
) -> None:
    """Initial bases: means of groups of mutually similar patterns.

    The mean of *all* patterns smears every spot over the spread of strain
    and rotation in the scan, which gives the encoder almost no gradient for
    many epochs. Instead, on a random sample of at most ``sample`` patterns
    (centred, masked, unit norm), the first seed is the pattern most
    correlated with the sample mean, each further seed the pattern least
    correlated with the seeds so far (farthest-point seeding, one per base),
    and each base is the mean of the ``neighbours`` fraction (at least 8) of
    the sample most correlated with its seed. Averaging keeps the bases
    usable under heavy noise.
    """
    N = X.shape[0]
    idx = torch.randperm(N, generator=gen)[: min(N, sample)]
    Xs = X[idx].to(torch.float32)
    m = mask.to(torch.float32).flatten()
    v = Xs.flatten(1) * m
    v = v - (v.sum(1, keepdim=True) / m.sum()) * m
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mean = v.mean(0)
    seeds = [int((v @ mean).argmax())]
    best = v @ v[seeds[0]]
    for _ in range(1, net.num_bases):
        seeds.append(int(best.argmin()))
        best = torch.maximum(best, v @ v[seeds[-1]])
    k = max(8, int(round(neighbours * len(idx))))
    bases = []
    for sd in seeds:
        near = torch.topk(v @ v[sd], min(k, len(idx))).indices
        bases.append(Xs[near].mean(0))
    net.bases.data.copy_(torch.stack(bases)[:, None].to(net.bases.device))
