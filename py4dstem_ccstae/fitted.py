"""Typed state of the chain: what ``fit`` leaves behind and what ``predict`` returns.

Two small value objects:

- :class:`FittedState` (``CCSTAE.fitted_``): the inputs' geometry the model
  was fitted for, the lattice found on its bases (spots, radius, frames),
  and how training went (attempts, sensitivity, times). It is saved with the
  model as JSON (:meth:`FittedState.to_dict`) and read back with
  :meth:`FittedState.from_dict`; files of every earlier version read (keys
  they lack are None, keys a newer version added are kept in ``extra``).
- :class:`Prediction` (``CCSTAE.predict``): per-pattern transforms, class,
  reconstruction error and validity, arrays of the scan's shape.

Both also read like the dicts they replace (``fitted_["spots"]``,
``prediction["A"]``), so notebooks written against earlier versions keep
working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["FittedState", "Prediction"]


@dataclass
class FittedState:
    """What ``fit`` learned besides the network weights and the spot model.

    Attributes
    ----------
    base_frames : list of (2 x 2 list or None), optional
        Every base's lattice relative to the first base with spots
        (:meth:`~py4dstem_ccstae.spotmodel.SpotModel.frames`); None in
        models saved before common frames.
    q_max : float
        Half field of view of the inputs (``units``).
    ring : list of float
        Ring mask (inner, outer) in ``units``.
    symmetry : int
        The lattice's rotation order the network uses.
    units : str
        Q units of ``q_max`` and ``ring`` (the calibration's).
    prebin : bool, int or str, optional
        The training inputs' ``prebin``
        (:class:`~py4dstem_ccstae.adapters.DiffractionInputs`), with which
        prediction prepares a DataCube; None in models saved before
        it was recorded, which map with ``"coarsest"`` (the rule they were
        trained with).
    bin_factor : int, optional
        The training inputs' detector pre-binning factor (1: none).
    spots : list of [row, col] or None
        The first base with spots' spot offsets (model pixels); None: no
        spots on any base.
    spot_radius : float or None
        Compared radius (model pixels).
    base_spots : list, optional
        Spot offsets of every base (None for a base without spots).
    spot_coverage : list, optional
        Per base, the median fraction of every spot's disk on the detector
        in the training data.
    spot_gain_quantiles : list of float or None
        1, 5, 25, 50, 95 % quantiles of the training patterns' median spot
        gains.
    weak_fraction : float or None
        Fraction of training patterns showing none of their base's spots.
    train_patterns : int
        Patterns trained on.
    train_seconds : float
        Wall time of ``fit`` (s).
    epochs_run : int
        Epochs of the kept attempt.
    final_loss : float or None
        Its last epoch's loss.
    encoder_sensitivity : dict
        The kept network's lock-on sensitivity (``mean`` and more).
    attempts : list of dict
        Every training attempt: ``seed``, ``epochs``, ``seconds``,
        ``sensitivity``.
    extra : dict
        Keys of a saved state that this version does not know.
    """

    base_frames: list | None = None
    q_max: float | None = None
    ring: list | None = None
    symmetry: int | None = None
    units: str | None = None
    prebin: bool | int | str | None = None
    bin_factor: int | None = None
    spots: list | None = None
    spot_radius: float | None = None
    base_spots: list | None = None
    spot_coverage: list | None = None
    spot_gain_quantiles: list | None = None
    weak_fraction: float | None = None
    train_patterns: int | None = None
    train_seconds: float | None = None
    epochs_run: int | None = None
    final_loss: float | None = None
    encoder_sensitivity: dict | None = None
    attempts: list | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, data: Mapping) -> FittedState:
        """From the saved JSON object (any version); unknown keys go to ``extra``."""
        names = set(cls._names())
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict:
        """The JSON object saved with the model (``extra`` keys included)."""
        return {**{k: getattr(self, k) for k in self._names()}, **self.extra}

    # --- read like the dict it replaces (fitted_["spots"], fitted_.get(...))
    def __getitem__(self, key: str):
        if key in self._names():
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value) -> None:
        if key in self._names():
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._names():
            setattr(self, key, None)
        else:
            del self.extra[key]

    def __contains__(self, key) -> bool:
        return key in self._names() or key in self.extra

    def get(self, key: str, default=None):
        """``self[key]`` if it is set (not None), else ``default``."""
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def keys(self):
        return self.to_dict().keys()


@dataclass(frozen=True)
class Prediction(Mapping):
    """Per-pattern output of :meth:`CCSTAE.predict`, arrays over the scan ``(Rx, Ry)``.

    Attributes
    ----------
    A : ndarray (Rx, Ry, 2, 2) float64
        Base -> pattern lattice matrices (``g_meas = A g_base``, calibrated
        frame; with several bases, each relative to the pattern's own base).
    cls : ndarray (Rx, Ry) int
        The base each pattern uses (key ``"class"``).
    error : ndarray (Rx, Ry) float64
        Masked mean squared reconstruction error (scaled-intensity units).
    valid : ndarray (Rx, Ry) bool
        False where the pattern carries no lattice of its base (vacuum,
        amorphous, blank) or a spot is off the detector.

    Reads as a mapping with keys ``"A"``, ``"class"``, ``"error"``,
    ``"valid"`` (what ``predict`` returned before it was typed).
    """

    A: np.ndarray
    cls: np.ndarray
    error: np.ndarray
    valid: np.ndarray

    _KEYS = {"A": "A", "class": "cls", "error": "error", "valid": "valid"}

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return getattr(self, self._KEYS[key])
        except KeyError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    @property
    def scan_shape(self) -> tuple[int, int]:
        """``(Rx, Ry)``."""
        return tuple(self.cls.shape)
