"""Training loop, base update and per-pattern refinement (torch).

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
from dataclasses import dataclass, field

import numpy as np
import torch

from .losses import cycle_losses, strain_hinge
from .model import CCSTAENet, compose_A

__all__ = ["TrainConfig", "fit_network", "encode", "refine", "resolve_device"]


@dataclass
class TrainConfig:
    """Training settings (defaults fixed once, never tuned on ground truth).

    Attributes
    ----------
    epochs : int
        Maximum epochs.
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
    min_delta : float
        Relative improvement that counts.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    cycle_weight: float = 1.0
    hinge_limit: float = 0.06
    hinge_weight: float = 100.0
    patience: int = 4
    min_delta: float = 2e-3
    history: list = field(default_factory=list)


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


def fit_network(
    net: CCSTAENet,
    X: torch.Tensor,
    mask: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Train ``net`` on patterns ``X`` (N, S, S) with ring ``mask`` (S, S).

    Returns the per-epoch history (loss, forward, cycle, seconds).
    """
    from tqdm.auto import tqdm

    dev = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    N = X.shape[0]
    mask = mask.to(dev)
    # initial bases: the mean pattern (per class: patterns split at random)
    with torch.no_grad():
        init_cls = torch.randint(0, net.num_bases, (N,), generator=gen)
        update_bases(net, X, torch.eye(2).expand(N, 2, 2), init_cls)
    params = [p for n, p in net.named_parameters() if n != "bases"]
    opt = torch.optim.Adam(params, lr=config.lr)
    history: list[dict] = []
    best, stale = math.inf, 0
    bar = tqdm(range(config.epochs), desc="CC-ST-AE", unit="epoch", disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(N, generator=gen)
        tot = fwd_tot = cyc_tot = 0.0
        for s in range(0, N, config.batch_size):
            idx = perm[s : s + config.batch_size]
            xb = X[idx].to(dev)[:, None]
            out = net(xb)
            fwd, cyc, _ = cycle_losses(xb, out["base"], out["A"], mask)
            hinge = strain_hinge(out["strain"], config.hinge_limit)
            loss = (fwd + config.cycle_weight * cyc + config.hinge_weight * hinge).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = xb.shape[0]
            tot += float(loss.detach()) * n
            fwd_tot += float(fwd.detach().mean()) * n
            cyc_tot += float(cyc.detach().mean()) * n
        enc = encode(net, X)
        update_bases(net, X, enc["A"], enc["cls"])
        rec = {
            "epoch": epoch,
            "loss": tot / N,
            "forward": fwd_tot / N,
            "cycle": cyc_tot / N,
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3e}")
        if rec["loss"] < best * (1.0 - config.min_delta):
            best, stale = rec["loss"], 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    return history


def refine(
    X: torch.Tensor,
    bases: torch.Tensor,
    cls: torch.Tensor,
    strain: torch.Tensor,
    phi: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int = 100,
    lr: float = 2e-3,
    batch_size: int = 512,
    cycle_weight: float = 1.0,
    spots: torch.Tensor | None = None,
    spot_radius: float | None = None,
    mode: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise each pattern's transform directly against its base (batched Adam).

    Parameters
    ----------
    X : (N, S, S) patterns; bases : (K, 1, S, S); cls : (N,) base index.
    strain : (N, 3) and phi : (N,) starting values (from the encoder).
    mask : (S, S) mask of compared base-frame pixels.
    spots : (n, 2) base spot offsets from the centre (pixels). Given: only
        the masked pixels are compared, each moved rigidly with its nearest
        base spot (spot shapes kept, see :func:`~py4dstem_ccstae.warp.warp_spots`);
        the pixel-to-spot assignment is computed once, so a step costs
        O(masked pixels); the cycle term compares the base, moved spot by
        spot, with the input's own pixels within ``spot_radius`` of each moved
        spot. None: whole-image warps, forward + cycle terms.

    Returns
    -------
    strain, phi : refined values, same shapes.
    """
    from .warp import _pixel_to_grid

    dev = bases.device
    S = X.shape[-1]
    if spots is not None:
        pix = torch.nonzero(mask.to(dev) > 0).to(bases.dtype)  # (M, 2) row, col
        c = (S - 1) / 2.0
        sp = spots.to(device=dev, dtype=bases.dtype)
        owner = torch.cdist(pix - c, sp).argmin(-1)  # (M,)
        base_vals = bases[:, 0][:, pix[:, 0].long(), pix[:, 1].long()]  # (K, M)
        # input-frame pixels: the mask dilated by the largest spot displacement
        reach = int(np.ceil(float(sp.norm(dim=-1).max()) * 0.12)) + 1
        big = torch.nn.functional.max_pool2d(
            (mask.to(dev) > 0).float()[None, None], 2 * reach + 1, 1, reach
        )[0, 0]
        pix_in = torch.nonzero(big > 0).to(bases.dtype)  # (M', 2)
        radius2 = float(spot_radius) ** 2 if spot_radius else float("inf")
    out_s, out_p = [], []
    for s in range(0, X.shape[0], batch_size):
        xb = X[s : s + batch_size].to(dev)[:, None]
        cb = cls[s : s + batch_size].to(dev)
        e = strain[s : s + batch_size].clone().to(dev).requires_grad_(True)
        p = phi[s : s + batch_size].clone().to(dev).requires_grad_(True)
        opt = torch.optim.Adam([e, p], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 1e-3)
        if spots is not None:
            # input-frame pixel -> spot assignment from the starting transform;
            # refinement moves spots far less than their spacing
            with torch.no_grad():
                moved0 = sp @ compose_A(e, p).transpose(-1, -2)  # (B, n, 2)
                dmin, own = (torch.cdist(pix_in - c, moved0) ** 2).min(-1)  # (B, M')
                w = (dmin <= radius2).to(xb.dtype)
                xvals = xb[:, 0][:, pix_in[:, 0].long(), pix_in[:, 1].long()]
        for _ in range(steps):
            A = compose_A(e, p)
            if spots is None:
                fwd, cyc, _ = cycle_losses(xb, bases[cb], A, mask.to(dev), mode=mode)
                loss = (fwd + cycle_weight * cyc).sum()
            else:
                disp = sp @ A.transpose(-1, -2) - sp  # (B, n, 2)
                src = pix + disp[:, owner]  # (B, M, 2)
                grid = _pixel_to_grid(src, (S, S))[:, None]  # (B, 1, M, 2)
                vals = torch.nn.functional.grid_sample(
                    xb, grid, mode=mode, padding_mode="zeros", align_corners=False
                )[:, 0, 0]
                fwd = ((vals - base_vals[cb]) ** 2).mean(-1)
                # cycle: the base moved onto the input's own pixels
                shift = torch.gather(disp, 1, own.unsqueeze(-1).expand(-1, -1, 2))
                grid = _pixel_to_grid(pix_in - shift, (S, S))[:, None]
                bvals = torch.nn.functional.grid_sample(
                    bases[cb], grid, mode=mode, padding_mode="zeros", align_corners=False
                )[:, 0, 0]
                cyc = (w * (bvals - xvals) ** 2).sum(-1) / w.sum(-1).clamp_min(1.0)
                loss = (fwd + cycle_weight * cyc).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        out_s.append(e.detach().cpu())
        out_p.append(p.detach().cpu())
    return torch.cat(out_s), torch.cat(out_p)


def seed_everything(seed: int) -> None:
    """Seed torch and numpy (CPU runs are then reproducible)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
