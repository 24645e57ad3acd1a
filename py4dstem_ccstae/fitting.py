"""The stages of ``CCSTAE.fit`` after the inputs: what is trained on, and how it is checked.

In the order ``fit`` runs them:

1. :func:`training_data`, :func:`training_rows`: every pattern, or a fixed
   random subset of :data:`MAX_TRAIN_PATTERNS` of a larger scan (memory stays
   bounded), read in this process or on a dask cluster.
2. :func:`auto_symmetry`: ``symmetry="auto"`` from the spot geometry of
   patterns spread over the training set.
3. :func:`train_locked`: training with the lock-on check: an encoder that
   ignores known warps of its input (it never locked on) is trained again from
   a new initialisation; the most sensitive network is kept.
4. :func:`fit_spot_model`: the refinement's spot patches and background from
   aligned training patterns spread over the whole set.
5. :func:`gain_summary`, :func:`spot_coverage`: what the training patterns
   show of their bases' spots (the vacuum warning; the disk area on the
   detector that ``predict`` compares against).

Subsets are spread evenly over the training rows (:func:`spread`), which
follow the scan row-major, so they sample the whole scan, not its top rows.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch

from .model import CCSTAENet
from .spotmodel import SpotModel, resize_bases
from .symmetry import lattice_symmetry
from .train import (
    TrainConfig,
    encode,
    encoder_sensitivity,
    fit_network,
    pattern_classes,
    searched_transforms,
)

__all__ = [
    "auto_symmetry",
    "fit_spot_model",
    "fit_spots",
    "gain_summary",
    "network_options",
    "spot_coverage",
    "spread",
    "train_locked",
    "training_data",
    "training_rows",
    "warn_no_spots",
]

#: Largest training set; larger scans train on a fixed random subset.
MAX_TRAIN_PATTERNS = 16384
#: Patterns used to re-estimate the bases' spot patches after training.
REALIGN_PATTERNS = 4096

#: Patterns whose spot geometry decides ``symmetry="auto"``.
SYMMETRY_PATTERNS = 64

#: Patterns of the lock-on check (:func:`~py4dstem_ccstae.train.encoder_sensitivity`).
SENSITIVITY_PATTERNS = 256
#: Seed step between training attempts (attempt ``k`` uses ``seed + k * step``).
RETRY_SEED_STEP = 1000

#: Median spot gain below which a pattern shows no lattice of its base.
WEAK_GAIN = 0.25

#: Fraction of such training patterns from which ``fit`` warns (vacuum in the scan).
WEAK_WARN_FRACTION = 0.05


def spread(n: int, k: int) -> np.ndarray | slice:
    """``min(n, k)`` row indices spread evenly over ``range(n)`` (all: ``slice(None)``).

    The training rows follow the scan (row-major), so evenly spaced rows
    sample the whole scan, not its top.
    """
    if n <= k:
        return slice(None)
    return np.linspace(0, n - 1, k).astype(int)


def training_rows(n_all: int, seed: int) -> np.ndarray:
    """Flat indices of the training patterns of a scan of ``n_all`` patterns.

    All of them, or a sorted random subset of :data:`MAX_TRAIN_PATTERNS`
    (``numpy.random.default_rng(seed)``) of a larger scan.
    """
    if n_all > MAX_TRAIN_PATTERNS:
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(n_all, MAX_TRAIN_PATTERNS, replace=False))
    return np.arange(n_all)


def training_data(
    data,
    braggvectors,
    seed: int,
    *,
    options: dict,
    prepare,
    client=None,
    datapath: str | None = None,
):
    """``(inputs, train_idx, X)``: the inputs, the training rows and their patterns.

    Parameters
    ----------
    data : DataCube, DiffractionInputs, str or PathLike
        As ``CCSTAE.fit``'s; a path is opened lazily in this process, or read
        on the cluster with ``client``.
    braggvectors : BraggVectors or None
        For the ring.
    seed : int
        Seeds the training subset (:func:`training_rows`).
    options : dict
        Keyword arguments of ``DiffractionInputs.from_datacube`` (the
        model's input options), for the cluster's reader.
    prepare : callable
        ``prepare(data, braggvectors)`` -> the model's DiffractionInputs
        (in this process).
    client, datapath
        As ``CCSTAE.fit``'s.

    Returns
    -------
    inputs : DiffractionInputs
    train_idx : ndarray of int
        Flat scan indices of the training patterns.
    X : torch.Tensor float32 (n, size, size)
        Their network inputs.
    """

    def training_set(n_all: int) -> np.ndarray:
        return training_rows(n_all, seed)

    if client is None and isinstance(data, (str, os.PathLike)):
        # one process: the file opened lazily and read as a DataCube
        # (a scan that fits the cache is read once)
        from .io import open_datacube

        data, datapath = open_datacube(data, datapath), None
    if client is not None:
        from .distributed import training_patterns

        inputs, train_idx, X = training_patterns(
            data,
            options,
            training_set,
            braggvectors=braggvectors,
            client=client,
            datapath=datapath,
        )
        return inputs, train_idx, torch.from_numpy(X)
    if datapath is not None:
        raise ValueError("datapath: only used when data is a file path")
    inputs = prepare(data, braggvectors)
    train_idx = training_set(inputs.n_patterns)
    return inputs, train_idx, torch.from_numpy(inputs.batch(train_idx))


def auto_symmetry(X: torch.Tensor, ring_mask: np.ndarray) -> int:
    """The lattice's rotation order from :data:`SYMMETRY_PATTERNS` training patterns.

    ``X`` (n, size, size): the training patterns; the patterns used are
    spread over them (:mod:`~py4dstem_ccstae.symmetry`).
    """
    some = X[spread(len(X), SYMMETRY_PATTERNS)].numpy()
    return lattice_symmetry(some, ring_mask, X.mean(0).numpy())


def network_options(inputs, config: dict, symmetry: int) -> dict:
    """What a training checkpoint must share with a fit to be continued.

    The network's shape (``size``, ``num_bases``, ``symmetry``, ``width``,
    ``max_strain``) and the inputs' geometry (``scaling``, ``q_max``, ``ring``,
    rounded to 1e-9).
    """
    return {
        "size": int(inputs.size),
        "num_bases": int(config["num_bases"]),
        "symmetry": int(symmetry),
        "width": int(config["width"]),
        "max_strain": float(config["max_strain"]),
        "scaling": inputs.scaling,
        "q_max": round(float(inputs.q_max), 9),
        "ring": [round(float(r), 9) for r in inputs.ring],
    }


def lattice_probes(
    net: CCSTAENet, probe: torch.Tensor, ring_mask: np.ndarray, cfg: TrainConfig
) -> torch.Tensor:
    """The lock-on probes whose base has spots (all of them with one base).

    A pattern of a base without spots (vacuum) has no lattice to follow, so
    it would pull the encoder's sensitivity towards 0 in proportion to the
    vacuum in the scan. Falls back to every probe when fewer than 16 remain.
    """
    if net.num_bases == 1:
        return probe
    lattice = SpotModel.find(net.bases, ring_mask, cfg.spot_threshold).has_lattice
    mask = torch.tensor(ring_mask, dtype=torch.float32)
    keep = lattice[pattern_classes(net, probe, encode(net, probe), mask, cfg)]
    return probe[keep] if int(keep.sum()) >= 16 else probe


def train_locked(
    inputs,
    X: torch.Tensor,
    network: dict,
    config: dict,
    cfg: TrainConfig,
    dev: torch.device,
    seed: int,
    *,
    progress: bool,
    checkpoint,
    resume: bool,
    first: int,
) -> tuple[CCSTAENet, list, list, dict]:
    """Train with the lock-on check.

    Attempt ``k`` (from ``first``, the attempt a resumed checkpoint was
    written by, to ``config["retries"]``) trains a new network from seed
    ``seed + k * RETRY_SEED_STEP`` and measures its encoder's sensitivity to
    known warps of :data:`SENSITIVITY_PATTERNS` training patterns; it stops
    at the first whose mean reaches ``config["min_sensitivity"]`` (0: no
    check). Warns (RuntimeWarning, from ``fit``) when none does.

    Returns
    -------
    net, history, attempts, sensitivity
        The most sensitive network, its per-epoch history, every attempt's
        record (seed, epochs, seconds, sensitivity) and the kept sensitivity.
    """
    mask = torch.tensor(inputs.mask, dtype=torch.float32)
    probe = X[spread(len(X), SENSITIVITY_PATTERNS)]
    attempts, best = [], None
    threshold = float(config["min_sensitivity"])

    def locked(sens: dict) -> bool:  # min_sensitivity 0: no check
        return threshold <= 0 or sens["mean"] >= threshold

    for attempt in range(first, 1 + max(first, int(config["retries"]))):
        attempt_seed = seed + attempt * RETRY_SEED_STEP
        t_attempt = time.perf_counter()
        torch.manual_seed(attempt_seed)
        net = CCSTAENet(
            inputs.size,
            num_bases=config["num_bases"],
            symmetry=network["symmetry"],
            max_strain=config["max_strain"],
            width=config["width"],
        ).to(dev)
        history = fit_network(
            net,
            X,
            mask,
            cfg,
            seed=attempt_seed,
            progress=progress,
            checkpoint=checkpoint,
            resume=resume and attempt == first,
            attempt=attempt,
            options=network,
        )
        sens = encoder_sensitivity(net, lattice_probes(net, probe, inputs.mask, cfg))
        attempts.append(
            {
                "seed": attempt_seed,
                "epochs": len(history),
                "seconds": time.perf_counter() - t_attempt,
                "sensitivity": sens,
            }
        )
        if best is None or sens["mean"] > best[2]["mean"]:
            best = (net, history, sens)
        if locked(sens):
            break
    net, history, sensitivity = best
    if not locked(sensitivity):
        warnings.warn(
            f"CCSTAE.fit: the encoder did not lock on in {len(attempts)} "
            f"attempt(s) (sensitivity {sensitivity['mean']:.3f} < min_sensitivity "
            f"{config['min_sensitivity']:g}); the strain map comes from the "
            "per-pattern refinement alone and is less accurate. Try more "
            "'retries', a larger 'coarse_sigma' or another seed; if the scan "
            "holds vacuum or amorphous regions, num_bases=2 "
            "(docs/troubleshooting.md).",
            RuntimeWarning,
            stacklevel=3,
        )
    return net, history, attempts, sensitivity


def fit_spot_model(
    net: CCSTAENet,
    spot_model: SpotModel,
    inputs,
    X: torch.Tensor,
    train_idx: np.ndarray,
    config: dict,
    cfg: TrainConfig,
):
    """The spot model's patches and background from the aligned training patterns.

    :data:`REALIGN_PATTERNS` training patterns spread over the whole
    training set (not its first rows: the top of the scan), all of them when
    fewer, at the refinement's size (``inputs`` resized when it differs),
    starting from the encoder's transforms corrected by the rotation search
    (``config["rotation_search"]``), as prediction does.
    Returns the fitted spot model and every pattern's median gain
    (:meth:`~py4dstem_ccstae.spotmodel.SpotModel.fit`).
    """
    rows_sub = spread(len(X), REALIGN_PATTERNS)
    X_sub = X[rows_sub]
    enc = encode(net, X_sub)
    rsize = spot_model.refine_size
    if rsize == inputs.size:
        sub, bases = X_sub, net.bases
    else:
        sub = torch.from_numpy(inputs.resized(rsize).batch(train_idx[rows_sub]))
        bases = resize_bases(net.bases, rsize)
    mask = torch.tensor(inputs.mask, dtype=torch.float32)
    enc["cls"] = pattern_classes(net, X_sub, enc, mask, cfg)
    if config["rotation_search"]:
        enc["A"] = searched_transforms(net, X_sub, enc, mask)
    return spot_model.fit(
        sub,
        enc["A"],
        enc["cls"],
        bases,
        iterations=int(config["refine_steps"]),
        background=config["background"],
    )


def fit_spots(
    net: CCSTAENet,
    inputs,
    X: torch.Tensor,
    train_idx: np.ndarray,
    config: dict,
    cfg: TrainConfig,
) -> tuple[SpotModel, list | None, float | None, list]:
    """The spot model of a trained network, and what the training data show of it.

    The bases' spots (:meth:`SpotModel.find`; :func:`warn_no_spots` when there
    are none), their patches and background from the aligned training
    patterns when ``config["refine"]`` (:func:`fit_spot_model`), the gain
    quantiles and weak fraction (:func:`gain_summary`) and the disk coverage
    (:func:`spot_coverage`).

    Returns
    -------
    spot_model, gain_quantiles, weak_fraction, coverage
    """
    spot_model = SpotModel.find(
        net.bases,
        inputs.mask,
        float(config["spot_threshold"]),
        config["refine_size"],
    )
    if spot_model.spots is None:
        warn_no_spots(inputs, config["spot_threshold"])
    spot_gain = None
    if spot_model.spots is not None and config["refine"]:
        spot_model, gain = fit_spot_model(
            net, spot_model, inputs, X, train_idx, config, cfg
        )
        spot_gain = gain[~torch.isnan(gain)].numpy()
    spot_gain_q, weak = gain_summary(spot_gain, config["num_bases"])
    # how much of every spot's disk the training data recorded: predict
    # flags positions that lose more than COVERAGE_DROP of a disk
    coverage = spot_coverage(spot_model, inputs, train_idx)
    return spot_model, spot_gain_q, weak, coverage


def spot_coverage(spot_model: SpotModel, inputs, train_idx: np.ndarray) -> list:
    """Median fraction of every spot's disk on the detector over the training data.

    Per base: a list (one value per spot, rounded to 1e-4) or None without
    spots; from :data:`REALIGN_PATTERNS` training positions spread over the
    set. ``predict`` flags positions that lose more than ``COVERAGE_DROP``.
    """
    rows_cov = train_idx[spread(len(train_idx), REALIGN_PATTERNS)]
    return [
        None if cov is None else np.median(cov, 0).round(4).tolist()
        for cov in spot_model.coverage(inputs, rows_cov)
    ]


def warn_no_spots(inputs, threshold: float) -> None:
    """``fit``'s warning for a model without spots (no lattice to measure).

    Attributed to ``fit``'s caller when called from :func:`fit_spots`.
    """
    ring = tuple(round(float(r), 4) for r in inputs.ring)
    warnings.warn(
        "CCSTAE.fit: no Bragg spots found on the learned base (fewer than 2 "
        f"peaks above spot_threshold={threshold:g} inside "
        f"the ring {ring} {inputs.units}, at size={inputs.size}): the model has "
        "no lattice to measure and every position of its maps is marked "
        "invalid. Check 'ring' and 'q_max' (the ring must hold the Bragg "
        "disks) and 'size' (disks must span a few pixels).",
        RuntimeWarning,
        stacklevel=4,
    )


def gain_summary(spot_gain, num_bases: int) -> tuple[list | None, float | None]:
    """Quantiles of the training patterns' spot gains and the weak fraction.

    Warns (attributed to ``fit``'s caller, through :func:`fit_spots`) when
    :data:`WEAK_WARN_FRACTION` or more of the
    patterns show none of their base's spots (median gain below
    :data:`WEAK_GAIN`: vacuum or amorphous regions).
    """
    if spot_gain is None or not spot_gain.size:
        return None, None
    quantiles = [float(v) for v in np.percentile(spot_gain, [1, 5, 25, 50, 95])]
    weak = float((spot_gain < WEAK_GAIN).mean())
    if weak >= WEAK_WARN_FRACTION:
        hint = (
            "fit with num_bases=2 so that they get a base of their own"
            if num_bases == 1
            else "a larger num_bases may separate them"
        )
        warnings.warn(
            f"CCSTAE.fit: {100 * weak:.0f} % of the training patterns show "
            f"none of the base's Bragg spots (median spot gain < {WEAK_GAIN:g}): "
            f"vacuum or amorphous regions in the scan? They are fitted as "
            f"crystal and degrade the model; {hint} (docs/troubleshooting.md).",
            UserWarning,
            stacklevel=4,
        )
    return quantiles, weak
