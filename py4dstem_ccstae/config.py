"""Every option of :class:`~py4dstem_ccstae.CCSTAE`, its default and its check, once.

:class:`Options` is the one definition: its fields are the options, their
defaults are fixed once (never tuned against ground truth) and
:meth:`Options.__post_init__` validates them (a ValueError naming the option).
:data:`DEFAULT_CONFIG` is the same as a dict. The defaults the lower layers
share with it (:class:`~py4dstem_ccstae.train.TrainConfig`,
:func:`~py4dstem_ccstae.spotfit.find_spots`) read them from here, and
``docs/configuration.md`` documents every field (its table is generated
from this class by ``docs/scripts/mkdocs_hooks.py``; ``tests/test_docs.py``
checks it).

This module is at the top of the chain: it imports only the argument checks.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np

from ._validation import check_number

__all__ = [
    "BACKGROUNDS",
    "DEFAULT_CONFIG",
    "LOSSES",
    "SPOT_TEXTURES",
    "Options",
    "check_config",
]

#: Static-background models of the refinement (option ``background``).
BACKGROUNDS = ("none", "radial")
#: Per-pixel training losses (option ``loss``; :mod:`~py4dstem_ccstae.losses`).
LOSSES = ("mse", "l1", "poisson")
#: Spot models of the refinement (option ``spot_texture``;
#: :func:`~py4dstem_ccstae.spotfit.refine_spots`).
SPOT_TEXTURES = ("fixed", "ramp")

#: Numeric options: (must be an int, lower bound, bound excluded).
_NUMERIC = {
    "size": (True, 16, False),
    "num_bases": (True, 1, False),
    "max_strain": (False, 0.0, True),
    "width": (True, 4, False),
    "epochs": (True, 1, False),
    "epoch_size": (True, 1, False),
    "batch_size": (True, 1, False),
    "lr": (False, 0.0, True),
    "refine_steps": (True, 1, False),
    "coarse_sigma": (False, 0.0, False),
    "coarse_epochs": (True, 0, False),
    "overshoot": (False, 0.0, True),
    "base_l1": (False, 0.0, False),
    "retries": (True, 0, False),
    "min_sensitivity": (False, 0.0, False),
    "spot_threshold": (False, 0.0, True),
    "equivariance": (False, 0.0, False),
}


@dataclass(frozen=True)
class Options:
    """The options of :class:`~py4dstem_ccstae.CCSTAE` with their defaults.

    Every field is described in ``docs/configuration.md`` (units, what it
    changes, how the default was chosen). In short: ``size`` (model pattern
    size, px), ``q_max`` (half field of view, A^-1 or the calibration's Q
    units; None: automatic), ``scaling`` (intensity scaling), ``ring``
    ((inner, outer) Q units or None), ``num_bases``, ``symmetry`` (int or
    ``"auto"``), ``max_strain``, ``width``, ``epochs``, ``epoch_size``
    (patterns per epoch), ``batch_size``, ``lr``, ``refine`` (per-pattern
    spot-wise refinement), ``refine_steps`` (its maximum Gauss-Newton
    iterations), ``refine_size`` (its pattern size, px; None: ``size``),
    ``background`` (static background removed by the refinement),
    ``spot_texture`` (the refinement's model of each spot),
    ``rotation_search`` (every pattern's in-plane rotation searched against
    its base on top of the encoder's transform),
    ``spot_threshold`` (weakest spot used, relative to the brightest),
    ``mask_schedule``, ``coarse_sigma`` and ``coarse_epochs``
    (coarse-to-fine smoothing, model pixels and epochs), ``loss``,
    ``overshoot``, ``base_l1``, ``retries`` and ``min_sensitivity`` (the
    lock-on check), ``equivariance`` (weight of the training term that
    asks the encoder to follow known warps of its input).
    """

    size: int = 64
    q_max: float | None = None
    scaling: str = "sqrt"
    ring: tuple | None = None
    num_bases: int = 1
    symmetry: int | str = "auto"
    max_strain: float = 0.1
    width: int = 16
    epochs: int = 30
    epoch_size: int = 1024
    batch_size: int = 64
    lr: float = 2e-3
    refine: bool = True
    refine_steps: int = 6
    refine_size: int | None = None
    background: str = "radial"
    spot_texture: str = "fixed"
    rotation_search: bool = True
    spot_threshold: float = 0.05
    mask_schedule: bool = False
    coarse_sigma: float = 3.0
    coarse_epochs: int = 6
    loss: str = "mse"
    overshoot: float = 1.0
    base_l1: float = 0.0
    retries: int = 2
    min_sensitivity: float = 0.1
    equivariance: float = 0.1

    def __post_init__(self) -> None:
        sym = self.symmetry
        if sym != "auto" and (isinstance(sym, bool) or not isinstance(sym, int) or sym < 1):
            raise ValueError(f"symmetry must be 'auto' or a positive int, got {sym!r}")
        for name, (integer, low, low_open) in _NUMERIC.items():
            _check_option(name, getattr(self, name), integer, low, low_open)
        for name in ("refine", "mask_schedule", "rotation_search"):
            value = getattr(self, name)
            if not _is_bool(value):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if self.coarse_sigma > self.size / 2:
            raise ValueError(
                f"coarse_sigma must be <= size / 2 = {self.size / 2:g} model "
                f"pixels, got {self.coarse_sigma!r}"
            )
        rs = self.refine_size
        integral = isinstance(rs, numbers.Integral) and not isinstance(rs, bool)
        if rs is not None and not (integral and 16 <= rs <= 512):
            raise ValueError(f"refine_size must be None or an int in [16, 512], got {rs!r}")
        if self.spot_threshold >= 1:
            raise ValueError(
                f"spot_threshold must be in (0, 1), got {self.spot_threshold!r}"
            )
        for name, choices in (
            ("spot_texture", SPOT_TEXTURES),
            ("background", BACKGROUNDS),
            ("loss", LOSSES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {choices}, got {getattr(self, name)!r}"
                )
        if self.width % 4:
            raise ValueError(f"width must be a multiple of 4, got {self.width}")
        if self.loss == "poisson" and self.scaling != "linear":
            raise ValueError(
                "loss='poisson' needs linear intensities: pass scaling='linear' "
                f"(got scaling={self.scaling!r})"
            )


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _check_option(name: str, value, integer: bool, low: float, low_open: bool) -> None:
    """A finite number (an int if ``integer``) above ``low``; ValueError naming it.

    A value of the wrong type is a ValueError too, so that every bad option
    gives the same kind of error.
    """
    if integer and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    try:
        check_number(value, name, low=low, low_open=low_open)
    except TypeError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


#: The defaults as a dict (what ``CCSTAE().config`` holds).
DEFAULT_CONFIG = {f.name: f.default for f in dataclasses.fields(Options)}


def check_config(config: dict) -> dict:
    """Every option, the defaults filled in, validated.

    Raises
    ------
    TypeError
        An unknown option.
    ValueError
        A bad value (naming the option).
    """
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise TypeError(f"unknown CCSTAE option(s): {sorted(unknown)}")
    merged = {**DEFAULT_CONFIG, **config}
    Options(**merged)
    return merged
