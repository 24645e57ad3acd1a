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

import numpy as np
import torch

from ._validation import check_datacube, check_reference, check_seed
from .adapters import DiffractionInputs
from .affine import STRAIN_KEYS
from .config import DEFAULT_CONFIG, check_config
from .fitted import FittedState, Prediction
from .fitting import auto_symmetry, fit_spots, network_options, train_locked, training_data
from .model import CCSTAENet
from .persistence import (
    SavedModel,
    check_checkpoint,
    check_resumable,
    find_models,
)
from .prediction import check_finite, predict_inputs
from .spotmodel import STATE_KEYS as SPOT_STATE_KEYS
from .spotmodel import SpotModel
from .strainmap import relative_strain
from .train import TrainConfig, resolve_device

__all__ = ["CCSTAE", "fit_strain", "find_models", "DEFAULT_CONFIG"]

#: Frames of :meth:`CCSTAE.strain_map` for several bases (``frame``).
FRAMES = ("auto", "common", "class")

#: Slices of the strain RealSlice, in order.
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
        if fitted.get("q_max") is not None:
            # a fitted model prepares data as it was trained; models saved
            # before the pre-binning rule was recorded used "coarsest"
            prebin = fitted.get("prebin")
            kw["prebin"] = "coarsest" if prebin is None else prebin
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
            rotation_search=bool(self.config["rotation_search"]),
            equivariance=float(self.config.get("equivariance", 0.0)),
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
        inputs, train_idx, X = training_data(
            data,
            braggvectors,
            seed,
            options=self._input_options(fitted={}),
            prepare=lambda d, bv: self._inputs(d, bv, fitted={}),
            client=client,
            datapath=datapath,
        )
        sym = self.config["symmetry"]
        if sym == "auto":
            sym = auto_symmetry(X, inputs.mask)
        network = network_options(inputs, self.config, sym)
        if saved is not None and resume:
            check_resumable(checkpoint, saved, network)
        first = int(saved.get("attempt", 0)) if resume and saved is not None else 0
        cfg = self._train_config()
        self.net_, self.history_, attempts, sensitivity = train_locked(
            inputs,
            X,
            network,
            self.config,
            cfg,
            dev,
            seed,
            progress=progress,
            checkpoint=checkpoint,
            resume=bool(resume),
            first=first,
        )
        spot_model, spot_gain_q, weak, coverage = fit_spots(
            self.net_, inputs, X, train_idx, self.config, cfg
        )
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
            prebin=inputs.prebin,
            bin_factor=int(inputs.bin_factor),
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
        check_finite(self.net_, self.spot_model_)
        return self._predict_inputs(self._inputs(data), refine_transforms)

    def _predict_inputs(self, inputs: DiffractionInputs, refine_transforms) -> Prediction:
        """:meth:`predict` of prepared inputs, in this process (:mod:`.prediction`)."""
        return predict_inputs(
            self.net_,
            self.spot_model_,
            self.config,
            self.fitted_,
            self._train_config(),
            inputs,
            refine_transforms,
        )

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
        # models saved before the rotation search existed map as they were
        # trained: without it (their outputs do not change)
        config = {"rotation_search": False, **config}
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


def _check_prepared(inputs: DiffractionInputs, options: dict) -> None:
    """ValueError if prepared inputs differ from a model's input ``options``.

    ``options``: :meth:`CCSTAE._input_options` of the fitted state (size,
    scaling, units, q_max, ring), compared with the inputs' attributes.
    """
    # the pre-binning of prepared inputs is the caller's choice (it depends on
    # the detector, which may differ from the training data's)
    options = {k: v for k, v in options.items() if k != "prebin"}
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
