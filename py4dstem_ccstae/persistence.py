"""Persistence: the saved-model format, one HDF5 walker, training checkpoints.

What a fitted :class:`~py4dstem_ccstae.estimator.CCSTAE` is on disk, apart
from what it computes:

- **Model format** ``py4dstem_ccstae.CCSTAE/2`` (:data:`MODEL_FORMAT`): an
  emdfile tree (:func:`model_to_emd`) that plain py4DSTEM reads: a node
  carrying Metadata ``"ccstae_model"`` (``format``, package ``version``,
  JSON ``config``, ``fitted``, ``history``, ``state_shapes``), the bases as a
  ``DiffractionSlice`` and every other network tensor as an ``Array`` under
  ``weights``. Files of the older plain-HDF5 format
  ``py4dstem_ccstae.CCSTAE/1`` (:data:`LEGACY_MODEL_FORMAT`) still load
  (:func:`read_model`).
- **One HDF5 walker** (:func:`find_models`) finds models in any EMD file;
  :func:`save_model` writes through :func:`~py4dstem_ccstae.io.atomic_write`
  (a new file, or a copy of an existing one with the model appended).
- **Training checkpoints** (written by :mod:`~py4dstem_ccstae.train` through
  the same atomic write): checked before a fit (:func:`check_checkpoint`,
  :func:`check_resumable`).

A model read back is ``(config, fitted, history, state)``: the estimator
builds the object (this module does not import it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .io import (
    OutputExistsError,
    atomic_write,
    find_groups,
    is_emd_file,
    read_emd,
    reserve_output,
)

__all__ = [
    "SavedModel",
    "LEGACY_MODEL_FORMAT",
    "MODEL_FORMAT",
    "MODEL_NODE",
    "check_checkpoint",
    "check_resumable",
    "find_models",
    "model_to_emd",
    "read_model",
    "read_model_node",
    "save_model",
]

MODEL_FORMAT = "py4dstem_ccstae.CCSTAE/2"
LEGACY_MODEL_FORMAT = "py4dstem_ccstae.CCSTAE/1"
#: name of the model node's Metadata
MODEL_METADATA = "ccstae_model"
#: default name of the model node
MODEL_NODE = "ccstae_model"
_EMD_DATA_GROUPS = ("node", "array", "pointlist", "pointlistarray", "custom")


class SavedModel:
    """Saving and loading of a fitted model: the methods ``CCSTAE`` inherits.

    The class that uses it provides ``_saved_state()`` (``(config, fitted,
    history, arrays)``, RuntimeError when not fitted) and the class method
    ``_from_state(config, fitted, history, state, device)``.
    """

    def to_emd(self, name: str = MODEL_NODE):
        """The fitted model as an emdfile tree (what :meth:`save` writes).

        Parameters
        ----------
        name : str
            Name of the model node (an HDF5 group name: no ``/``).

        Returns
        -------
        emdfile.Node
            A node called ``name`` carrying Metadata ``"ccstae_model"``
            (``format``, package ``version``, JSON ``config``, ``fitted``,
            ``history``, ``state_shapes``), a child ``bases``
            (:class:`py4DSTEM.DiffractionSlice`, shape (K, S, S), model
            pixels spanning +-``q_max`` in ``fitted["units"]``) and a child
            Node ``weights`` with one :class:`emdfile.Array` per other
            network tensor. It sits in a fresh tree whose root is called
            ``"ccstae"``: graft more nodes next to it
            (``model_node.root.graft(strain)``) or graft it into another tree
            (``other_node.graft(model_node)``), save with
            :func:`py4DSTEM.save` and read it back with :meth:`from_emd`.
        """
        return model_to_emd(*self._saved_state(), name)

    @classmethod
    def from_emd(cls, node, device: str = "cpu") -> SavedModel:
        """Rebuild a model from the tree :meth:`to_emd` made (e.g. read from a file).

        Parameters
        ----------
        node : emdfile.Node
            The model node, e.g. ``py4DSTEM.read(path, datapath=".../ccstae_model")``.
        device : str
            ``"cpu"``, ``"cuda[:n]"`` or ``"auto"``.

        Returns
        -------
        CCSTAE
            Fitted, with ``config``, ``fitted_`` and ``history_`` restored.
        """
        from .train import resolve_device

        dev = resolve_device(device)
        return cls._from_state(*read_model_node(node), dev)

    def save(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        append: bool = False,
        datapath: str | None = None,
        name: str = MODEL_NODE,
    ) -> Path:
        """Save the fitted model to an EMD 1.0 file, atomically.

        The file reads with plain py4DSTEM (no plugin needed): the model is a
        node ``name`` holding the learned bases as a ``DiffractionSlice``,
        the weights as ``Array`` s and config/fitted/history as ``Metadata``
        (see :meth:`to_emd`). A new file holds one EMD tree, root
        ``"ccstae"``.

        Parameters
        ----------
        path : str or PathLike
            Target ``.h5``/``.emd`` file; its folder must exist and be writable.
        overwrite : bool
            Without ``append``: replace an existing file. With ``append``:
            replace a model node of the same ``name`` already at ``datapath``.
        append : bool
            Add the model to an existing py4DSTEM/EMD file (e.g. next to the
            user's DataCube) and keep everything already in it. The file is
            copied to a temporary file beside it, the model added there, and
            the copy renamed over the original: a crash leaves the old file
            intact, but the copy needs as much free disk space as the file.
            A missing ``path`` is created.
        datapath : str, optional
            With ``append``: the existing node (``"root/datacube"``) or root
            (``"root"``) under which to store the model. Default: the file's
            only top-level node if its single tree holds exactly one (so
            ``py4DSTEM.read(path)`` still returns that node, with the model
            in its tree), else the root of its single tree.
        name : str
            Name of the model node.

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        FileExistsError
            ``path`` exists and neither ``overwrite`` nor ``append`` is set, or
            a node ``name`` exists at ``datapath`` and ``overwrite`` is not set
            (:class:`~py4dstem_ccstae.io.OutputExistsError`, also a ValueError).
        ValueError
            Missing or read-only folder; ``append`` to a file that is not EMD
            1.0; bad ``datapath``; ``datapath`` without ``append``.
        """
        self._saved_state()  # RuntimeError when not fitted
        if datapath is not None and not append:
            raise ValueError("datapath: only used with append=True")
        node = self.to_emd(name)
        return save_model(
            node, Path(path), overwrite=overwrite, append=append, datapath=datapath
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str = "cpu", *, datapath: str | None = None
    ) -> SavedModel:
        """Load a model written by :meth:`save` (or grafted with :meth:`to_emd`).

        Parameters
        ----------
        path : str or PathLike
            An EMD file holding a model anywhere in its trees (alone, beside a
            DataCube, or in a ``py4dstem-ccstae fit`` output), or a file in
            the older plain-HDF5 format ``py4dstem_ccstae.CCSTAE/1``.
        device : str
            ``"cpu"`` (default), ``"cuda[:n]"`` or ``"auto"``.
        datapath : str, optional
            The model node, or a group holding exactly one model, when the
            file holds several.

        Returns
        -------
        CCSTAE
            Fitted; predictions equal those of the saved model.

        Raises
        ------
        ValueError
            Not a file, not HDF5, no model (under ``datapath``), or several
            models and no ``datapath``.
        """
        from .train import resolve_device

        dev = resolve_device(device)
        return cls._from_state(*read_model(path, datapath), dev)


def model_to_emd(config: dict, fitted: dict, history: list, state: dict, name: str):
    """The emdfile tree of a fitted model (see :meth:`CCSTAE.to_emd`).

    ``state``: the network's ``state_dict`` as numpy arrays (``bases`` of
    shape (K, 1, S, S) among them).
    """
    from emdfile import Array, Metadata, Node, Root
    from py4DSTEM import DiffractionSlice

    from . import __version__

    check_node_name(name, "name")
    state = dict(state)
    node = Node(name=name)
    Root(name="ccstae").add_to_tree(node)
    node.metadata = Metadata(
        name=MODEL_METADATA,
        data={
            "format": MODEL_FORMAT,
            "version": __version__,
            "config": _to_json(config),
            "fitted": _to_json(fitted),
            "history": _to_json(history),
            "state_shapes": _to_json({k: list(v.shape) for k, v in state.items()}),
        },
    )
    if "bases" in state:
        b = state.pop("bases")
        k = b.shape[0]
        bases = DiffractionSlice(
            data=np.ascontiguousarray(b.reshape(k, *b.shape[-2:])),
            name="bases",
            units="scaled intensity",
            slicelabels=[f"base_{i}" for i in range(k)],
        )
        node.graft(bases, merge_metadata=False)
    weights = Node(name="weights")
    node.add_to_tree(weights)
    for key, value in state.items():
        check_node_name(key, "state_dict key")
        weights.add_to_tree(Array(data=np.atleast_1d(value), name=key))
    return node


def read_model_node(node) -> tuple[dict, dict, list, dict]:
    """``(config, fitted, history, state)`` of a model node :func:`model_to_emd` made.

    ValueError (starting ``"node: "``) for a node that is not a model, a
    damaged one or another format.
    """
    name = getattr(node, "name", node)
    md = getattr(node, "metadata", {}).get(MODEL_METADATA)
    if md is None:
        raise ValueError(f"node: {name!r} is not a CCSTAE model")
    missing = [k for k in _MODEL_KEYS if k not in md.keys]
    if missing:
        raise ValueError(
            f"node: the model metadata of {name!r} lacks {', '.join(missing)} "
            "(a damaged or edited file)"
        )
    if md["format"] != MODEL_FORMAT:
        raise ValueError(
            f"node: model format {md['format']!r} is not {MODEL_FORMAT!r}; "
            "upgrade py4dstem-ccstae"
        )
    parsed = {k: _from_json(md[k], k, name) for k in _MODEL_KEYS if k != "format"}
    state = {}
    for key, shape in parsed["state_shapes"].items():
        where = "bases" if key == "bases" else f"weights/{key}"
        try:
            arr = node.tree(where).data
        except (AssertionError, KeyError, AttributeError):
            raise ValueError(
                f"node: the model {name!r} has lost its {where!r} array "
                "(a damaged or edited file)"
            ) from None
        try:
            state[key] = torch.from_numpy(np.array(arr).reshape(shape))
        except (ValueError, TypeError):
            raise ValueError(
                f"node: the model's {where!r} array has shape {np.shape(arr)}, "
                f"its metadata says {tuple(shape)} (a damaged or edited file)"
            ) from None
    return parsed["config"], parsed["fitted"], parsed["history"], state


def save_model(
    node,
    path: Path,
    *,
    overwrite: bool,
    append: bool,
    datapath: str | None,
) -> Path:
    """Write a model node to ``path`` atomically (see :meth:`CCSTAE.save`)."""
    import h5py
    import py4DSTEM

    path = Path(path)
    name = node.name
    if datapath is not None and not append:
        raise ValueError("datapath: only used with append=True")
    target = None
    if append and path.exists():
        if not is_emd_file(path):
            raise ValueError(
                f"path: {str(path)!r} is not an EMD 1.0 (py4DSTEM >= 0.14) file; "
                "cannot append a model to it"
            )
        target = _append_target(path, datapath)
        with h5py.File(path, "r") as f:
            if name in f[target] and not overwrite:
                raise OutputExistsError(
                    f"name: {target}/{name} already exists in {str(path)!r}; "
                    "pass overwrite=True to replace it or choose another name"
                )
    with atomic_write(path, overwrite=overwrite, append=append) as tmp:
        if target is None:
            py4DSTEM.save(tmp, node.root, mode="o")
        else:
            with h5py.File(tmp, "a") as f:
                if name in f[target]:
                    del f[target][name]
                taken = set(f.keys())
            root_name = "_ccstae_append"
            while root_name in taken:
                root_name += "_"
            node.root.name = root_name  # a root not in the file: graft below target
            py4DSTEM.save(tmp, node, mode="a", emdpath=target, tree=True)
    return path


def read_model(path, datapath: str | None = None) -> tuple[dict, dict, list, dict]:
    """``(config, fitted, history, state)`` of the model saved in ``path``.

    Reads the current EMD format (the one model in the file, or the one at
    or below ``datapath``) and the legacy plain-HDF5 format. Every failure
    is a ValueError naming ``path``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: {str(path)!r} is not a file")
    if not h5py.is_hdf5(path):
        raise ValueError(f"path: {str(path)!r} is not an HDF5/EMD file")
    try:
        return _read_model(path, datapath)
    except ValueError as err:
        msg = str(err)
        if str(path) in msg:
            raise
        msg = msg.removeprefix("node: ")
        raise ValueError(f"path: {str(path)!r}: {msg}") from None
    except Exception as err:  # noqa: BLE001
        # h5py on a truncated/corrupt file (OSError), emdfile on a damaged
        # tree (KeyError, AssertionError, bare Exception)
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"path: {str(path)!r} cannot be read as a CCSTAE model (truncated or "
            f"damaged file? {type(err).__name__}: {detail})"
        ) from None


