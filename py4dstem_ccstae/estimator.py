"""``CCSTAE`` and ``fit_strain``: from a py4DSTEM DataCube to a strain RealSlice.

Glue only: inputs come from :mod:`~py4dstem_ccstae.adapters`, the network from
:mod:`~py4dstem_ccstae.model`, training from :mod:`~py4dstem_ccstae.train` and
the strain math from :mod:`~py4dstem_ccstae.affine`.

Strain reported: :meth:`LatticeTransform.strain` of the learned base -> input
transform of every pattern, relative to the median transform over the
reference region (py4DSTEM's ``get_strain(gvects=mask)`` convention), in
calibrated scan coordinates (the adapters apply origin, ellipse, pixel size
and Q/R rotation).
"""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import torch

from ._validation import check_datacube, check_reference, check_seed
from .adapters import DiffractionInputs
from .affine import STRAIN_KEYS
from .config import DEFAULT_CONFIG, check_config
from .fitted import FittedState, Prediction
from .model import CCSTAENet
from .persistence import (
    SavedModel,
    check_checkpoint,
    check_resumable,
    find_models,
)
from .spotmodel import STATE_KEYS as SPOT_STATE_KEYS
from .spotmodel import SpotModel, resize_bases
from .strainmap import relative_strain
from .symmetry import lattice_symmetry
from .train import (
    TrainConfig,
    encode,
    encoder_sensitivity,
    fit_network,
    pattern_classes,
    resolve_device,
)

__all__ = ["CCSTAE", "fit_strain", "find_models", "DEFAULT_CONFIG"]

#: Frames of :meth:`CCSTAE.strain_map` for several bases (``frame``).
FRAMES = ("auto", "common", "class")

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

#: Median spot gain below which a training pattern shows no lattice of its base.
WEAK_GAIN = 0.25

#: Fraction of such patterns from which ``fit`` warns (vacuum in the scan).
WEAK_WARN_FRACTION = 0.05

#: Loss of a spot's disk area on the detector (fraction), relative to the
#: training data, from which a position is invalid (its field of view is
#: partly off the detector: the origin moved, or another detector).
COVERAGE_DROP = 0.2

#: Patterns read and predicted at a time.
_PREDICT_BATCH = 1024

OUTPUT_SLICES = ("e_xx", "e_yy", "e_xy", "theta", "mask", "class", "error")


