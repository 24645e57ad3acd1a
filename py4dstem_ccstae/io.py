"""EMD/HDF5 input and output: atomic writes that never overwrite unasked.

* :func:`atomic_write` - the one place where files are written: a temporary
  file beside the target, renamed into place only when complete.
* :func:`save_emd` - a py4DSTEM/emdfile tree to a new EMD 1.0 file.
* :func:`read_datacube` - a DataCube from a py4DSTEM/EMD file (calibration
  included) or from any raw format :func:`py4DSTEM.import_file` reads.
* :func:`find_datacubes` - where the DataCubes in an EMD file are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "OutputExistsError",
    "atomic_write",
    "find_datacubes",
    "is_emd_file",
    "read_datacube",
    "save_emd",
]


class OutputExistsError(FileExistsError, ValueError):
    """The output file exists and replacing it was not asked for.

    Both a :class:`FileExistsError` and a :class:`ValueError`, so callers that
    catch either see it.
    """


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file (or, on POSIX, a folder entry) to disk; best effort."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) * os.path.isdir(path)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - e.g. folders on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """Permission bits a newly created file gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    append: bool = False,
    argname: str = "path",
) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; rename it into place on success.

    The temporary file lives in the same folder (so the final
    :func:`os.replace` is atomic), is flushed to disk before the rename, and
    gets the permissions of the file it replaces (or the umask default for a
    new file). A crash or exception leaves no partial file and any old file
    intact.

    Parameters
    ----------
    path : str or PathLike
        The file to write.
    overwrite : bool
        Allow replacing an existing ``path``. Default False.
    append : bool
        If ``path`` exists, the temporary file starts as a byte copy of it
        (the caller adds to it); if not, it starts empty. Needs no
        ``overwrite``: nothing already in the file is lost.
    argname : str
        Argument name used in error messages.

    Yields
    ------
    str
        The temporary file path. It exists (empty, or the copy when
        appending); writers that refuse existing files should delete it
        first or write in an overwrite mode.

    Raises
    ------
    ValueError
        The folder is missing or not writable, or ``path`` is a folder.
    OutputExistsError
        ``path`` exists and neither ``overwrite`` nor ``append`` is set
        (a subclass of both ``FileExistsError`` and ``ValueError``).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{argname}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{argname}: folder {str(folder)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"{argname}: {str(path)!r} is a folder, not a file")
    exists = path.exists()
    if exists and not (overwrite or append):
        raise OutputExistsError(
            f"{argname}: {str(path)!r} exists; pass overwrite=True to replace it"
            " (or append=True to add to it)"
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except PermissionError:
        raise ValueError(f"{argname}: folder {str(folder)!r} is not writable") from None
    os.close(fd)
    try:
        if append and exists:
            shutil.copyfile(path, tmp)
        yield tmp
        os.chmod(tmp, (path.stat().st_mode & 0o7777) if exists else _default_mode())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(folder)
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
        Replace an existing file. Default False: an existing file raises
        :class:`OutputExistsError` (a ``ValueError``).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    import py4DSTEM

    with atomic_write(path, overwrite=overwrite) as tmp:
        py4DSTEM.save(tmp, node, mode="o")
    return Path(path)


def is_emd_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file with an EMD 1.0 header (py4DSTEM >= 0.14)."""
    import h5py

    path = Path(path)
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return (
                f.attrs.get("emd_group_type") == "file"
                and f.attrs.get("version_major") == 1
            )
    except OSError:
        return False


def find_datacubes(path: str | os.PathLike, datapath: str | None = None) -> list[str]:
    """Paths of the DataCube nodes in an EMD file, optionally below ``datapath``.

    Parameters
    ----------
    path : str or PathLike
        An EMD 1.0 file.
    datapath : str, optional
        Search only at and below this group (``"root/node/..."``).

    Returns
    -------
    list of str
        Datapaths (without leading ``/``) usable as
        ``py4DSTEM.read(path, datapath=...)``, in file order.
    """
    import h5py

    found: list[str] = []
    with h5py.File(path, "r") as f:
        start = f
        if datapath:
            key = datapath.strip("/")
            if key not in f or not isinstance(f[key], h5py.Group):
                raise ValueError(f"datapath: no group {datapath!r} in {str(path)!r}")
            start = f[key]

        def visit(group):
            if group.attrs.get("python_class") == "DataCube":
                found.append(group.name.lstrip("/"))
            for key in group:
                child = group[key]
                if isinstance(child, h5py.Group) and key != "metadatabundle":
                    visit(child)

        visit(start)
    return found


def read_datacube(path: str | os.PathLike, datapath: str | None = None, **import_kw):
    """Read one 4D-STEM DataCube, with its calibration, from a file.

    Parameters
    ----------
    path : str or PathLike
        A py4DSTEM/EMD file (calibration read from it) or any raw format
        :func:`py4DSTEM.import_file` reads (DM3/4, MIB, EMPAD, K2, arina...).
    datapath : str, optional
        EMD files only: the DataCube node (``"root/datacube"``) or a group
        holding exactly one DataCube. Default: the file's only DataCube.
    **import_kw
        Passed to :func:`py4DSTEM.import_file` for raw formats (e.g.
        ``mem="MEMMAP"``, ``binfactor``).

    Returns
    -------
    py4DSTEM.DataCube
        Axes ``[Rx, Ry, Qx, Qy]``. EMD data are read into memory.

    Raises
    ------
    ValueError
        Missing or unreadable file, no DataCube, several DataCubes and no
        ``datapath``, or ``datapath`` given for a non-EMD file.
    """
    import py4DSTEM

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input: {str(path)!r} is not a file")
    if is_emd_file(path):
        cubes = find_datacubes(path, datapath)
        if not cubes:
            where = f" under {datapath!r}" if datapath else ""
            raise ValueError(f"input: no DataCube{where} in {str(path)!r}")
        if len(cubes) > 1:
            raise ValueError(
                f"input: {str(path)!r} holds {len(cubes)} DataCubes; choose one with "
                f"datapath ({', '.join(cubes)})"
            )
        dc = py4DSTEM.read(str(path), datapath=cubes[0], tree=False)
    else:
        if datapath:
            raise ValueError(
                f"datapath: only for py4DSTEM/EMD files; {str(path)!r} is not one"
            )
        try:
            dc = py4DSTEM.import_file(str(path), **import_kw)
        except Exception as err:  # py4DSTEM raises bare Exception/AssertionError
            msg = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ValueError(f"input: cannot read {str(path)!r}: {msg}") from err
    if not isinstance(dc, py4DSTEM.DataCube):
        raise ValueError(
            f"input: {str(path)!r} holds a {type(dc).__name__}, not a 4D DataCube"
        )
    return dc