def _read_model(path: Path, datapath: str | None):
    """:func:`read_model` once ``path`` is known to be an HDF5 file."""
    import emdfile
    import h5py
    import py4DSTEM  # noqa: F401  (registers DiffractionSlice for emdfile.read)

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") == LEGACY_MODEL_FORMAT:
            state = {k: torch.from_numpy(np.asarray(v)) for k, v in f["state_dict"].items()}
            return (
                json.loads(f.attrs["config"]),
                json.loads(f.attrs["fitted"]),
                json.loads(f.attrs["history"]),
                state,
            )
    where = f" under datapath {datapath!r}" if datapath else ""
    models = find_models(path, datapath) if is_emd_file(path) else []
    if not models:
        raise ValueError(f"path: no CCSTAE model{where} in {str(path)!r}")
    if len(models) > 1:
        raise ValueError(
            f"path: {len(models)} CCSTAE models{where} in {str(path)!r}; choose one "
            f"with datapath ({', '.join(models)})"
        )
    node = read_emd(emdfile.read, str(path), emdpath=models[0], tree=True)
    return read_model_node(node)


def read_checkpoint(path) -> dict | None:
    """A training checkpoint of this package at ``path``, or None if it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable or foreign file
        return None
    if not isinstance(state, dict) or not {"net", "opt", "history"} <= set(state):
        return None
    return state


def check_checkpoint(checkpoint, resume: bool, overwrite: bool) -> dict | None:
    """Validate ``fit``'s checkpoint before any work; the existing checkpoint, if any.

    The folder must accept a new file (probed by creating one: ``os.access``
    misleads root and read-only mounts), the path must not be a folder, and an
    existing file must be a training checkpoint of this package (or
    ``overwrite``).
    """
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a path (str or PathLike), got {type(checkpoint).__name__}"
        )
    path = Path(checkpoint)
    with reserve_output(path, overwrite=True, argname="checkpoint"):
        pass
    if not path.exists():
        return None
    state = read_checkpoint(path)
    if state is None:
        if resume:
            raise ValueError(
                f"checkpoint: {str(path)!r} is not a CCSTAE training checkpoint; "
                "cannot resume from it"
            )
        if not overwrite:
            raise OutputExistsError(
                f"checkpoint: {str(path)!r} exists and is not a CCSTAE training "
                "checkpoint; pass overwrite=True to replace it, or choose another file"
            )
    return state


def check_resumable(path, state: dict, network: dict) -> None:
    """ValueError naming the options in which a checkpoint differs from this fit."""
    saved = state.get("options")
    if not saved:
        return  # older checkpoints: shapes are compared when loading
    saved = json.loads(saved)
    diff = [
        f"{k}={saved[k]!r} (this fit: {v!r})"
        for k, v in network.items()
        if k in saved and saved[k] != v
    ]
    if diff:
        raise ValueError(
            f"checkpoint: {str(path)!r} was written by a fit with other options: "
            f"{'; '.join(diff)}. Resume with the same options, or start afresh "
            "(resume=False)"
        )


#: Metadata keys of a saved model (:func:`model_to_emd`).
_MODEL_KEYS = ("format", "config", "fitted", "history", "state_shapes")


def _from_json(text, key: str, name) -> object:
    """JSON metadata entry ``key`` of model ``name``; ValueError saying which is bad."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"node: the model metadata {key!r} of {name!r} is not valid JSON "
            "(a damaged or edited file)"
        ) from None