class CCSTAE(SavedModel):
    """Cycle-consistent spatial-transforming autoencoder for strain mapping.

    Parameters
    ----------
    **config
        Overrides of :data:`DEFAULT_CONFIG`: ``size`` (model pattern size,
        px), ``q_max`` (A^-1, None: automatic), ``scaling``
        (``"sqrt"|"linear"|"log"|"power"``), ``ring`` ((inner, outer) A^-1 or
        None), ``num_bases``, ``symmetry`` (int or ``"auto"``), ``max_strain``,
        ``width``, ``epochs``, ``batch_size``, ``lr``, ``refine`` (per-pattern
        spot-wise refinement after the encoder, :mod:`~py4dstem_ccstae.spotfit`),
        ``refine_steps`` (maximum Gauss-Newton iterations of the refinement),
        ``refine_size`` (pattern size of the refinement, px), ``background``
        (static background removed by the refinement: ``"radial"|"none"``),
        ``spot_texture`` (``"fixed"|"ramp"``: the prediction's refinement
        model of each spot, :func:`~py4dstem_ccstae.spotfit.refine_spots`),
        ``spot_threshold`` (weakest spot of the base used, relative to the
        brightest; :func:`~py4dstem_ccstae.spotfit.find_spots`),
        ``epoch_size`` (patterns per epoch), ``mask_schedule`` (the paper's
        shrinking-mask schedule; off by default), ``coarse_sigma`` and
        ``coarse_epochs`` (coarse-to-fine smoothing at the start of training,
        model pixels and epochs; :class:`~py4dstem_ccstae.train.TrainConfig`),
        ``loss`` (``"mse"|"l1"|"poisson"``), ``overshoot`` (weight of pixels
        where the base exceeds the data), ``base_l1`` (L1 sparsity on the
        bases; :mod:`~py4dstem_ccstae.losses`), ``retries`` and
        ``min_sensitivity`` (lock-on check, :meth:`fit`). Every option is
        described in ``docs/configuration.md``.

    Attributes
    ----------
    config : dict
        Every option (defaults filled in, :class:`~py4dstem_ccstae.config.Options`).
    net_ : CCSTAENet or None
        The fitted network (encoder and bases); ``net`` is the same.
    spot_model_ : SpotModel or None
        The refinement's spots, patches and background per base
        (:class:`~py4dstem_ccstae.spotmodel.SpotModel`).
    fitted_ : FittedState or None
        Geometry, spots and training record
        (:class:`~py4dstem_ccstae.fitted.FittedState`).
    history_ : list of dict
        Per-epoch losses of the kept training attempt.
    """

    def __init__(self, **config):
        self.config = check_config(config)
        self.net_: CCSTAENet | None = None  # the network, once fitted
        self.spot_model_: SpotModel | None = None
        self.fitted_: FittedState | None = None
        self.history_: list = []

    @property
    def net(self) -> CCSTAENet | None:
        """The fitted network (``net_``; the name of earlier versions)."""
        return self.net_

    @net.setter
    def net(self, value) -> None:
        self.net_ = value

    # ------------------------------------------------------------- inputs
    def prepare(self, data, braggvectors=None) -> DiffractionInputs:
        """The model's inputs of ``data``: build them once for ``fit`` and ``strain_map``.

        ``model.fit(data)`` followed by ``model.strain_map(data)`` reads and
        resamples the scan twice (and measures an uncalibrated origin twice);
        ``inputs = model.prepare(data)`` then ``model.fit(inputs)`` and
        ``model.strain_map(inputs)`` read it once, with the same results.

        Parameters
        ----------
        data : py4DSTEM.DataCube or DiffractionInputs
            The scan (inputs already prepared are checked and returned).
        braggvectors : py4DSTEM.BraggVectors, optional
            Calibrated Bragg vectors (ring mask from the Bragg vector map).

        Returns
        -------
        DiffractionInputs
            For this model's options (before ``fit``) or its fitted geometry
            (after: field of view, ring and units of the fit).
        """
        return self._inputs(data, braggvectors)

    def _inputs(self, data, braggvectors=None, fitted=None):
        """:class:`DiffractionInputs` of ``data`` for the geometry of ``fitted``.

        ``fitted``: the fitted state whose field of view, ring and units the
        inputs must have (default ``fitted_``; ``{}`` for a new fit: the
        options decide).
        """
        fitted = (self.fitted_ or {}) if fitted is None else fitted
        if isinstance(data, DiffractionInputs):
            if fitted:
                _check_prepared(data, self._input_options(fitted))
            return data
        return DiffractionInputs.from_datacube(
            data, braggvectors, **self._input_options(fitted)
        )

    def _input_options(self, fitted: dict | None = None) -> dict:
        """Keyword arguments of :meth:`DiffractionInputs.from_datacube` for ``fitted``."""
        fitted = (self.fitted_ or {}) if fitted is None else fitted
        kw = dict(size=self.config["size"], scaling=self.config["scaling"])
        if fitted.get("units"):
            kw["units"] = fitted["units"]
        q_max = fitted.get("q_max", self.config["q_max"])
        ring = fitted.get("ring", self.config["ring"])
        if q_max is not None:
            kw["q_max"] = q_max
        if ring is not None:
            kw["ring"] = tuple(ring)
        return kw

    def _train_config(self) -> TrainConfig:
        """The :class:`~py4dstem_ccstae.train.TrainConfig` of this model's options."""
        return TrainConfig(
            epochs=self.config["epochs"],
            epoch_size=self.config["epoch_size"],
            batch_size=self.config["batch_size"],
            lr=self.config["lr"],
            mask_schedule=bool(self.config["mask_schedule"]),
            spot_threshold=float(self.config["spot_threshold"]),
            coarse_sigma=float(self.config["coarse_sigma"]),
            coarse_epochs=int(self.config["coarse_epochs"]),
            loss=self.config["loss"],
            overshoot=float(self.config["overshoot"]),
            base_l1=float(self.config["base_l1"]),
        )

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        data,
        *,
        braggvectors=None,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        overwrite: bool = False,
        client=None,
        datapath: str | None = None,
    ) -> CCSTAE:
        """Train on a DataCube (or prepared :class:`DiffractionInputs`, or a file).

        Parameters
        ----------
        data : py4DSTEM.DataCube, DiffractionInputs, str or PathLike
            A path is an EMD file (``datapath`` selects the DataCube) or a raw
            file ``py4DSTEM.import_file`` memory-maps; it is read lazily.
        braggvectors : py4DSTEM.BraggVectors, optional
            Calibrated Bragg vectors (ring mask from the Bragg vector map).
        seed : int
            Seeds initialisation, batch order and subsets (CPU runs are
            reproducible). Retries (below) use ``seed + 1000 * k``.
        device : str
            ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda[:n]"``;
            on CUDA training uses mixed precision.
        progress : bool
            tqdm bar per epoch with the current loss.
        checkpoint : path-like, optional
            File written atomically after every epoch (its folder must exist
            and accept files: probed before training). An existing
            checkpoint of this package is continued with ``resume`` and
            replaced without it; any other existing file is refused unless
            ``overwrite``.
        resume : bool
            Continue training from ``checkpoint`` when it exists (from the
            lock-on attempt it was written by, see Notes). The checkpoint must
            come from the same data and the same network options (``size``,
            ``num_bases``, ``symmetry``, ``width``, ``max_strain``,
            ``scaling``, ``q_max``, ``ring``); a difference is a ValueError
            naming the option.
        overwrite : bool
            Replace an existing ``checkpoint`` file that is not a training
            checkpoint of this package. Default False (OutputExistsError).
        client : distributed.Client, optional
            Read the scan on this dask cluster in row blocks (its intensity
            statistics and the training subset; :mod:`~py4dstem_ccstae.distributed`).
            Training itself runs here, on ``device``.
        datapath : str, optional
            The DataCube inside an EMD file ``data``.

        Returns
        -------
        CCSTAE
            ``self``, with ``history_`` (per-epoch losses) and ``fitted_``.

        Notes
        -----
        Lock-on check: after training, the encoder's response to small known
        warps of 256 training patterns is measured
        (:func:`~py4dstem_ccstae.train.encoder_sensitivity`, 1 = follows the
        warp, 0 = ignores its input). Below ``min_sensitivity`` the encoder
        never locked on (its output is the scan's mean transform, which can
        happen under heavy noise), and training starts again from a new
        initialisation, at most ``retries`` times; the most sensitive network
        is kept, with a ``RuntimeWarning`` if none passed. Every attempt is
        recorded in ``fitted_["attempts"]``, the kept network's sensitivity in
        ``fitted_["encoder_sensitivity"]``.
        """
        seed = check_seed(seed)
        dev = resolve_device(device)
        for name, flag in (("resume", resume), ("overwrite", overwrite)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint file (checkpoint=...)")
        saved = check_checkpoint(checkpoint, bool(resume), bool(overwrite))
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        inputs, train_idx, X = self._training_data(
            data, braggvectors, client, datapath, seed
        )
        sym = self.config["symmetry"]
        if sym == "auto":
            # the lattice's order, from the spot geometry of patterns spread
            # over the training set (symmetry module docs)
            some = X[_spread(len(X), SYMMETRY_PATTERNS)].numpy()
            sym = lattice_symmetry(some, inputs.mask, X.mean(0).numpy())
        # what a checkpoint must share with this fit to be continued
        network = {
            "size": int(inputs.size),
            "num_bases": int(self.config["num_bases"]),
            "symmetry": int(sym),
            "width": int(self.config["width"]),
            "max_strain": float(self.config["max_strain"]),
            "scaling": inputs.scaling,
            "q_max": round(float(inputs.q_max), 9),
            "ring": [round(float(r), 9) for r in inputs.ring],
        }
        if saved is not None and resume:
            check_resumable(checkpoint, saved, network)
        first = int(saved.get("attempt", 0)) if resume and saved is not None else 0
        attempts, sensitivity = self._train(
            inputs, X, network, dev, seed, progress, checkpoint, bool(resume), first
        )
        spot_model = SpotModel.find(
            self.net_.bases,
            inputs.mask,
            float(self.config["spot_threshold"]),
            self.config["refine_size"],
        )
        if spot_model.spots is None:
            _warn_no_spots(inputs, self.config["spot_threshold"])
        spot_gain = None
        if spot_model.spots is not None and self.config["refine"]:
            spot_model, gain = self._fit_spot_model(spot_model, inputs, X, train_idx)
            spot_gain = gain[~torch.isnan(gain)].numpy()
        spot_gain_q, weak = _gain_summary(spot_gain, self.config["num_bases"])
        # how much of every spot's disk the training data recorded: predict
        # flags positions that lose more than COVERAGE_DROP of a disk
        rows_cov = train_idx[_spread(len(train_idx), REALIGN_PATTERNS)]
        coverage = [
            None if cov is None else np.median(cov, 0).round(4).tolist()
            for cov in spot_model.coverage(inputs, rows_cov)
        ]
        self.spot_model_ = spot_model
        spots, base_spots = spot_model.spots, spot_model.base_spots
        self.fitted_ = FittedState(
            base_frames=spot_model.frames(
                self.net_.bases, sym, float(self.config["max_strain"])
            ),
            q_max=float(inputs.q_max),
            ring=[float(r) for r in inputs.ring],
            symmetry=int(sym),
            units=inputs.units,
            spots=None if spots is None else spots.tolist(),
            spot_radius=spot_model.radius,
            base_spots=[None if sp is None else sp.tolist() for sp in base_spots],
            spot_coverage=coverage,
            spot_gain_quantiles=spot_gain_q,
            weak_fraction=weak,
            train_patterns=int(len(train_idx)),
            train_seconds=time.perf_counter() - t0,
            epochs_run=len(self.history_),
            final_loss=self.history_[-1]["loss"] if self.history_ else None,
            encoder_sensitivity=sensitivity,
            attempts=attempts,
        )
        return self

    def _training_data(self, data, braggvectors, client, datapath, seed: int):
        """``(inputs, train_idx, X)``: the inputs, the training rows and patterns.

        Every pattern, or a fixed random subset of ``MAX_TRAIN_PATTERNS`` of a
        larger scan (memory stays bounded; the encoder does not need all of
        them). A path is opened lazily in this process; with ``client`` the
        subset is read on the cluster.
        """

        def training_set(n_all: int) -> np.ndarray:
            if n_all > MAX_TRAIN_PATTERNS:
                rng = np.random.default_rng(seed)
                return np.sort(rng.choice(n_all, MAX_TRAIN_PATTERNS, replace=False))
            return np.arange(n_all)

        if client is None and isinstance(data, (str, os.PathLike)):
            # one process: the file opened lazily and read as a DataCube
            # (a scan that fits the cache is read once)
            from .io import open_datacube

            data, datapath = open_datacube(data, datapath), None
        if client is not None:
            from .distributed import training_patterns

            inputs, train_idx, X = training_patterns(
                data,
                self._input_options(fitted={}),
                training_set,
                braggvectors=braggvectors,
                client=client,
                datapath=datapath,
            )
            return inputs, train_idx, torch.from_numpy(X)
        if datapath is not None:
            raise ValueError("datapath: only used when data is a file path")
        inputs = self._inputs(data, braggvectors, fitted={})
        train_idx = training_set(inputs.n_patterns)
        return inputs, train_idx, torch.from_numpy(inputs.batch(train_idx))

    def _train(self, inputs, X, network, dev, seed, progress, checkpoint, resume, first):
        """Train with the lock-on check; sets ``net_`` and ``history_``.

        An encoder that never locked on ignores its input (constant output):
        then train again from a new initialisation (``fit``'s Notes). Returns
        the attempts' records and the kept network's sensitivity.
        """
        mask = torch.tensor(inputs.mask, dtype=torch.float32)
        cfg = self._train_config()
        probe = X[_spread(len(X), SENSITIVITY_PATTERNS)]
        attempts, best = [], None
        threshold = float(self.config["min_sensitivity"])

        def locked(sens: dict) -> bool:  # min_sensitivity 0: no check
            return threshold <= 0 or sens["mean"] >= threshold

        for attempt in range(first, 1 + max(first, int(self.config["retries"]))):
            attempt_seed = seed + attempt * RETRY_SEED_STEP
            t_attempt = time.perf_counter()
            torch.manual_seed(attempt_seed)
            net = CCSTAENet(
                inputs.size,
                num_bases=self.config["num_bases"],
                symmetry=network["symmetry"],
                max_strain=self.config["max_strain"],
                width=self.config["width"],
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
            sens = encoder_sensitivity(net, _lattice_probes(net, probe, inputs.mask, cfg))
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
        self.net_, self.history_, sensitivity = best
        if not locked(sensitivity):
            warnings.warn(
                f"CCSTAE.fit: the encoder did not lock on in {len(attempts)} "
                f"attempt(s) (sensitivity {sensitivity['mean']:.3f} < min_sensitivity "
                f"{self.config['min_sensitivity']:g}); the strain map comes from the "
                "per-pattern refinement alone and is less accurate. Try more "
                "'retries', a larger 'coarse_sigma' or another seed; if the scan "
                "holds vacuum or amorphous regions, num_bases=2 "
                "(docs/troubleshooting.md).",
                RuntimeWarning,
                stacklevel=3,
            )
        return attempts, sensitivity

    def _fit_spot_model(self, spot_model, inputs, X, train_idx):
        """The spot model's patches and background from the aligned training patterns.

        A subset spread over the whole training set (not its first rows: the
        top of the scan), all of it when small enough, at the refinement's
        size. Returns the fitted spot model and every pattern's median gain.
        """
        rows_sub = _spread(len(X), REALIGN_PATTERNS)
        X_sub = X[rows_sub]
        enc = encode(self.net_, X_sub)
        rsize = spot_model.refine_size
        if rsize == inputs.size:
            sub, bases = X_sub, self.net_.bases
        else:
            sub = torch.from_numpy(inputs.resized(rsize).batch(train_idx[rows_sub]))
            bases = resize_bases(self.net_.bases, rsize)
        mask = torch.tensor(inputs.mask, dtype=torch.float32)
        cls = pattern_classes(self.net_, X_sub, enc, mask, self._train_config())
        return spot_model.fit(
            sub,
            enc["A"],
            cls,
            bases,
            iterations=int(self.config["refine_steps"]),
            background=self.config["background"],
        )

    def _require_fitted(self):
        if self.net_ is None:
            raise RuntimeError("CCSTAE is not fitted: call fit() or CCSTAE.load() first")

    # ------------------------------------------------------------ predict
    def predict(
        self,
        data,
        *,
        refine_transforms: bool | None = None,
        client=None,
        datapath: str | None = None,
        block_rows: int | None = None,
    ) -> Prediction:
        """Per-pattern transforms, class and reconstruction error.

        Parameters
        ----------
        data : py4DSTEM.DataCube, DiffractionInputs, str or PathLike
            The scan. A path is an EMD file (``datapath`` selects the
            DataCube when it holds several) or a raw file that
            ``py4DSTEM.import_file`` memory-maps; it is read lazily (in this
            process as a DataCube whose data stay on disk: a scan that fits
            the inputs' cache is read once, a larger one streamed in
            batches; with ``client`` or ``block_rows``, one block of rows at
            a time).
        refine_transforms : bool, optional
            Run the per-pattern refinement (default: the ``refine`` option).
        client : distributed.Client, optional
            Map the scan on this dask cluster, in row blocks
            (:mod:`~py4dstem_ccstae.distributed`): with a path each task reads
            its own rows; a DataCube is scattered block by block. The result
            equals the single-process one to float32 rounding.
        datapath : str, optional
            The DataCube inside an EMD file ``data``.
        block_rows : int, optional
            Scan rows per block (``client``, or a path read block by block in
            this process); default ``4096 // Ry``.

        Returns
        -------
        Prediction
            (:class:`~py4dstem_ccstae.fitted.Prediction`, which also reads as
            a dict with these keys) ``A`` (Rx, Ry, 2, 2) base -> pattern
            lattice matrices (calibrated
            frame; with several bases, each relative to the pattern's own
            base), ``class`` (Rx, Ry) int (the base each pattern uses: the
            one that reconstructs it best under its transform, as in
            training), ``error`` (Rx, Ry) masked mean squared
            reconstruction error (scaled-intensity units), ``valid`` (Rx, Ry)
            bool: False where the pattern's base has no spots while another
            base has them (vacuum or amorphous regions, whose ``A`` carries
            no lattice; every position when no base has spots), and, with
            the refinement, where the pattern shows none of its base's spots
            (median spot gain below ``WEAK_GAIN``: vacuum, amorphous or blank
            patterns, with any number of bases).
        """
        self._require_fitted()
        if client is None and block_rows is None and isinstance(data, (str, os.PathLike)):
            # one process: the file opened lazily and read as a DataCube (a
            # scan that fits the cache is read once, a larger one streamed)
            from .io import open_datacube

            data, datapath = open_datacube(data, datapath), None
        if client is not None or isinstance(data, (str, os.PathLike)):
            from .distributed import predict_blocks

            return predict_blocks(
                self,
                data,
                client=client,
                datapath=datapath,
                refine_transforms=refine_transforms,
                block_rows=block_rows,
            )
        if datapath is not None:
            raise ValueError("datapath: only used when data is a file path")
        self._check_finite()
        return self._predict_inputs(self._inputs(data), refine_transforms)

    def _check_finite(self) -> None:
        """ValueError if the network or the spot model holds NaN or inf."""
        bad = [
            name
            for name, t in [
                *self.net_.named_parameters(),
                *self.net_.named_buffers(),
                *self.spot_model_.state().items(),
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

    def _predict_inputs(self, inputs: DiffractionInputs, refine_transforms) -> Prediction:
        """:meth:`predict` of prepared inputs, in this process, batch by batch.

        Memory holds one batch of inputs plus the outputs.
        """
        dev = next(self.net_.parameters()).device
        do_refine = (
            self.config["refine"] if refine_transforms is None else refine_transforms
        )
        sm = self.spot_model_
        spots, spot_mask = sm.spot_mask(inputs.mask)
        do_refine = bool(do_refine) and spots is not None
        # the refinement may work on larger patterns than the encoder
        # (refine_size): same field of view, spot offsets scaled
        rsize = sm.refine_size
        fine = inputs if rsize == inputs.size or not do_refine else inputs.resized(rsize)
        # static background: fitted with the patches (background="radial")
        background = None if sm.patches is None else sm.background
        ctx = dict(
            dev=dev,
            inputs=inputs,
            fine=fine,
            do_refine=do_refine,
            ring=torch.tensor(inputs.mask, dtype=torch.float32),
            spot_mask=spot_mask,
            cfg=self._train_config(),
            background=None if background is None else background.to(dev),
            patches=sm.class_patches(self.net_.bases, dev) if do_refine else {},
            ref_coverage=self.fitted_.get("spot_coverage")
            or [None if sp is None else [1.0] * len(sp) for sp in sm.base_spots],
        )
        N = inputs.n_patterns
        A = torch.empty(N, 2, 2, dtype=torch.float64)
        cls = torch.empty(N, dtype=torch.long)
        error = torch.empty(N, dtype=torch.float64)
        shows = torch.ones(N, dtype=torch.bool)  # the pattern shows its base's spots
        off = np.zeros(N, bool)  # a spot of its base is (partly) off the detector
        for idx, xb in inputs.iter_batches(_PREDICT_BATCH):
            t = torch.from_numpy(idx)
            A[t], cls[t], error[t], shows[t], lost = self._predict_batch(
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
        valid = sm.has_lattice[cls] & shows & torch.from_numpy(~off)
        return Prediction(
            A=A.cpu().numpy().astype(np.float64).reshape(*shape, 2, 2),
            cls=cls.numpy().reshape(shape),
            error=error.cpu().numpy().astype(np.float64).reshape(shape),
            valid=valid.numpy().reshape(shape),
        )

    def _predict_batch(self, X: torch.Tensor, idx: np.ndarray, ctx: dict):
        """One batch: transforms, classes, errors, "shows its lattice", spots off.

        Encoder, class by reconstruction, then the spot model's refinement
        (or, without it, the masked reconstruction error).
        """
        from .losses import cycle_losses

        sm, dev = self.spot_model_, ctx["dev"]
        enc = encode(self.net_, X)
        enc["cls"] = pattern_classes(self.net_, X, enc, ctx["ring"], ctx["cfg"])
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
                iterations=int(self.config["refine_steps"]),
                background=ctx["background"],
                texture=self.config["spot_texture"],
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
                    self.net_.bases[enc["cls"][rows].to(dev)],
                    Ab[rows].to(dev, torch.float32),
                    ctx["spot_mask"].to(dev),
                )
            err[rows] = fwd.cpu().to(torch.float64)
        # a spot that lost part of its disk off the detector (compared with
        # the training data) cannot be measured there
        lost = np.zeros(len(idx), bool)
        cov = sm.coverage(ctx["inputs"], idx)
        for k, (c, ref) in enumerate(zip(cov, ctx["ref_coverage"], strict=True)):
            if c is None:
                continue
            gone = ((np.asarray(ref)[None] - c) > COVERAGE_DROP).any(-1)
            lost |= gone & (enc["cls"].numpy() == k)
        return Ab.cpu(), enc["cls"], err, lattice, lost

    def strain_map(
        self,
        data,
        reference: np.ndarray | None = None,
        *,
        client=None,
        datapath: str | None = None,
        frame: str = "auto",
        **predict_kw,
    ):
        """Strain, shear and rotation as a py4DSTEM ``RealSlice``.

        Parameters
        ----------
        data : py4DSTEM.DataCube, DiffractionInputs, str or PathLike
            As in :meth:`predict` (a path is read lazily; with ``client`` the
            scan is mapped on a dask cluster).
        reference : ndarray of bool (Rx, Ry), optional
            Reference region; ``None``: all positions (py4DSTEM's default).
            The reference lattice is the median over the region (of the
            positions in the common frame, or of a class's own positions,
            see ``frame``). It is computed from all positions' transforms
            after a distributed prediction is gathered, as in one process.
        client, datapath
            As in :meth:`predict`.
        frame : {"auto", "common", "class"}
            With several bases: ``"auto"`` (default) and ``"common"`` express
            every class whose base shows the same lattice as the others
            (registered at fit: ``fitted_["base_frames"]``, e.g. grains of one
            crystal or the two sides of a lateral heterostructure) in one
            common frame, so that they are all relative to the reference
            region's lattice and a lattice mismatch between classes shows in
            the map; ``"class"`` makes each class relative to the median over
            its own positions inside ``reference``. A class whose base shows
            another lattice (another phase), and with ``"class"`` a class
            with no position in ``reference``, is relative to its own
            positions inside ``reference`` (none there: all its positions,
            with a warning). ``"common"`` raises ValueError when no class in
            the reference region has a registered frame. The metadata's
            ``class_reference`` records, per class, the frame and the
            positions its reference was taken over.
        **predict_kw
            ``refine_transforms``, ``block_rows`` (:meth:`predict`).

        Returns
        -------
        py4DSTEM.RealSlice
            Slices ``e_xx, e_yy, e_xy, theta, mask, class, error``. ``mask``
            is 0 and the strain NaN where :meth:`predict` reports a pattern
            as not ``valid`` (its base has no spots, e.g. vacuum).
        """
        from emdfile import Metadata
        from py4DSTEM import RealSlice

        if frame not in FRAMES:
            raise ValueError(f"frame must be 'auto', 'common' or 'class', got {frame!r}")
        self._require_fitted()
        pred = self.predict(data, client=client, datapath=datapath, **predict_kw)
        shape = pred["class"].shape
        given = reference is not None
        if reference is None:
            reference = np.ones(shape, bool)
        reference = check_reference(reference, shape)
        cls, valid = pred["class"], pred["valid"]
        frames = self.fitted_.get("base_frames") or [None] * self.net_.num_bases
        rel, class_reference = relative_strain(
            pred, reference, frames, int(self.fitted_["symmetry"]), frame, warn=given
        )
        data_ = np.stack(
            [rel[k] for k in STRAIN_KEYS]
            + [valid.astype(float), cls.astype(float), pred["error"]]
        )
        rs = RealSlice(data=data_, name="ccstae_strain", slicelabels=list(OUTPUT_SLICES))
        from . import __version__

        rs.metadata = Metadata(
            name="ccstae",
            data={
                "version": __version__,
                "config": json.dumps(self.config),
                "fitted": json.dumps(self.fitted_.to_dict()),
                "reference_positions": int(reference.sum()),
                "class_reference": json.dumps(class_reference),
            },
        )
        return rs

    # ------------------------------------------------------------- save/load
    # to_emd, from_emd, save and load: persistence.SavedModel
    def _saved_state(self) -> tuple[dict, dict, list, dict]:
        """``(config, fitted, history, arrays)`` as saved (persistence's input)."""
        self._require_fitted()
        tensors = {**self.net_.state_dict(), **self.spot_model_.state()}
        state = {k: v.detach().cpu().numpy() for k, v in tensors.items()}
        return self.config, self.fitted_.to_dict(), self.history_, state

    @classmethod
    def _from_state(cls, config, fitted, history, state, dev) -> CCSTAE:
        if not isinstance(config, dict) or not isinstance(fitted, dict):
            raise ValueError("the model's config and fitted metadata must be JSON objects")
        for key in ("symmetry", "spot_radius", "q_max", "ring", "units"):
            if key not in fitted:
                raise ValueError(f"the model's fitted metadata lacks {key!r}")
        if "bases" not in state or np.ndim(state["bases"]) < 3:
            raise ValueError("the model has no bases array of shape (K, 1, S, S)")
        try:
            obj = cls(**config)
        except TypeError as err:  # unknown options: a newer version wrote it
            raise ValueError(f"the model's config is not understood ({err})") from None
        obj.fitted_ = FittedState.from_dict(fitted)
        obj.history_ = history
        obj.net_ = CCSTAENet(
            state["bases"].shape[-1],
            num_bases=state["bases"].shape[0],
            symmetry=obj.fitted_["symmetry"],
            max_strain=obj.config["max_strain"],
            width=obj.config["width"],
        )
        state = dict(state)
        spot_state = {k: state.pop(k) for k in SPOT_STATE_KEYS if k in state}
        obj.spot_model_ = SpotModel.from_saved(
            fitted,
            obj.net_.num_bases,
            int(state["bases"].shape[-1]),
            obj.config["refine_size"],
            spot_state,
        )
        try:
            obj.net_.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0] if first else ""
            raise ValueError(
                f"the model's weights do not fit its network options ({detail})"
            ) from None
        obj.net_.to(dev)
        return obj


def _warn_no_spots(inputs: DiffractionInputs, threshold: float) -> None:
    """``fit``'s warning for a model without spots (no lattice to measure)."""
    ring = tuple(round(float(r), 4) for r in inputs.ring)
    warnings.warn(
        "CCSTAE.fit: no Bragg spots found on the learned base (fewer than 2 "
        f"peaks above spot_threshold={threshold:g} inside "
        f"the ring {ring} {inputs.units}, at size={inputs.size}): the model has "
        "no lattice to measure and every position of its maps is marked "
        "invalid. Check 'ring' and 'q_max' (the ring must hold the Bragg "
        "disks) and 'size' (disks must span a few pixels).",
        RuntimeWarning,
        stacklevel=3,
    )


def _gain_summary(spot_gain, num_bases: int) -> tuple[list | None, float | None]:
    """Quantiles of the training patterns' spot gains and the weak fraction.

    Warns (from ``fit``) when ``WEAK_WARN_FRACTION`` or more of the patterns
    show none of their base's spots (vacuum or amorphous regions).
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
            stacklevel=3,
        )
    return quantiles, weak


def _spread(n: int, k: int) -> np.ndarray | slice:
    """``min(n, k)`` row indices spread evenly over ``range(n)`` (all: ``slice(None)``).

    The training rows follow the scan (row-major), so evenly spaced rows
    sample the whole scan, not its top.
    """
    if n <= k:
        return slice(None)
    return np.linspace(0, n - 1, k).astype(int)


def _lattice_probes(
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


def _check_prepared(inputs: DiffractionInputs, options: dict) -> None:
    """ValueError if prepared inputs differ from a model's input ``options``.

    ``options``: :meth:`CCSTAE._input_options` of the fitted state (size,
    scaling, units, q_max, ring), compared with the inputs' attributes.
    """
    want = {k: (list(v) if k == "ring" else v) for k, v in options.items()}
    have = {k: (list(inputs.ring) if k == "ring" else getattr(inputs, k)) for k in want}
    diff = []
    for k, w in want.items():
        if w is None:
            continue
        h = have[k]
        same = (
            np.allclose(np.asarray(h, float), np.asarray(w, float), rtol=1e-6, atol=0)
            if k in ("q_max", "ring")
            else h == w
        )
        if not same:
            diff.append(f"{k}={h!r} (model: {w!r})")
    if diff:
        raise ValueError(
            "data: these DiffractionInputs were prepared differently from the "
            f"model's training data: {'; '.join(diff)}. Pass the DataCube instead "
            "(the model prepares it), or build the inputs with the model's size, "
            "scaling, q_max, ring and units"
        )


def fit_strain(
    datacube,
    *,
    reference: np.ndarray | None = None,
    braggvectors=None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    **config,
):
    """Fit a CC-ST-AE to ``datacube`` and return its strain map (one call).

    Parameters
    ----------
    datacube : py4DSTEM.DataCube
        Calibrated 4D-STEM data ``[Rx, Ry, Qx, Qy]``.
    reference : ndarray of bool (Rx, Ry), optional
        Reference region (None: all positions); with ``num_bases > 1`` per
        class, as :meth:`CCSTAE.strain_map`.
    braggvectors : py4DSTEM BraggVectors, optional
        Calibrated Bragg vectors; used for the ring mask.
    seed, device, progress
        See :meth:`CCSTAE.fit`.
    **config
        :data:`DEFAULT_CONFIG` overrides.

    Returns
    -------
    py4DSTEM.RealSlice
        ``e_xx, e_yy, e_xy, theta, mask, class, error``.
    """
    model = CCSTAE(**config)
    check_datacube(datacube)
    if reference is not None:  # fail before training, not after
        check_reference(reference, tuple(datacube.data.shape[:2]))
    inputs = model.prepare(datacube, braggvectors)
    model.fit(inputs, seed=seed, device=device, progress=progress)
    return model.strain_map(inputs, reference=reference)
