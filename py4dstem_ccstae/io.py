"""EMD/HDF5 output: atomic writes, never overwriting without being asked."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "save_emd"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; rename it into place on success.

    A crash or exception leaves no partial file and any old file intact.

    Raises
    ------
    ValueError
        The folder is missing or not writable, or ``path`` exists and
        ``overwrite`` is False.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"path: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"path: folder {str(folder)!r} is not writable")
    if path.exists() and not overwrite:
        raise ValueError(f"path: {str(path)!r} exists; pass overwrite=True to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_emd(path: str | os.PathLike, node, *, overwrite: bool = False) -> Path:
    """Save a py4DSTEM/emdfile node (and its tree) to a new EMD file, atomically.

    Parameters
    ----------
    path : str or PathLike
        Target ``.h5``/``.emd`` file. Its folder must exist and be writable.
    node : emdfile Node
        E.g. a DataCube with RealSlices grafted into its tree.
    overwrite : bool
        Replace an existing file. Default False: an existing file raises.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    import py4DSTEM

    with atomic_write(path, overwrite=overwrite) as tmp:
        py4DSTEM.save(tmp, node, mode="o")
    return Path(path)