def _to_json(value) -> str:
    """JSON text of config/fitted/history; numpy scalars and arrays become lists."""

    def default(obj):
        if isinstance(obj, (np.generic, np.ndarray)):
            return obj.tolist()
        if isinstance(obj, tuple):
            return list(obj)
        raise TypeError(f"cannot store {type(obj).__name__} in a saved model")

    return json.dumps(value, default=default)


def check_node_name(name, argname: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{argname} must be a non-empty name without '/', got {name!r}")
    return name


def _data_children(group) -> list[str]:
    """Names of the EMD data nodes directly inside an h5py group."""
    import h5py

    return [
        k
        for k, v in group.items()
        if isinstance(v, h5py.Group)
        and str(v.attrs.get("emd_group_type", "")).removeprefix("custom_")
        in _EMD_DATA_GROUPS
    ]


def _is_model_group(group) -> bool:
    import h5py

    mdb = group.get("metadatabundle")
    return isinstance(mdb, h5py.Group) and MODEL_METADATA in mdb


def _append_target(path: Path, datapath: str | None) -> str:
    """The h5py group path under which :func:`save_model` appends a model."""
    import h5py

    with h5py.File(path, "r") as f:
        if datapath is not None:
            key = str(datapath).strip("/")
            grp = f.get(key) if key else None
            kind = (
                grp.attrs.get("emd_group_type", "") if isinstance(grp, h5py.Group) else ""
            )
            if kind != "root" and str(kind).removeprefix("custom_") not in _EMD_DATA_GROUPS:
                raise ValueError(
                    f"datapath: no EMD node or root {datapath!r} in {str(path)!r}"
                )
            return key
        roots = [
            k
            for k, v in f.items()
            if isinstance(v, h5py.Group) and v.attrs.get("emd_group_type") == "root"
        ]
        if len(roots) != 1:
            raise ValueError(
                f"datapath: {str(path)!r} holds {len(roots)} EMD trees "
                f"({', '.join(roots)}); say under which node to store the model"
            )
        children = _data_children(f[roots[0]])
        if len(children) == 1 and not _is_model_group(f[roots[0]][children[0]]):
            return f"{roots[0]}/{children[0]}"
        return roots[0]


def find_models(path: str | os.PathLike, datapath: str | None = None) -> list[str]:
    """Datapaths of the CCSTAE models saved in an EMD file.

    Parameters
    ----------
    path : str or PathLike
        An EMD 1.0 file.
    datapath : str, optional
        Search only at and below this group.

    Returns
    -------
    list of str
        Paths (no leading ``/``), each readable with
        ``py4DSTEM.read(path, datapath=...)`` or
        ``CCSTAE.load(path, datapath=...)``.
    """
    return find_groups(
        path,
        lambda group: group.name != "/" and _is_model_group(group),
        datapath,
        descend_matches=False,
    )
