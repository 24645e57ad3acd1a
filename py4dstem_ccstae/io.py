"""EMD/HDF5 output: atomic writes, never overwriting without being asked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["save_emd"]


def save_emd(path: str | os.PathLike, node, *, overwrite: bool = False) -> Path:
    """Save a py4DSTEM/emdfile node (and its tree) to a new EMD file, atomically.

    The file is written to a temporary file in the target folder and renamed
    into place, so a crash leaves no partial file and any old file intact.

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
        py4DSTEM.save(tmp, node, mode="o")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
