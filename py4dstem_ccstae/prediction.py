"""``CCSTAE.predict`` in this process: prepared inputs to a Prediction, batch by batch.

Per batch of :data:`PREDICT_BATCH` patterns: the encoder's transform, the
class (the base that reconstructs the pattern best under its transform, as
in training), the transform corrected by the in-plane rotation search
against that base (option ``rotation_search``), then the spot model's
per-pattern refinement (or, without it, the masked reconstruction error).
A pattern is valid when its base has spots while it shows them (median spot
gain at least
:data:`~py4dstem_ccstae.fitting.WEAK_GAIN`), and no spot of its base lost more
than :data:`COVERAGE_DROP` of its disk off the detector compared with the
training data. Memory holds one batch of inputs plus the outputs. Where the
batches run (one process, row blocks on a cluster) is
:mod:`~py4dstem_ccstae.distributed`'s business.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .fitted import Prediction
from .fitting import WEAK_GAIN
from .losses import cycle_losses
from .spotmodel import SpotModel
from .train import TrainConfig, encode, pattern_classes, searched_transforms

__all__ = ["check_finite", "predict_inputs"]

#: Loss of a spot's disk area on the detector (fraction), relative to the
#: training data, from which a position is invalid (its field of view is
#: partly off the detector: the origin moved, or another detector).
COVERAGE_DROP = 0.2

#: Patterns read and predicted at a time.
PREDICT_BATCH = 1024


def check_finite(net, spot_model: SpotModel) -> None:
    """ValueError if the network or the spot model holds NaN or inf."""
    bad = [
        name
        for name, t in [
            *net.named_parameters(),
            *net.named_buffers(),
            *spot_model.state().items(),
        ]
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"the model holds non-finite values (in {', '.join(bad[:3])}{more}): "
            "its training diverged (as the Poisson loss did before commit "
            "1061830); fit it again"
        )


def predict_inputs(
    net,
    spot_model: SpotModel,
    config: dict,
    fitted,
    cfg: TrainConfig,
    inputs,
    refine_transforms: bool | None,
) -> Prediction:
    """Transforms, classes, errors and validity of every pattern of ``inputs``.

    Parameters
    ----------
    net : CCSTAENet
        The fitted network (its device is where the batches run).
    spot_model : SpotModel
        The fitted spot model.
    config : dict
        The model's options (``refine``, ``refine_steps``, ``spot_texture``,
        ``rotation_search``).
    fitted : FittedState
        The fitted state (``spot_coverage``: the training data's disk areas).
    cfg : TrainConfig
        The training configuration (for the class by reconstruction).
    inputs : DiffractionInputs
        Prepared for the model's geometry.
    refine_transforms : bool or None
        Run the refinement (None: ``config["refine"]``).

    Returns
    -------
    Prediction
        As :meth:`~py4dstem_ccstae.estimator.CCSTAE.predict`.
    """
    ctx = _context(net, spot_model, config, fitted, cfg, inputs, refine_transforms)
    N = inputs.n_patterns
    A = torch.empty(N, 2, 2, dtype=torch.float64)
    cls = torch.empty(N, dtype=torch.long)
    error = torch.empty(N, dtype=torch.float64)
    shows = torch.ones(N, dtype=torch.bool)  # the pattern shows its base's spots
    off = np.zeros(N, bool)  # a spot of its base is (partly) off the detector
    for idx, xb in inputs.iter_batches(PREDICT_BATCH):
        t = torch.from_numpy(idx)
        A[t], cls[t], error[t], shows[t], lost = _predict_batch(
            torch.from_numpy(xb), idx, ctx
        )
        off[idx[lost]] = True
    shape = inputs.scan_shape
    if off.any():
        warnings.warn(
            f"CCSTAE.predict: at {int(off.sum())} of {N} positions a Bragg spot of "
            f"the model lies (partly) off the detector, more than at training "
            "(the origin moved, or a smaller detector): those positions are "
            "marked invalid (mask 0, NaN strain). Check the origin calibration.",
            UserWarning,
            stacklevel=3,
        )
    # a base without spots (vacuum, amorphous) when another base has
    # them: its patterns carry no lattice and are reported invalid
    # (no base with spots at all: no lattice anywhere, every position invalid)
    valid = spot_model.has_lattice[cls] & shows & torch.from_numpy(~off)
    return Prediction(
        A=A.cpu().numpy().astype(np.float64).reshape(*shape, 2, 2),
        cls=cls.numpy().reshape(shape),
        error=error.cpu().numpy().astype(np.float64).reshape(shape),
        valid=valid.numpy().reshape(shape),
    )


def _context(net, sm, config, fitted, cfg, inputs, refine_transforms) -> dict:
    """What every batch of :func:`predict_inputs` shares (on the network's device)."""
    dev = next(net.parameters()).device
    do_refine = config["refine"] if refine_transforms is None else refine_transforms
    spots, spot_mask = sm.spot_mask(inputs.mask)
    do_refine = bool(do_refine) and spots is not None
    # the refinement may work on larger patterns than the encoder
    # (refine_size): same field of view, spot offsets scaled
    rsize = sm.refine_size
    fine = inputs if rsize == inputs.size or not do_refine else inputs.resized(rsize)
    # static background: fitted with the patches (background="radial")
    background = None if sm.patches is None else sm.background
    return dict(
        net=net,
        sm=sm,
        config=config,
        dev=dev,
        inputs=inputs,
        fine=fine,
        do_refine=do_refine,
        ring=torch.tensor(inputs.mask, dtype=torch.float32),
        spot_mask=spot_mask,
        cfg=cfg,
        background=None if background is None else background.to(dev),
        patches=sm.class_patches(net.bases, dev) if do_refine else {},
        ref_coverage=fitted.get("spot_coverage")
        or [None if sp is None else [1.0] * len(sp) for sp in sm.base_spots],
    )


def _predict_batch(X: torch.Tensor, idx: np.ndarray, ctx: dict):
    """One batch: transforms, classes, errors, "shows its lattice", spots off.

    Encoder, class by reconstruction, rotation search (``rotation_search``),
    then the spot model's refinement (or, without it, the masked
    reconstruction error).
    """
    net, sm, dev, config = ctx["net"], ctx["sm"], ctx["dev"], ctx["config"]
    enc = encode(net, X)
    enc["cls"] = pattern_classes(net, X, enc, ctx["ring"], ctx["cfg"])
    if config["rotation_search"]:
        enc["A"] = searched_transforms(net, X, enc, ctx["ring"])
    Ab = enc["A"].to(torch.float64)
    err = torch.full((len(idx),), float("nan"), dtype=torch.float64)
    todo = torch.ones(len(idx), dtype=torch.bool)  # error still to compute
    lattice = torch.ones(len(idx), dtype=torch.bool)
    if ctx["do_refine"]:
        fine = ctx["fine"]
        Xr = X if fine is ctx["inputs"] else torch.from_numpy(fine.batch(idx))
        for rows, out in sm.refine(
            Xr,
            Ab,
            enc["cls"],
            ctx["patches"],
            iterations=int(config["refine_steps"]),
            background=ctx["background"],
            texture=config["spot_texture"],
        ).values():
            Ab[rows], err[rows], todo[rows] = out["A"], out["error"], False
            # a pattern that shows none of its base's spots (vacuum,
            # amorphous, blank) carries no lattice: same rule as fit's
            # vacuum check
            lattice[rows] = out["gain"].median(-1).values >= WEAK_GAIN
    if bool(todo.any()):
        # encoder only (or a base without spots): masked reconstruction error
        rows = torch.nonzero(todo)[:, 0]
        with torch.no_grad():
            fwd, _, _ = cycle_losses(
                X[rows].to(dev)[:, None],
                net.bases[enc["cls"][rows].to(dev)],
                Ab[rows].to(dev, torch.float32),
                ctx["spot_mask"].to(dev),
            )
        err[rows] = fwd.cpu().to(torch.float64)
    return Ab.cpu(), enc["cls"], err, lattice, _spots_lost(sm, ctx, idx, enc["cls"])


def _spots_lost(sm: SpotModel, ctx: dict, idx: np.ndarray, cls: torch.Tensor) -> np.ndarray:
    """Bool (n,): a spot of the pattern's base lost part of its disk off the detector.

    Compared with the training data (``ref_coverage``): a loss of more than
    :data:`COVERAGE_DROP` of the disk's area means the spot cannot be
    measured there.
    """
    lost = np.zeros(len(idx), bool)
    cov = sm.coverage(ctx["inputs"], idx)
    for k, (c, ref) in enumerate(zip(cov, ctx["ref_coverage"], strict=True)):
        if c is None:
            continue
        gone = ((np.asarray(ref)[None] - c) > COVERAGE_DROP).any(-1)
        lost |= gone & (cls.numpy() == k)
    return lost
