"""The command line's argument types and the option groups its commands share.

Argument types (argparse ``type=``) turn a bad value into one clear line
(exit code 2, through :class:`Parser`): integers with a lower bound,
percentages, comma-separated percentages, JSON objects, the ``--reference``
rectangle and ``--set KEY=VALUE``. Option groups are added to a parser with
one call each, so that ``fit``, ``predict`` and scripts such as
``examples/batch_process.py`` declare them once: the scan options
(``--datapath``, ``--reference`` | ``--reference-mask``, ``--frame``),
``--device``, the output options (``--out``, ``--plot``, ``--force``), the
training options (``--epochs``, ``--seed``, ``--refine-steps``) and ``--set``;
:func:`training_config` reads what the last two ask of the model.
"""

from __future__ import annotations

import argparse
import json

from .estimator import FRAMES
from .workflow_io import OUTPUT_SUFFIX, _parse_ranges

__all__ = [
    "predict_options",
    "Parser",
    "add_config_option",
    "add_device_option",
    "add_output_options",
    "add_scan_options",
    "add_training_options",
    "config_option",
    "int_at_least",
    "json_object",
    "percent",
    "percentages",
    "reference_arg",
    "training_config",
]


class Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line with exit code 2."""

    def error(self, message):  # pragma: no cover - exercised via subprocess
        self.exit(2, f"{self.prog}: error: {message}\n")


# ------------------------------------------------------------ argument types
def int_at_least(low: int):
    """argparse ``type=``: an integer >= ``low`` (one clear line otherwise)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v

    return parse


def percent(text: str) -> float:
    """argparse ``type=``: a number in [0, 100] (percent)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 100], got {text!r}"
        ) from None
    if not 0 <= v <= 100:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 100], got {v}")
    return v


def percentages(text: str) -> tuple[float, ...]:
    """argparse ``type=``: comma-separated numbers in [0, 100] (percent)."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated percentages, got {text!r}"
        ) from None
    if not vals or any(not 0 <= v <= 100 for v in vals):
        raise argparse.ArgumentTypeError(f"percentages must be in [0, 100], got {text!r}")
    return vals


def json_object(text: str) -> dict:
    """argparse ``type=``: a JSON object (``'{"epochs": 10}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def reference_arg(text: str) -> str:
    """argparse ``type=`` for ``--reference``: check the ``R0:R1,C0:C1`` syntax.

    Bounds are checked against the scan by
    :func:`~py4dstem_ccstae.workflow_io.parse_reference`.
    """
    try:
        _parse_ranges(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def config_option(text: str) -> tuple[str, object]:
    """argparse ``type=`` for ``--set KEY=VALUE``: a CCSTAE option and its value.

    ``VALUE`` is read as JSON (``3``, ``0.5``, ``true``, ``null``,
    ``[0.2, 1.5]``) and otherwise kept as a string (``loss=l1``).
    """
    from .estimator import DEFAULT_CONFIG

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key not in DEFAULT_CONFIG:
        raise argparse.ArgumentTypeError(
            f"unknown option {key!r}; options: {', '.join(sorted(DEFAULT_CONFIG))}"
        )
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if isinstance(parsed, list):
        parsed = tuple(parsed)
    return key, parsed


def training_config(options: list | None, refine_steps: int | None) -> dict:
    """CCSTAE options of ``--set`` and ``--refine-steps``; ValueError if they disagree.

    ``--refine-steps 0`` turns the refinement off (``refine=False``); N > 0
    sets ``refine_steps=N``.
    """
    cfg = dict(options or [])
    if refine_steps is None:
        return cfg
    extra = {"refine": refine_steps > 0, "refine_steps": max(refine_steps, 1)}
    for key, value in extra.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(
                f"--refine-steps {refine_steps} contradicts --set {key}="
                f"{json.dumps(cfg[key])}; give one of them"
            )
    return {**cfg, **extra}


# ------------------------------------------------------------- option groups
def add_scan_options(p: argparse.ArgumentParser) -> None:
    """``--datapath``, ``--reference`` | ``--reference-mask`` and ``--frame``."""
    p.add_argument(
        "--datapath",
        metavar="P",
        help="DataCube inside an EMD INPUT, e.g. 'root/datacube' "
        "(default: its only DataCube)",
    )
    ref = p.add_mutually_exclusive_group()
    ref.add_argument(
        "--reference",
        type=reference_arg,
        metavar="R0:R1,C0:C1",
        help="unstrained reference region: scan rows R0..R1-1 and columns C0..C1-1 "
        "(0-based; ends may be omitted, e.g. ':10,:10'); default: all positions",
    )
    ref.add_argument(
        "--reference-mask",
        metavar="FILE",
        help=".npy file with a bool array of the scan shape (Rx, Ry): the reference region",
    )
    p.add_argument(
        "--frame",
        choices=FRAMES,
        default="auto",
        help="with several bases: classes that show one lattice in one frame relative "
        "to the reference (auto, common) or each class relative to itself (class); "
        "default auto",
    )


def predict_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``run_predict``/``predict_batch`` from parsed options.

    ``datapath``, ``reference``, ``reference_mask`` and ``frame``
    (:func:`add_scan_options`), ``device`` (:func:`add_device_option`) and
    ``force`` (:func:`add_output_options`).
    """
    return dict(
        datapath=args.datapath,
        reference=args.reference,
        reference_mask=args.reference_mask,
        device=args.device,
        force=args.force,
        frame=args.frame,
    )


def add_device_option(p: argparse.ArgumentParser, use: str) -> None:
    """``--device {auto,cpu,cuda}``; ``use`` names what runs there ("training")."""
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help=f"{use} device (auto: CUDA if available)",
    )


def add_output_options(p: argparse.ArgumentParser, what: str) -> None:
    """``--out FILE`` (an EMD file with ``what``), ``--plot FILE`` and ``--force``."""
    p.add_argument(
        "--out",
        metavar="FILE",
        help=f"output EMD file with {what} (default: INPUT folder, <stem>{OUTPUT_SUFFIX})",
    )
    p.add_argument("--plot", metavar="FILE", help="also write a show_strain PNG here")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def add_training_options(p: argparse.ArgumentParser) -> None:
    """``--epochs``, ``--seed`` and ``--refine-steps`` (see :func:`training_config`)."""
    p.add_argument(
        "--epochs",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="training epochs (30)",
    )
    p.add_argument(
        "--seed", type=int_at_least(0), default=0, metavar="N", help="random seed (0)"
    )
    p.add_argument(
        "--refine-steps",
        type=int_at_least(0),
        default=None,
        metavar="N",
        help="per-pattern refinement steps after training (default: CCSTAE's; "
        "0: no refinement, faster, less accurate); stored in the model and used "
        "by 'predict'",
    )


def add_config_option(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE``, repeatable: any CCSTAE option (:func:`config_option`)."""
    p.add_argument(
        "--set",
        type=config_option,
        action="append",
        metavar="KEY=VALUE",
        help="any CCSTAE option (docs: Configuration), repeatable, e.g. "
        "--set size=96 --set loss=l1 --set ring=[0.2,1.5]; VALUE is read as JSON, "
        "else as a string",
    )
