"""Training loop (torch): the network and its bases fitted to the patterns.

Work is on a tensor ``X`` of patterns ``(N, S, S)`` (already calibrated and
scaled) and a ring mask ``(S, S)``; where the data come from is the
estimator's business. :func:`fit_network` runs the epochs: optimiser steps on
the reconstruction loss (coarse-to-fine smoothing, :func:`coarse_sigma`;
with several bases each pattern trains with the one that reconstructs it best,
:func:`best_bases`), then the bases' re-estimation as the aligned mean of
their patterns (:mod:`py4dstem_ccstae.bases`), the shrinking mask
(``mask_schedule``), the plateau stop and the checkpoint. The encoder's read-out
and the lock-on check are in :mod:`py4dstem_ccstae.encoding`; both modules'
names are re-exported here. Per-pattern refinement is in
:mod:`py4dstem_ccstae.spotfit`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .bases import init_bases, update_bases
from .config import Options
from .encoding import SENSITIVITY_PROBES, encode, encoder_sensitivity, searched_transforms
from .losses import cycle_losses, strain_hinge
from .model import CCSTAENet, nearest_equivalent
from .spotfind import find_spots
from .warp import gaussian_blur, warp

__all__ = [
    "TrainConfig",
    "fit_network",
    "encode",
    "encoder_sensitivity",
    "SENSITIVITY_PROBES",
    "pattern_classes",
    "init_bases",
    "update_bases",
    "resolve_device",
    "gaussian_blur",
    "searched_transforms",
]


@dataclass
class TrainConfig:
    """Training settings (defaults fixed once, never tuned on ground truth).

    The fields that are also options of the estimator take their defaults
    from :class:`~py4dstem_ccstae.config.Options` (one definition); the
    others are fixed here.

    Attributes
    ----------
    epochs : int
        Maximum epochs.
    epoch_size : int
        Patterns per epoch: each epoch trains on a fresh random subset of at
        most this many patterns and re-estimates the bases from it, so the
        cost of training does not grow with the scan size.
    batch_size : int
        Patterns per step.
    lr : float
        Adam learning rate.
    cycle_weight : float
        Weight of the cycle (base -> input) term relative to the forward term.
    hinge_limit, hinge_weight : float
        Strain beyond ``hinge_limit`` is penalised with ``hinge_weight``.
    patience : int
        Stop when the epoch loss has not improved by ``min_delta`` (relative)
        for this many epochs.
    min_epochs : int
        No plateau stop before this many epochs: the loss often stays flat
        for a few epochs before the encoder locks on (in the 13-level
        benchmark a stop after 5 flat epochs left the encoder untrained at 4
        levels and their strain errors 2-10 times larger).
    min_delta : float
        Relative improvement that counts.
    mask_schedule : bool
        Shrinking-mask schedule of the paper: from epoch
        ``shrink_start * epochs`` on, the compared region is the ring mask
        intersected with disks around the spots of the current base
        (:func:`~py4dstem_ccstae.spotfind.find_spots`), whose radius shrinks
        linearly from twice the spot cell (0.9 x spot spacing: nearly the
        whole ring) to the spot radius at the last epoch. The plateau stop
        restarts whenever the mask changes.
    shrink_start : float
        Fraction of ``epochs`` after which the mask starts shrinking.
    spot_threshold : float
        Weakest spot of the base used by the schedule, relative to the
        brightest (``rel_threshold`` of :func:`~py4dstem_ccstae.spotfind.find_spots`).
    coarse_sigma : float
        Coarse-to-fine schedule: in the first ``coarse_epochs`` epochs both
        the inputs and the bases are smoothed with a Gaussian of standard
        deviation ``coarse_sigma * (1 - epoch / coarse_epochs)`` (model
        pixels) before they are compared, so every spot's error surface is
        wide and smooth while the encoder learns the coarse transform; 0
        turns it off. Without it, under heavy background noise the loss could
        stay flat with the encoder's output constant (measured by
        ``benchmarks/coarse_to_fine.py``). The plateau stop counts only
        epochs without smoothing.
    coarse_epochs : int
        Length of the coarse-to-fine phase (epochs), at most half of
        ``epochs``.
    loss : str
        Per-pixel loss, one of :data:`~py4dstem_ccstae.losses.LOSSES`.
    overshoot : float
        Weight of pixels where the base side exceeds the data
        (:func:`~py4dstem_ccstae.losses.pixel_loss`).
    rotation_search : bool
        Before every re-estimation of the bases, correct the encoder's
        transforms by the exhaustive in-plane rotation search against the
        current bases (:func:`~py4dstem_ccstae.encoding.searched_transforms`),
        so that the aligned means stay sharp while the encoder has not
        locked on, or where grains are rotated beyond the basin of the
        reconstruction loss.
    base_l1 : float
        L1 sparsity on the bases, applied as its proximal step (soft
        threshold ``sign(b) * max(|b| - base_l1, 0)``, scaled-intensity units)
        after every re-estimation of the bases: the bases are aligned means,
        not gradient-trained, so the penalty acts through its proximal
        operator. 0: off.
    equivariance : float
        Weight of the equivariance term (:func:`equivariance_loss`): every
        training pattern is also warped by a random small transform ``T``
        and the encoder is asked for ``T @ A(x)``. 0: off.
    """

    epochs: int = Options.epochs
    epoch_size: int = Options.epoch_size
    batch_size: int = Options.batch_size
    lr: float = Options.lr
    cycle_weight: float = 1.0
    hinge_limit: float = 0.06
    hinge_weight: float = 100.0
    patience: int = 4
    min_epochs: int = 12
    min_delta: float = 2e-3
    mask_schedule: bool = Options.mask_schedule
    shrink_start: float = 0.5
    spot_threshold: float = Options.spot_threshold
    coarse_sigma: float = Options.coarse_sigma
    coarse_epochs: int = Options.coarse_epochs
    loss: str = Options.loss
    overshoot: float = Options.overshoot
    base_l1: float = Options.base_l1
    rotation_search: bool = Options.rotation_search
    equivariance: float = Options.equivariance


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return torch.device(device)


@torch.no_grad()
def base_costs(
    x: torch.Tensor,
    bases: torch.Tensor,
    A: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
) -> torch.Tensor:
    """Training loss of every pattern against every base, (B, K).

    The loss (forward + ``cycle_weight`` x cycle, the configured per-pixel
    loss) of each pattern ``x`` (B, 1, S, S) against each base ``bases``
    (K, 1, S, S), the base warped by the pattern's own transform ``A``
    (B, 2, 2, base -> input, pixels).
    """
    costs = []
    for k in range(bases.shape[0]):
        fwd, cyc, _ = cycle_losses(
            x,
            bases[k : k + 1].expand(x.shape[0], -1, -1, -1),
            A,
            mask,
            loss=config.loss,
            overshoot=config.overshoot,
        )
        costs.append(fwd + config.cycle_weight * cyc)
    return torch.stack(costs, -1)


def best_bases(
    x: torch.Tensor,
    bases: torch.Tensor,
    A: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
) -> torch.Tensor:
    """Index of the base that reconstructs each pattern best, (B,) long.

    The argmin of :func:`base_costs` (ties go to the lower index).
    """
    return base_costs(x, bases, A, mask, config).argmin(-1)


@torch.no_grad()
def all_base_costs(
    net: CCSTAENet,
    X: torch.Tensor,
    A: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
    batch_size: int = 256,
) -> torch.Tensor:
    """:func:`base_costs` of patterns ``X`` (N, S, S) in batches, (N, K) on CPU."""
    dev = net.bases.device
    out = []
    for s in range(0, X.shape[0], batch_size):
        xb = X[s : s + batch_size].to(dev)[:, None]
        ab = A[s : s + batch_size].to(dev, xb.dtype)
        out.append(base_costs(xb, net.bases, ab, mask.to(dev), config).cpu())
    return torch.cat(out) if out else torch.zeros(0, net.num_bases)


@torch.no_grad()
def reseed_empty_bases(
    net: CCSTAENet,
    X: torch.Tensor,
    A: torch.Tensor,
    cls: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
    share: float = 0.03,
) -> torch.Tensor:
    """Classes ``cls`` (N,) with every empty class given the worst-fitted patterns.

    A base that no pattern chose is never re-estimated again (k-means'
    dead cluster): it would stay empty for the rest of the fit. Each empty
    base takes the ``share`` (at least 8, at most N // K) of patterns ``X``
    (N, S, S) whose best reconstruction (under their transforms ``A``) is
    worst, and becomes their aligned mean at the next re-estimation. Returns
    a new tensor; ``cls`` is unchanged when no base is empty.
    """
    K = net.num_bases
    counts = torch.bincount(cls, minlength=K)
    empty = [k for k in range(K) if counts[k] == 0]
    if not empty or X.shape[0] < 2 * K:
        return cls
    costs = all_base_costs(net, X, A, mask, config)
    cost = costs.gather(1, cls[:, None].to(torch.long)).squeeze(1)
    order = torch.argsort(cost, descending=True)
    n = min(max(8, int(share * X.shape[0])), X.shape[0] // K)
    out = cls.clone()
    for i, k in enumerate(empty):
        out[order[i * n : (i + 1) * n]] = k
    return out


@torch.no_grad()
def assign_bases(
    net: CCSTAENet,
    X: torch.Tensor,
    A: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
    batch_size: int = 256,
) -> torch.Tensor:
    """:func:`best_bases` of patterns ``X`` (N, S, S) in batches, (N,) long on CPU."""
    costs = all_base_costs(net, X, A, mask, config, batch_size)
    return costs.argmin(-1) if len(costs) else torch.zeros(0, dtype=torch.long)


def pattern_classes(
    net: CCSTAENet, X: torch.Tensor, enc: dict, mask: torch.Tensor, config: TrainConfig
) -> torch.Tensor:
    """Class of every pattern ``X`` (N, S, S) given its :func:`encode` output, (N,) long.

    One base: 0 (the class head's). Several: the base that reconstructs the
    pattern best under its transform (:func:`assign_bases`), the assignment
    training uses; it measured more reliable than the class head's top-1
    (the head learns on detached features, :func:`fit_network`).
    """
    if net.num_bases == 1:
        return enc["cls"]
    return assign_bases(net, X, enc["A"], mask, config)


def coarse_sigma(config: TrainConfig, epoch: int) -> float:
    """Smoothing (model pixels) of ``epoch`` under the coarse-to-fine schedule.

    ``coarse_sigma * (1 - epoch / L)`` with ``L = min(coarse_epochs, epochs // 2)``,
    0 from epoch ``L`` on.
    """
    length = min(config.coarse_epochs, config.epochs // 2)
    if config.coarse_sigma <= 0 or length <= 0:
        return 0.0
    return max(0.0, config.coarse_sigma * (1.0 - epoch / length))


def equivariance_weight(config: TrainConfig, epoch: int) -> float:
    """Weight of the equivariance term in ``epoch`` (EQUIVARIANCE_SCHEDULE).

    ``"constant"`` (the package's schedule): ``config.equivariance`` in every
    epoch. ``"decay"`` (measured, not used): ``config.equivariance`` through
    the coarse-to-fine phase (``L = min(coarse_epochs, epochs // 2)`` epochs,
    at least 1), then falling linearly to 0 over the next ``L`` epochs, so
    that the fine fit is the reconstruction loss's alone; on the multislice
    monolayer flake at 10 % its first attempt no longer locked on (the
    constant weight's did), docs/benchmarks.md.
    """
    w = config.equivariance
    if w <= 0 or EQUIVARIANCE_SCHEDULE == "constant":
        return w
    length = max(1, min(config.coarse_epochs, config.epochs // 2))
    return w * min(1.0, max(0.0, 2.0 - epoch / length))


def spot_mask(ring: torch.Tensor, spots: np.ndarray, radius: float) -> torch.Tensor:
    """``ring`` (S, S) restricted to pixels within ``radius`` of a spot (offsets, px)."""
    S = ring.shape[-1]
    c = (S - 1) / 2.0
    yy, xx = np.mgrid[:S, :S] - c
    d = np.hypot(yy[..., None] - spots[:, 0], xx[..., None] - spots[:, 1]).min(-1)
    near = torch.tensor(d <= radius, dtype=ring.dtype, device=ring.device)
    return ring * near


def _save_checkpoint(path, state: dict) -> None:
    """``torch.save`` through :func:`~py4dstem_ccstae.io.atomic_write` (replaces it)."""
    from .io import atomic_write

    with atomic_write(path, overwrite=True, argname="checkpoint") as tmp:
        torch.save(state, tmp)


@dataclass
class _RunState:
    """What training carries from epoch to epoch (and a checkpoint keeps).

    ``history``: the per-epoch records; ``best``, ``stale``: the plateau stop
    (best loss so far, epochs since it improved by ``min_delta``); ``mask``
    (S, S): the compared region (the ring, or the mask schedule's spots).
    """

    history: list[dict]
    best: float
    stale: int
    mask: torch.Tensor

    def plateaued(self, config: TrainConfig) -> bool:
        """No improvement for ``patience`` epochs, and at least ``min_epochs`` run."""
        return self.stale >= config.patience and len(self.history) >= config.min_epochs

    def record(self, rec: dict, sigma: float, config: TrainConfig) -> None:
        """Append an epoch's record and advance the plateau stop."""
        self.history.append(rec)
        if sigma > 0:
            # losses of smoothed patterns are not comparable with the rest
            self.best, self.stale = math.inf, 0
        elif rec["loss"] < self.best * (1.0 - config.min_delta):
            self.best, self.stale = rec["loss"], 0
        else:
            self.stale += 1


def _resume(
    checkpoint, net: CCSTAENet, opt, gen: torch.Generator, n_patterns: int
) -> _RunState:
    """Network, optimiser and generator restored from ``checkpoint``; its run state.

    Raises ValueError when the checkpoint was written for another number of
    training patterns or a network of another shape.
    """
    dev = next(net.parameters()).device
    state = torch.load(checkpoint, map_location=dev, weights_only=True)
    if int(state["n_patterns"]) != n_patterns:
        n_ckpt = int(state["n_patterns"])
        raise ValueError(
            f"checkpoint: {str(checkpoint)!r} was written for {n_ckpt} "
            f"training patterns, not {n_patterns}"
        )
    own = net.state_dict()
    diff = [
        f"{k} {tuple(v.shape)} (this network: {tuple(own[k].shape)})"
        for k, v in state["net"].items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if diff or set(state["net"]) != set(own):
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise ValueError(
            f"checkpoint: {str(checkpoint)!r} holds a network of another shape "
            f"({'; '.join(diff[:3]) or 'other tensors'}{more}): it was written "
            "with other size, width or num_bases; resume with those options"
        )
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    history = json.loads(state["history"])
    return _RunState(
        history, float(state["best"]), int(state["stale"]), state["mask"].to(dev)
    )


#: Half-range of each component of the random transforms of the
#: equivariance term (rotation in rad, the two scales and the symmetric
#: shear): twice the lock-on check's probe (``delta`` of
#: :func:`~py4dstem_ccstae.encoding.encoder_sensitivity`).
EQUIVARIANCE_DELTA = 0.02

#: ``"constant"``: the term is on for the whole fit; ``"decay"``: its weight
#: falls to 0 after the coarse-to-fine phase (:func:`equivariance_weight`;
#: kept to reproduce the benchmark that measured it).
EQUIVARIANCE_SCHEDULE = "constant"


def random_transforms(count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` random transforms ``T = R(phi) @ [[1 + a, s], [s, 1 + b]]`` (count, 2, 2).

    ``phi`` (rad), ``a``, ``b``, ``s`` each uniform in
    ``[-EQUIVARIANCE_DELTA, EQUIVARIANCE_DELTA]``; pixel ``(qx, qy)`` frame,
    as the lattice transforms of :func:`~py4dstem_ccstae.warp.warp`.
    """
    u = torch.rand(count, 4, generator=gen, dtype=torch.float64)
    u = (2.0 * u - 1.0) * EQUIVARIANCE_DELTA
    c, s = torch.cos(u[:, 0]), torch.sin(u[:, 0])
    R = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    S = torch.stack(
        [
            torch.stack([1.0 + u[:, 1], u[:, 3]], -1),
            torch.stack([u[:, 3], 1.0 + u[:, 2]], -1),
        ],
        -2,
    )
    return (R @ S).to(torch.float32)


def equivariance_loss(
    net: CCSTAENet, xb: torch.Tensor, A: torch.Tensor, T: torch.Tensor
) -> torch.Tensor:
    """Per-pattern ``|A(warp(x, T)) - T @ A(x)|^2 / EQUIVARIANCE_DELTA^2`` (B,).

    ``xb`` (B, 1, S, S) patterns, ``A`` (B, 2, 2) the encoder's transforms of
    them (base -> input), ``T`` (B, 2, 2) known transforms applied with
    :func:`~py4dstem_ccstae.warp.warp` (features at ``c + g`` move to ``c +
    T g``). A base -> input transform of the warped pattern is ``T @ A``:
    the property that the lock-on check measures
    (:func:`~py4dstem_ccstae.encoding.encoder_sensitivity`), trained
    directly. An encoder whose output is the same for every pattern pays
    about ``|(T - I) A|^2 / delta^2`` ~ 1 per pattern, whatever the data;
    the reconstruction loss alone does not penalise that collapse enough
    where the lattice's signal is weak against the background.
    ``A(warp(x, T))`` is compared as its symmetry-equivalent nearest ``T @
    A`` (:func:`~py4dstem_ccstae.model.nearest_equivalent`): the encoder's
    rotation wraps at ``+-pi/n``, and without this a pattern near the wrap
    paid ~``|R(2 pi/n) - I|^2 / delta^2`` (~1e4 for n = 4) for following the
    warp, more than a collapsed encoder pays; on scans whose grains take
    every orientation the term then drove the encoder to collapse.
    """
    T = T.to(A.device, A.dtype)
    target = T @ A
    A1 = net(warp(xb, T.to(xb.device, xb.dtype)))["A"]
    # phi wraps at +-pi/n: compare with the equivalent transform nearest the target
    A1 = nearest_equivalent(A1, target, net.symmetry)
    return ((A1 - target) ** 2).sum((-1, -2)) / EQUIVARIANCE_DELTA**2


def _batch_losses(
    net: CCSTAENet,
    xb: torch.Tensor,
    mask: torch.Tensor,
    sigma: float,
    config: TrainConfig,
    T: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Losses of one batch ``xb`` (B, 1, S, S), smoothed by ``sigma`` (model pixels).

    Returns the reconstruction loss (forward + cycle + hinge, mean over the
    batch), the per-pattern forward and cycle terms, the class head's
    cross-entropy (0 with one base) and the mean :func:`equivariance_loss`
    under the transforms ``T`` (B, 2, 2) (0 when ``T`` is None or the term
    is off). The step minimises ``loss + class_loss + w * equi`` with ``w``
    the epoch's :func:`equivariance_weight`.
    """
    out = net(xb)
    xs = gaussian_blur(xb, sigma)
    class_loss = xb.new_zeros(())
    if net.num_bases == 1:
        bs = gaussian_blur(out["base"], sigma)
    else:
        # hard assignment: each pattern trains with the base that
        # reconstructs it best (straight-through onto the class
        # head's probabilities), and the head learns to predict
        # that base (cross-entropy)
        blurred = gaussian_blur(net.bases, sigma)
        target = best_bases(xs, blurred, out["A"].detach(), mask, config)
        probs = out["probs"]
        hard = torch.nn.functional.one_hot(target, net.num_bases)
        sel = hard.to(probs.dtype) + probs - probs.detach()
        bs = torch.einsum("bk,kchw->bchw", sel, blurred)
        # on detached features: the cross-entropy (order 0.1-1)
        # dwarfs the reconstruction loss (order 1e-4); through the
        # shared layers it would fill Adam's second moments and
        # slow the transform's learning for hundreds of steps
        logits = net.class_head(out["features"].detach())
        class_loss = torch.nn.functional.cross_entropy(logits.float(), target)
    fwd, cyc, _ = cycle_losses(
        xs, bs, out["A"], mask, loss=config.loss, overshoot=config.overshoot
    )
    hinge = strain_hinge(out["strain"], config.hinge_limit)
    loss = (fwd + config.cycle_weight * cyc + config.hinge_weight * hinge).mean()
    equi = xb.new_zeros(())
    if T is not None and config.equivariance > 0:
        equi = equivariance_loss(net, xb, out["A"], T).mean()
    return loss, fwd, cyc, class_loss, equi


def _train_epoch(
    net: CCSTAENet,
    X: torch.Tensor,
    perm: torch.Tensor,
    mask: torch.Tensor,
    sigma: float,
    config: TrainConfig,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    gen: torch.Generator | None = None,
) -> dict[str, float]:
    """Optimiser steps over the patterns ``X[perm]``, ``batch_size`` at a time.

    Returns the epoch's means over the patterns: ``loss`` (reconstruction),
    ``forward``, ``cycle``, ``class_loss`` and, while the term is on,
    ``equivariance`` (its unweighted value). Raises RuntimeError on a non-finite loss.
    """
    dev = next(net.parameters()).device
    amp = dev.type == "cuda"
    net.train()
    M = len(perm)
    tot = fwd_tot = cyc_tot = cls_tot = equi_tot = 0.0
    weight = equivariance_weight(config, epoch)
    for s in range(0, M, config.batch_size):
        idx = perm[s : s + config.batch_size]
        xb = X[idx].to(dev)[:, None]
        T = None
        if weight > 0 and gen is not None:
            T = random_transforms(xb.shape[0], gen)  # drawn only when used
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
            loss, fwd, cyc, class_loss, equi = _batch_losses(
                net, xb, mask, sigma, config, T
            )
        total = loss + class_loss + weight * equi
        if not math.isfinite(float(total.detach())):
            # a NaN step would silently turn every weight into NaN
            raise RuntimeError(
                f"CCSTAE.fit: training diverged (non-finite loss in epoch {epoch}) "
                f"with loss={config.loss!r}, lr={config.lr:g}; try loss='mse' "
                "(the default) or a smaller lr"
            )
        opt.zero_grad(set_to_none=True)
        # the class head's cross-entropy trains the head and the
        # equivariance term the encoder; the recorded loss (and the
        # plateau stop) is the reconstruction's alone
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        n = xb.shape[0]
        tot += float(loss.detach()) * n
        fwd_tot += float(fwd.detach().mean()) * n
        cyc_tot += float(cyc.detach().mean()) * n
        cls_tot += float(class_loss.detach()) * n
        equi_tot += float(equi.detach()) * n
    means = {
        "loss": tot / M,
        "forward": fwd_tot / M,
        "cycle": cyc_tot / M,
        "class_loss": cls_tot / M,
    }
    if weight > 0:
        means["equivariance"] = equi_tot / M
    return means


def _refresh_bases(
    net: CCSTAENet, Xs: torch.Tensor, mask: torch.Tensor, config: TrainConfig
) -> None:
    """Bases re-estimated from the epoch's patterns ``Xs``: aligned means, then L1.

    Each base becomes the aligned mean of the patterns assigned to it
    (:func:`update_bases`, classes by :func:`pattern_classes`; a base that
    no pattern chose takes the worst-fitted ones, :func:`reseed_empty_bases`),
    under the encoder's transforms corrected by the rotation search
    (``config.rotation_search``); with ``base_l1 > 0`` its proximal step
    (soft threshold) follows.
    """
    enc = encode(net, Xs)
    enc["cls"] = pattern_classes(net, Xs, enc, mask, config)
    A = searched_transforms(net, Xs, enc, mask) if config.rotation_search else enc["A"]
    if net.num_bases > 1:
        enc["cls"] = reseed_empty_bases(net, Xs, A, enc["cls"], mask, config)
    update_bases(net, Xs, A, enc["cls"])
    if config.base_l1 > 0:
        with torch.no_grad():
            b = net.bases.data
            b.copy_(torch.sign(b) * torch.relu(b.abs() - config.base_l1))


def _scheduled_mask(
    net: CCSTAENet, ring: torch.Tensor, config: TrainConfig, epoch: int
) -> torch.Tensor | None:
    """The shrinking mask after ``epoch`` (``mask_schedule``), or None (no change).

    From epoch ``ceil(shrink_start * epochs) - 1`` on: ``ring`` cut to disks
    around the first base's spots, of radius ``2 * cell`` shrinking linearly
    to the spot radius at the last epoch; None before, without the schedule,
    or when the base shows fewer than two spots.
    """
    first_shrink = int(math.ceil(config.shrink_start * config.epochs))
    if not (config.mask_schedule and epoch + 1 >= first_shrink):
        return None
    base0 = net.bases.detach()[0, 0].cpu().numpy()
    spots, radius, cell = find_spots(
        base0, ring.cpu().numpy() > 0, rel_threshold=config.spot_threshold
    )
    if spots is None:
        return None
    span = max(config.epochs - first_shrink, 1)
    frac = min(1.0, (epoch + 1 - first_shrink) / span)
    return spot_mask(ring, spots, 2 * cell + (radius - 2 * cell) * frac)


def _checkpoint_state(
    net: CCSTAENet,
    opt,
    gen: torch.Generator,
    run: _RunState,
    n_patterns: int,
    attempt,
    options,
) -> dict:
    """What a checkpoint holds (:func:`_resume` reads it back)."""
    return {
        "net": net.state_dict(),
        "opt": opt.state_dict(),
        "gen": gen.get_state(),
        "history": json.dumps(run.history),
        "best": run.best,
        "stale": run.stale,
        "n_patterns": n_patterns,
        "mask": run.mask,
        "attempt": int(attempt),
        "options": json.dumps(options or {}),
    }


def fit_network(
    net: CCSTAENet,
    X: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    checkpoint=None,
    resume: bool = False,
    attempt: int = 0,
    options: dict | None = None,
) -> list[dict]:
    """Train ``net`` on patterns ``X`` (N, S, S) with ring ``mask`` (S, S).

    Parameters
    ----------
    checkpoint : path-like, optional
        Written (atomically) after every epoch: network, optimiser, random
        generator, history and plateau state.
    resume : bool
        Continue from ``checkpoint`` if it exists (a resumed run gives the
        same network as an uninterrupted one on CPU). The checkpoint must come
        from the same data and network shape.
    attempt : int
        Training attempt number, stored in the checkpoint (key ``"attempt"``)
        so that a resumed fit knows which of its lock-on retries it continues
        (:meth:`~py4dstem_ccstae.estimator.CCSTAE.fit`).
    options : dict, optional
        JSON-able options stored in the checkpoint (key ``"options"``); the
        estimator compares them before resuming.

    On CUDA, training steps run under automatic mixed precision (float16
    autocast with a gradient scaler); on CPU in float32.

    With several bases, each pattern trains with the base that reconstructs
    it best (:func:`best_bases`, a hard assignment as in k-means), passed to
    the loss through the class head's probabilities with a straight-through
    gradient; the head also learns to predict that base (cross-entropy on
    detached features, recorded as ``class_loss``). The estimator assigns
    classes at inference by the same rule (:func:`assign_bases`).
    After every epoch each base becomes the aligned mean of the patterns
    assigned to it (:func:`update_bases`).

    Returns the per-epoch history (loss, forward, cycle, seconds; with
    several bases also class_loss; with the equivariance term on also
    ``equivariance``, its unweighted mean). ``loss`` is the reconstruction
    loss alone, which the plateau stop watches.
    """
    from tqdm.auto import tqdm

    dev = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    N = X.shape[0]
    ring = mask.to(dev)
    params = [p for n, p in net.named_parameters() if n != "bases"]
    opt = torch.optim.Adam(params, lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        run = _resume(checkpoint, net, opt, gen, N)
        if run.plateaued(config):
            return run.history
    else:
        run = _RunState([], math.inf, 0, ring)
        with torch.no_grad():
            init_bases(net, X, ring.cpu(), gen, config.epoch_size)
    start = len(run.history)
    bar = tqdm(
        range(start, config.epochs),
        desc="CC-ST-AE",
        unit="epoch",
        disable=not progress,
        initial=start,
        total=config.epochs,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        perm = torch.randperm(N, generator=gen)[: min(N, config.epoch_size)]
        sigma = coarse_sigma(config, epoch)
        means = _train_epoch(net, X, perm, run.mask, sigma, config, opt, scaler, epoch, gen)
        _refresh_bases(net, X[perm], run.mask, config)
        rec = {
            "epoch": epoch,
            "loss": means["loss"],
            "forward": means["forward"],
            "cycle": means["cycle"],
            "seconds": time.perf_counter() - t0,
        }
        if net.num_bases > 1:
            rec["class_loss"] = means["class_loss"]
        if "equivariance" in means:
            rec["equivariance"] = means["equivariance"]
        if sigma > 0:
            rec["sigma"] = sigma
        mask = _scheduled_mask(net, ring, config, epoch)
        if mask is not None:
            # a new mask: restart the plateau stop
            run.mask, run.best, run.stale = mask, math.inf, 0
            rec["mask_pixels"] = int(mask.sum())
        run.record(rec, sigma, config)
        bar.set_postfix(loss=f"{rec['loss']:.3e}")
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint, _checkpoint_state(net, opt, gen, run, N, attempt, options)
            )
        if run.plateaued(config):
            break
    bar.close()
    return run.history
