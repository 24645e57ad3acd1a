"""Training loop and base update (torch); per-pattern refinement is in
:mod:`py4dstem_ccstae.spotfit`.

Work is on a tensor ``X`` of patterns ``(N, S, S)`` (already calibrated and
scaled) and a ring mask ``(S, S)``; where the data come from is the
estimator's business.

Bases are re-estimated after every epoch as the aligned mean of the patterns
assigned to them (inputs warped into the base frame by the current
transforms): an average over thousands of patterns is far less noisy than a
base learned by gradient steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .config import Options
from .losses import cycle_losses, strain_hinge
from .model import CCSTAENet
from .spotfit import find_spots

__all__ = ["TrainConfig", "fit_network", "encode", "resolve_device"]


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
        (:func:`~py4dstem_ccstae.spotfit.find_spots`), whose radius shrinks
        linearly from twice the spot cell (0.9 x spot spacing: nearly the
        whole ring) to the spot radius at the last epoch. The plateau stop
        restarts whenever the mask changes.
    shrink_start : float
        Fraction of ``epochs`` after which the mask starts shrinking.
    spot_threshold : float
        Weakest spot of the base used by the schedule, relative to the
        brightest (``rel_threshold`` of :func:`~py4dstem_ccstae.spotfit.find_spots`).
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
    base_l1 : float
        L1 sparsity on the bases, applied as its proximal step (soft
        threshold ``sign(b) * max(|b| - base_l1, 0)``, scaled-intensity units)
        after every re-estimation of the bases: the bases are aligned means,
        not gradient-trained, so the penalty acts through its proximal
        operator. 0: off.
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

    over all patterns: 1 follows the warp exactly, 0 ignores it. An encoder
    that never locked on (its features constant over the scan, its output
    the scan's mean transform) scores ~0 on every probe, whereas one that
    works scores well above it even on a crystal with no strain at all
    (the probe transforms are applied, not looked for in the data).

    Returns
    -------
    dict
        Sensitivity per probe name and their mean under ``"mean"``.
    """
    from .warp import warp

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
        expected = T @ A0 - A0
        num = float(((A1 - A0) * expected).sum())
        den = float((expected * expected).sum())
        out[name] = num / den if den > 0 else 0.0
    out["mean"] = float(np.mean([out[k] for k in SENSITIVITY_PROBES]))
    return out


