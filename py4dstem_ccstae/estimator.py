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
from pathlib import Path

import numpy as np
import torch

from ._validation import check_datacube, check_reference, check_seed
from .adapters import DiffractionInputs
from .affine import STRAIN_KEYS, LatticeTransform
from .io import atomic_write
from .model import CCSTAENet, compose_A
from .train import TrainConfig, encode, fit_network, refine, resolve_device

__all__ = ["CCSTAE", "fit_strain", "DEFAULT_CONFIG"]

#: Defaults, fixed once (never tuned against ground truth).
DEFAULT_CONFIG = dict(
    size=64,
    q_max=None,
    scaling="sqrt",
    ring=None,
    num_bases=1,
    symmetry="auto",
    max_strain=0.1,
    width=16,
    epochs=30,
    batch_size=64,
    lr=2e-3,
    refine=True,
    refine_steps=100,
)

OUTPUT_SLICES = ("e_xx", "e_yy", "e_xy", "theta", "mask", "class", "error")


def _detect_symmetry(pattern: np.ndarray, mask: np.ndarray, threshold: float = 0.8) -> int:
    """Largest n in (6, 4, 3, 2) whose 2 pi / n rotation maps the pattern onto itself."""
    from .warp import warp

    x = torch.tensor(pattern * mask, dtype=torch.float64)[None, None]
    x = x - x[0, 0][torch.tensor(mask)].mean() * torch.tensor(mask, dtype=torch.float64)
    for n in (6, 4, 3, 2):
        a = 2 * np.pi / n
        R = torch.tensor([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])[None]
        y = warp(x, R)
        corr = float((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum()))
        if corr > threshold:
            return n
    return 1


def _find_spots(base: np.ndarray, ring_mask: np.ndarray, rel_threshold: float = 0.15):
    """Spot offsets (n, 2) from the centre in the base, and their typical radius (px)."""
    from scipy import ndimage

    S = base.shape[0]
    b = np.where(ring_mask, base, 0.0)
    b = b - np.median(b[ring_mask])
    smooth = ndimage.gaussian_filter(b, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=5)) & (
        smooth > rel_threshold * smooth.max()
    )
    idx = np.argwhere(peaks & ring_mask)
    if len(idx) < 2:
        return None, None
    c = (S - 1) / 2.0
    spots = idx.astype(float) - c
    d = np.hypot(*(spots[:, None] - spots[None]).transpose(2, 0, 1))
    d[d == 0] = np.inf
    radius = 0.45 * float(np.median(d.min(1)))
    return spots, radius


class CCSTAE:
    """Cycle-consistent spatial-transforming autoencoder for strain mapping.

    Parameters
    ----------
    **config
        Overrides of :data:`DEFAULT_CONFIG`: ``size`` (model pattern size,
        px), ``q_max`` (A^-1, None: automatic), ``scaling``
        (``"sqrt"|"linear"|"log"|"power"``), ``ring`` ((inner, outer) A^-1 or
        None), ``num_bases``, ``symmetry`` (int or ``"auto"``), ``max_strain``,
        ``width``, ``epochs``, ``batch_size``, ``lr``, ``refine`` (per-pattern
        refinement after training), ``refine_steps``.
    """

    def __init__(self, **config):
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise TypeError(f"unknown CCSTAE option(s): {sorted(unknown)}")
        self.config = {**DEFAULT_CONFIG, **config}
        sym = self.config["symmetry"]
        if sym != "auto" and (isinstance(sym, bool) or not isinstance(sym, int) or sym < 1):
            raise ValueError(f"symmetry must be 'auto' or a positive int, got {sym!r}")
        self.net: CCSTAENet | None = None
        self.fitted_: dict = {}
        self.history_: list = []

    # ------------------------------------------------------------- inputs
    def _inputs(self, data, braggvectors=None) -> DiffractionInputs:
        if isinstance(data, DiffractionInputs):
            return data
        kw = dict(size=self.config["size"], scaling=self.config["scaling"])
        q_max = self.fitted_.get("q_max", self.config["q_max"])
        ring = self.fitted_.get("ring", self.config["ring"])
        if q_max is not None:
            kw["q_max"] = q_max
        if ring is not None:
            kw["ring"] = tuple(ring)
        return DiffractionInputs.from_datacube(data, braggvectors, **kw)

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        data,
        *,
        braggvectors=None,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ) -> CCSTAE:
        """Train on a DataCube (or prepared :class:`DiffractionInputs`).

        Returns
        -------
        CCSTAE
            ``self``, with ``history_`` (per-epoch losses) and ``fitted_``.
        """
        seed = check_seed(seed)
        dev = resolve_device(device)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        inputs = self._inputs(data, braggvectors)
        X = torch.from_numpy(inputs.to_array())
        mask = torch.tensor(inputs.mask, dtype=torch.float32)
        sym = self.config["symmetry"]
        if sym == "auto":
            sym = _detect_symmetry(inputs.mean_pattern(), inputs.mask)
        self.net = CCSTAENet(
            inputs.size,
            num_bases=self.config["num_bases"],
            symmetry=sym,
            max_strain=self.config["max_strain"],
            width=self.config["width"],
        ).to(dev)
        cfg = TrainConfig(
            epochs=self.config["epochs"],
            batch_size=self.config["batch_size"],
            lr=self.config["lr"],
        )
        self.history_ = fit_network(self.net, X, mask, cfg, seed=seed, progress=progress)
        bases = self.net.bases.detach().cpu().numpy()[:, 0]
        spots, radius = _find_spots(bases[0], inputs.mask)
        self.fitted_ = {
            "q_max": float(inputs.q_max),
            "ring": [float(r) for r in inputs.ring],
            "symmetry": int(sym),
            "units": inputs.units,
            "spots": None if spots is None else spots.tolist(),
            "spot_radius": radius,
            "train_seconds": time.perf_counter() - t0,
            "epochs_run": len(self.history_),
            "final_loss": self.history_[-1]["loss"] if self.history_ else None,
        }
        return self

    def _require_fitted(self):
        if self.net is None:
            raise RuntimeError("CCSTAE is not fitted: call fit() or CCSTAE.load() first")

    def _spot_mask(self, size: int, ring_mask: np.ndarray):
        spots = self.fitted_.get("spots")
        if not spots:
            return None, torch.tensor(ring_mask, dtype=torch.float32)
        c = (size - 1) / 2.0
        yy, xx = np.mgrid[:size, :size] - c
        sp = np.asarray(spots)
        d = np.hypot(yy[..., None] - sp[:, 0], xx[..., None] - sp[:, 1]).min(-1)
        m = (d <= self.fitted_["spot_radius"]) & ring_mask
        return torch.tensor(sp, dtype=torch.float32), torch.tensor(m, dtype=torch.float32)

    # ------------------------------------------------------------ predict
    def predict(self, data, *, refine_transforms: bool | None = None) -> dict:
        """Per-pattern transforms, class and reconstruction error.

        Returns
        -------
        dict
            ``A`` (Rx, Ry, 2, 2) base -> pattern lattice matrices (calibrated
            frame), ``class`` (Rx, Ry) int, ``error`` (Rx, Ry) masked mean
            squared reconstruction error (scaled-intensity units).
        """
        from .losses import cycle_losses

        self._require_fitted()
        inputs = self._inputs(data)
        X = torch.from_numpy(inputs.to_array())
        dev = next(self.net.parameters()).device
        enc = encode(self.net, X)
        strain, phi, cls = enc["strain"], enc["phi"], enc["cls"]
        do_refine = (
            self.config["refine"] if refine_transforms is None else refine_transforms
        )
        spots, spot_mask = self._spot_mask(inputs.size, inputs.mask)
        if do_refine:
            strain, phi = refine(
                X,
                self.net.bases.detach(),
                cls,
                strain,
                phi,
                spot_mask,
                steps=self.config["refine_steps"],
                spots=None if spots is None else spots.to(dev),
                spot_radius=self.fitted_.get("spot_radius"),
            )
        A = compose_A(strain, phi)
        errs = []
        with torch.no_grad():
            for s in range(0, X.shape[0], 256):
                xb = X[s : s + 256].to(dev)[:, None]
                base = self.net.bases[cls[s : s + 256].to(dev)]
                fwd, _, _ = cycle_losses(
                    xb, base, A[s : s + 256].to(dev), spot_mask.to(dev)
                )
                errs.append(fwd.cpu())
        shape = inputs.scan_shape
        return {
            "A": A.numpy().astype(np.float64).reshape(*shape, 2, 2),
            "class": cls.numpy().reshape(shape),
            "error": torch.cat(errs).numpy().reshape(shape),
        }

    def strain_map(self, data, reference: np.ndarray | None = None, **predict_kw):
        """Strain, shear and rotation as a py4DSTEM ``RealSlice``.

        Parameters
        ----------
        data : py4DSTEM.DataCube or DiffractionInputs
        reference : ndarray of bool (Rx, Ry), optional
            Reference region; ``None``: all positions (py4DSTEM's default).

        Returns
        -------
        py4DSTEM.RealSlice
            Slices ``e_xx, e_yy, e_xy, theta, mask, class, error``.
        """
        from emdfile import Metadata
        from py4DSTEM import RealSlice

        pred = self.predict(data, **predict_kw)
        shape = pred["class"].shape
        if reference is None:
            reference = np.ones(shape, bool)
        reference = check_reference(reference, shape)
        T = LatticeTransform(pred["A"])
        rel = T.relative_to(T.reference_from_mask(reference)).strain()
        data_ = np.stack(
            [rel[k] for k in STRAIN_KEYS]
            + [np.ones(shape), pred["class"].astype(float), pred["error"]]
        )
        rs = RealSlice(data=data_, name="ccstae_strain", slicelabels=list(OUTPUT_SLICES))
        from . import __version__

        rs.metadata = Metadata(
            name="ccstae",
            data={
                "version": __version__,
                "config": json.dumps(self.config),
                "fitted": json.dumps(self.fitted_),
                "reference_positions": int(reference.sum()),
            },
        )
        return rs

    # ------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save config, fitted geometry and weights to an HDF5 file, atomically."""
        import h5py

        self._require_fitted()
        with atomic_write(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["format"] = "py4dstem_ccstae.CCSTAE/1"
            f.attrs["config"] = json.dumps(self.config)
            f.attrs["fitted"] = json.dumps(self.fitted_)
            f.attrs["history"] = json.dumps(self.history_)
            g = f.create_group("state_dict")
            for k, v in self.net.state_dict().items():
                g.create_dataset(k, data=v.detach().cpu().numpy())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> CCSTAE:
        """Load a model written by :meth:`save`."""
        import h5py

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path: {str(path)!r} is not a file")
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != "py4dstem_ccstae.CCSTAE/1":
                raise ValueError(f"path: {str(path)!r} is not a saved CCSTAE model")
            obj = cls(**json.loads(f.attrs["config"]))
            obj.fitted_ = json.loads(f.attrs["fitted"])
            obj.history_ = json.loads(f.attrs["history"])
            state = {k: torch.from_numpy(np.asarray(v)) for k, v in f["state_dict"].items()}
        size = state["bases"].shape[-1]
        obj.net = CCSTAENet(
            size,
            num_bases=state["bases"].shape[0],
            symmetry=obj.fitted_["symmetry"],
            max_strain=obj.config["max_strain"],
            width=obj.config["width"],
        )
        obj.net.load_state_dict(state)
        obj.net.to(resolve_device(device))
        return obj


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
        Reference region (None: all positions).
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
    inputs = model._inputs(datacube, braggvectors)
    model.fit(inputs, seed=seed, device=device, progress=progress)
    return model.strain_map(inputs, reference=reference)