@torch.no_grad()
def best_bases(
    x: torch.Tensor,
    bases: torch.Tensor,
    A: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
) -> torch.Tensor:
    """Index of the base that reconstructs each pattern best, (B,) long.

    The training loss (forward + ``cycle_weight`` x cycle, the configured
    per-pixel loss) of every pattern ``x`` (B, 1, S, S) against every base
    ``bases`` (K, 1, S, S), each warped by the pattern's own transform ``A``
    (B, 2, 2, base -> input, pixels); ties go to the lower index.
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
    return torch.stack(costs, -1).argmin(-1)


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
    dev = net.bases.device
    out = []
    for s in range(0, X.shape[0], batch_size):
        xb = X[s : s + batch_size].to(dev)[:, None]
        ab = A[s : s + batch_size].to(dev, xb.dtype)
        out.append(best_bases(xb, net.bases, ab, mask.to(dev), config).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


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


@torch.no_grad()
def update_bases(
    net: CCSTAENet,
    X: torch.Tensor,
    A: torch.Tensor,
    cls: torch.Tensor,
    batch_size: int = 256,
) -> None:
    """Set each base to the aligned mean of its patterns (warped by ``inv(A)``)."""
    from .warp import warp

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


def coarse_sigma(config: TrainConfig, epoch: int) -> float:
    """Smoothing (model pixels) of ``epoch`` under the coarse-to-fine schedule.

    ``coarse_sigma * (1 - epoch / L)`` with ``L = min(coarse_epochs, epochs // 2)``,
    0 from epoch ``L`` on.
    """
    length = min(config.coarse_epochs, config.epochs // 2)
    if config.coarse_sigma <= 0 or length <= 0:
        return 0.0
    return max(0.0, config.coarse_sigma * (1.0 - epoch / length))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``x`` (B, C, H, W); ``sigma`` in pixels.

    Zero padding (outside the pattern is no signal); the kernel is truncated
    at 3 sigma and normalised. ``sigma <= 0`` returns ``x`` unchanged.
    """
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    kx = k.view(1, 1, -1, 1).expand(C, 1, -1, 1).contiguous()
    ky = k.view(1, 1, 1, -1).expand(C, 1, 1, -1).contiguous()
    x = torch.nn.functional.conv2d(x, kx, padding=(r, 0), groups=C)
    return torch.nn.functional.conv2d(x, ky, padding=(0, r), groups=C)


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
    several bases also class_loss). ``loss`` is the reconstruction loss.
    """
    import json
    import os

    from tqdm.auto import tqdm

    dev = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    N = X.shape[0]
    ring = mask.to(dev)
    mask = ring
    params = [p for n, p in net.named_parameters() if n != "bases"]
    opt = torch.optim.Adam(params, lr=config.lr)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: list[dict] = []
    best, stale, start = math.inf, 0, 0
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location=dev, weights_only=True)
        if int(state["n_patterns"]) != N:
            n_ckpt = int(state["n_patterns"])
            raise ValueError(
                f"checkpoint: {str(checkpoint)!r} was written for {n_ckpt} "
                f"training patterns, not {N}"
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
        best, stale, start = float(state["best"]), int(state["stale"]), len(history)
        mask = state["mask"].to(dev)
        if stale >= config.patience and len(history) >= config.min_epochs:
            return history
    else:
        with torch.no_grad():
            init_bases(net, X, mask.cpu(), gen, config.epoch_size)
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
        net.train()
        perm = torch.randperm(N, generator=gen)[: min(N, config.epoch_size)]
        M = len(perm)
        tot = fwd_tot = cyc_tot = cls_tot = 0.0
        sigma = coarse_sigma(config, epoch)
        for s in range(0, M, config.batch_size):
            idx = perm[s : s + config.batch_size]
            xb = X[idx].to(dev)[:, None]
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
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
                loss = (
                    fwd + config.cycle_weight * cyc + config.hinge_weight * hinge
                ).mean()
            if not math.isfinite(float(loss.detach())):
                # a NaN step would silently turn every weight into NaN
                raise RuntimeError(
                    f"CCSTAE.fit: training diverged (non-finite loss in epoch {epoch}) "
                    f"with loss={config.loss!r}, lr={config.lr:g}; try loss='mse' "
                    "(the default) or a smaller lr"
                )
            opt.zero_grad(set_to_none=True)
            # the class head's cross-entropy trains the head; the recorded
            # loss (and the plateau stop) is the reconstruction's alone
            scaler.scale(loss + class_loss).backward()
            scaler.step(opt)
            scaler.update()
            n = xb.shape[0]
            tot += float(loss.detach()) * n
            fwd_tot += float(fwd.detach().mean()) * n
            cyc_tot += float(cyc.detach().mean()) * n
            cls_tot += float(class_loss.detach()) * n
        Xs = X[perm]
        enc = encode(net, Xs)
        update_bases(net, Xs, enc["A"], pattern_classes(net, Xs, enc, mask, config))
        if config.base_l1 > 0:
            with torch.no_grad():
                b = net.bases.data
                b.copy_(torch.sign(b) * torch.relu(b.abs() - config.base_l1))
        rec = {
            "epoch": epoch,
            "loss": tot / M,
            "forward": fwd_tot / M,
            "cycle": cyc_tot / M,
            "seconds": time.perf_counter() - t0,
        }
        if net.num_bases > 1:
            rec["class_loss"] = cls_tot / M
        if sigma > 0:
            rec["sigma"] = sigma
        first_shrink = int(math.ceil(config.shrink_start * config.epochs))
        if config.mask_schedule and epoch + 1 >= first_shrink:
            base0 = net.bases.detach()[0, 0].cpu().numpy()
            spots, radius, cell = find_spots(
                base0, ring.cpu().numpy() > 0, rel_threshold=config.spot_threshold
            )
            if spots is not None:
                span = max(config.epochs - first_shrink, 1)
                frac = min(1.0, (epoch + 1 - first_shrink) / span)
                mask = spot_mask(ring, spots, 2 * cell + (radius - 2 * cell) * frac)
                best, stale = math.inf, 0  # a new mask: restart the plateau stop
                rec["mask_pixels"] = int(mask.sum())
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3e}")
        if sigma > 0:
            # losses of smoothed patterns are not comparable with the rest
            best, stale = math.inf, 0
        elif rec["loss"] < best * (1.0 - config.min_delta):
            best, stale = rec["loss"], 0
        else:
            stale += 1
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                {
                    "net": net.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "history": json.dumps(history),
                    "best": best,
                    "stale": stale,
                    "n_patterns": N,
                    "mask": mask,
                    "attempt": int(attempt),
                    "options": json.dumps(options or {}),
                },
            )
        if stale >= config.patience and len(history) >= config.min_epochs:
            break
    bar.close()
    return history
