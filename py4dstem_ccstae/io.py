"""EMD/HDF5 input and output: atomic writes that never overwrite unasked.

* :func:`atomic_write` - the one place where files are written: a temporary
  file beside the target, renamed into place only when complete; a new file
  is created exclusively (one of two concurrent writers wins).
* :func:`reserve_output` - claim an output before long work (writability
  probed, existence checked, lock held), so that it cannot fail afterwards.
* :func:`clean_stale_temporaries` - remove temporary files of killed writes.
* :func:`save_emd` - a py4DSTEM/emdfile tree to a new EMD 1.0 file.
* :func:`read_datacube` - a DataCube from a py4DSTEM/EMD file (calibration
  included) or from any raw format :func:`py4DSTEM.import_file` reads.
* :func:`open_datacube` - the same, read lazily (h5py Dataset or memmap).
* :func:`find_datacubes` - where the DataCubes in an EMD file are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "OutputExistsError",
    "atomic_write",
    "clean_stale_temporaries",
    "find_datacubes",
    "find_groups",
    "is_emd_file",
    "open_datacube",
    "read_datacube",
    "read_emd",
    "reserve_output",
    "save_emd",
]

#: Attempts of :func:`read_emd` when emdfile's class lookup races an import.
EMD_READ_ATTEMPTS = 5


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


#: Temporary files of this package: ``.<name>.ccstae-<host>-<pid>-<random>.tmp``.
_TMP_PATTERN = re.compile(
    r"^\.(?P<name>.+)\.ccstae-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[^.]*\.tmp$"
)
#: Temporary files of older versions (no owner recorded): ``.<name>.<random>.tmp``.
_OLD_TMP_AGE_S = 24 * 3600.0


def _host() -> str:
    """This machine's name, reduced to ``[A-Za-z0-9_]`` (part of temp/lock names)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    """True if process ``pid`` runs on this machine (or cannot be checked)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.ccstae.lock")


def _mkstemp(folder: Path, name: str, argname: str) -> str:
    """Create an empty temporary file of this package in ``folder``; its path.

    Creating it is the writability probe (``os.access`` is not enough: root
    ignores mode bits, and some file systems are read-only or refuse files).
    """
    prefix = f".{name}.ccstae-{_host()}-{os.getpid()}-"
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(
            f"{argname}: cannot create a file in folder {str(folder)!r} ({reason})"
        ) from None
    os.close(fd)
    return tmp


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of this package left beside ``path`` by killed writes.

    A write killed mid-way (power loss, ``SIGKILL``, out of memory) cannot
    remove its temporary file. The next write to the same target removes
    those whose writer no longer runs on this machine (the host and process
    id are in the name), and those of older versions (no owner in the name)
    that are more than a day old. Files of other machines (shared folders)
    and of running processes are left alone.

    Returns
    -------
    list of Path
        The files removed.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host, now = _host(), time.time()
    old = re.compile(r"^\." + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp$")
    for entry in entries:
        m = _TMP_PATTERN.match(entry.name)
        stale = False
        if m is not None and m["name"] == path.name:
            stale = m["host"] == host and not _alive(int(m["pid"]))
        elif old.match(entry.name):
            try:
                stale = now - entry.stat().st_mtime > _OLD_TMP_AGE_S
            except OSError:
                stale = False
        if stale:
            with contextlib.suppress(OSError):
                os.remove(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def _output_lock(path: Path, argname: str) -> Iterator[None]:
    """Hold ``.<name>.ccstae.lock`` beside ``path`` (exclusive create) while writing.

    Another live process holding it: :class:`OutputExistsError`. A lock left
    by a process that no longer runs on this machine is taken over. Nested
    use by the same process is allowed (the lock is then left to the outer
    holder).
    """
    lock = _lock_path(path)
    owner = f"{_host()} {os.getpid()}"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            fd = None
        except OSError as err:
            reason = err.strerror or type(err).__name__
            folder = path.parent if str(path.parent) else Path(".")
            raise ValueError(
                f"{argname}: cannot create a file in folder {str(folder)!r} ({reason})"
            ) from None
        if fd is not None:
            with os.fdopen(fd, "w") as f:
                f.write(owner + "\n")
            break
        try:
            host, pid = lock.read_text().split()[:2]
            pid = int(pid)
        except (OSError, ValueError):
            host, pid = "", -1  # being written this instant, or unreadable
        if host == _host() and pid == os.getpid():
            yield  # nested in this process: the outer holder removes the lock
            return
        if host == _host() and pid > 0 and not _alive(pid):
            with contextlib.suppress(OSError):
                os.remove(lock)  # left by a killed process: take it over
            continue
        raise OutputExistsError(
            f"{argname}: {str(path)!r} is being written by another process "
            f"({host or 'unknown host'}, pid {pid}); wait for it or choose another "
            f"file (remove {str(lock)!r} if that process is gone)"
        )
    else:  # pragma: no cover - a lock that keeps reappearing
        raise OutputExistsError(f"{argname}: {str(path)!r} is being written elsewhere")
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if lock.read_text().split()[:2] == owner.split():
                os.remove(lock)


def _check_target(path: Path, argname: str) -> Path:
    """The folder of ``path``; ValueError if it is missing or ``path`` is a folder."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{argname}: folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{argname}: {str(path)!r} is a folder, not a file")
    return folder


def _exists_message(path: Path, argname: str, hint: str | None) -> str:
    hint = hint or "pass overwrite=True to replace it (or append=True to add to it)"
    return f"{argname}: {str(path)!r} exists; {hint}"


@contextlib.contextmanager
def reserve_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    argname: str = "path",
    exists_hint: str | None = None,
) -> Iterator[Path]:
    """Claim an output file before long work (training), so that it cannot fail after.

    Checks, before anything is computed, everything that would make the final
    :func:`atomic_write` fail: the folder exists and accepts a new file
    (probed by creating and removing a temporary file), ``path`` is not a
    folder, and it does not exist unless ``overwrite``. Then holds the lock
    file ``.<name>.ccstae.lock`` beside it until the block ends, so another
    process that reserves or writes the same new file gets
    :class:`OutputExistsError` at once instead of after its own training.
    Writes inside the block (:func:`atomic_write` of this process) proceed.

    Parameters
    ----------
    path : str or PathLike
        The output file.
    overwrite : bool
        An existing ``path`` is allowed (it will be replaced).
    argname : str
        Name used in error messages (``"--out"`` for the command line).
    exists_hint : str, optional
        What the "exists" error tells the user to do (default names
        ``overwrite=True``; the command line says ``--force``).

    Raises
    ------
    ValueError
        Missing folder, a folder in which no file can be created, or
        ``path`` is a folder.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False, or another process is
        writing it.
    """
    path = Path(path)
    folder = _check_target(path, argname)
    if path.exists() and not overwrite:
        raise OutputExistsError(_exists_message(path, argname, exists_hint))
    os.remove(_mkstemp(folder, path.name, argname))
    with _output_lock(path, argname):
        if path.exists() and not overwrite:  # created meanwhile
            raise OutputExistsError(_exists_message(path, argname, exists_hint))
        yield path


def _publish_new(tmp: str, path: Path, argname: str, hint: str | None) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist (atomic, exclusive)."""
    try:
        os.link(tmp, path)  # fails if path exists: exactly one writer wins
    except FileExistsError:
        raise OutputExistsError(
            _exists_message(path, argname, hint) + " (created by another process "
            "while this one was writing)"
        ) from None
    except OSError:
        # no hard links here (some network/FAT file systems): reserve the
        # name with an exclusive create, then move the file over it
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise OutputExistsError(
                _exists_message(path, argname, hint) + " (created by another process "
                "while this one was writing)"
            ) from None
        os.replace(tmp, path)
        return
    os.remove(tmp)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    append: bool = False,
    argname: str = "path",
    exists_hint: str | None = None,
) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; rename it into place on success.

    The temporary file lives in the same folder (so the final rename is
    atomic), is flushed to disk before the rename, and gets the permissions
    of the file it replaces (or the umask default for a new file). A crash or
    exception leaves no partial file and any old file intact; temporary files
    left by earlier killed writes are removed (:func:`clean_stale_temporaries`).

    A new file (no ``overwrite``) is created exclusively: the lock file
    ``.<name>.ccstae.lock`` is held while writing, and the final step is a
    hard link that fails if the name exists, so of two processes writing the
    same new file at the same moment exactly one succeeds and the other gets
    :class:`OutputExistsError`.

    Parameters
    ----------
    path : str or PathLike
        The file to write.
    overwrite : bool
        Allow replacing an existing ``path``. Default False.
    append : bool
        If ``path`` exists, the temporary file starts as a byte copy of it
        (the caller adds to it); if not, it starts empty. Needs no
        ``overwrite``: nothing already in the file is lost. Appends of
        several processes to one file are serialised by the lock (the later
        one gets :class:`OutputExistsError`).
    argname : str
        Argument name used in error messages.
    exists_hint : str, optional
        What the "exists" error tells the user to do.

    Yields
    ------
    str
        The temporary file path. It exists (empty, or the copy when
        appending); writers that refuse existing files should delete it
        first or write in an overwrite mode.

    Raises
    ------
    ValueError
        The folder is missing or no file can be created in it, or ``path``
        is a folder.
    OutputExistsError
        ``path`` exists and neither ``overwrite`` nor ``append`` is set, or
        another process writes it (a subclass of both ``FileExistsError``
        and ``ValueError``).
    """
    path = Path(path)
    folder = _check_target(path, argname)
    exclusive = not overwrite
    if path.exists() and not (overwrite or append):
        raise OutputExistsError(_exists_message(path, argname, exists_hint))
    clean_stale_temporaries(path)
    lock = _output_lock(path, argname) if exclusive else contextlib.nullcontext()
    with lock:
        exists = path.exists()
        if exists and not (overwrite or append):
            raise OutputExistsError(_exists_message(path, argname, exists_hint))
        tmp = _mkstemp(folder, path.name, argname)
        try:
            if append and exists:
                shutil.copyfile(path, tmp)
            yield tmp
            os.chmod(tmp, (path.stat().st_mode & 0o7777) if exists else _default_mode())
            _fsync(tmp)
            if exists:
                os.replace(tmp, path)
            else:
                _publish_new(tmp, path, argname, exists_hint)
            _fsync(folder)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def save_emd(
    path: str | os.PathLike,
    node,
    *,
    overwrite: bool = False,
    argname: str = "path",
    exists_hint: str | None = None,
) -> Path:
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
    argname, exists_hint : str, optional
        Name of the output and advice used in error messages (as in
        :func:`atomic_write`).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    import py4DSTEM

    with atomic_write(
        path, overwrite=overwrite, argname=argname, exists_hint=exists_hint
    ) as tmp:
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
    return find_groups(
        path, lambda group: group.attrs.get("python_class") == "DataCube", datapath
    )


def find_groups(
    path: str | os.PathLike,
    match,
    datapath: str | None = None,
    *,
    descend_matches: bool = True,
) -> list[str]:
    """Datapaths of the groups of an HDF5/EMD file for which ``match(group)`` holds.

    The package's one walker of HDF5 trees (:func:`find_datacubes`,
    :func:`~py4dstem_ccstae.persistence.find_models`): depth first, in file
    order, from the root or from the group ``datapath`` (ValueError naming
    ``datapath`` when the file has no such group), skipping
    ``metadatabundle`` groups; ``descend_matches=False`` does not look
    inside a matching group.

    Returns
    -------
    list of str
        Datapaths without the leading ``/``.
    """
    import h5py

    found: list[str] = []
    with h5py.File(path, "r") as f:
        start = f
        if datapath:
            key = str(datapath).strip("/")
            if key not in f or not isinstance(f[key], h5py.Group):
                raise ValueError(f"datapath: no group {datapath!r} in {str(path)!r}")
            start = f[key]

        def visit(group):
            if match(group):
                found.append(group.name.lstrip("/"))
                if not descend_matches:
                    return
            for key in group:
                child = group[key]
                if isinstance(child, h5py.Group) and key != "metadatabundle":
                    visit(child)

        visit(start)
    return found


def read_emd(reader, *args, **kwargs):
    """``reader(*args, **kwargs)``, repeated when emdfile's class lookup races an import.

    ``reader`` is ``emdfile.read`` or ``py4DSTEM.read``.

    emdfile finds the classes it rebuilds (py4DSTEM's ``Calibration``,
    ``DataCube``...) by iterating over ``sys.modules`` while it reads. When
    another thread of the process imports a module meanwhile (a dask worker's
    event loop does), that iteration raises ``RuntimeError: dictionary changed
    size during iteration`` (seen in ``benchmarks/large_data.py``, where dask's
    task retry recovered). The read is repeated up to
    :data:`EMD_READ_ATTEMPTS` times for that error only; any other error
    propagates at once.
    """
    for attempt in range(EMD_READ_ATTEMPTS):
        try:
            return reader(*args, **kwargs)
        except RuntimeError as err:
            if "changed size during iteration" not in str(err) or (
                attempt == EMD_READ_ATTEMPTS - 1
            ):
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def open_datacube(path: str | os.PathLike, datapath: str | None = None):
    """A DataCube whose data are read lazily from ``path`` (nothing loaded yet).

    Parameters
    ----------
    path : str or PathLike
        A py4DSTEM/EMD file: the DataCube's data are its h5py Dataset (read
        as indexed) and its calibration is the one stored with it. Any other
        file: :func:`py4DSTEM.import_file` with ``mem="MEMMAP"`` (formats
        that cannot be memory-mapped raise ValueError).
    datapath : str, optional
        EMD files only: as in :func:`read_datacube`.

    Returns
    -------
    py4DSTEM.DataCube
        Keeps the file open while it is referenced.
    """
    import emdfile
    import h5py
    import py4DSTEM

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: {str(path)!r} is not a file")
    if not is_emd_file(path):
        if datapath:
            raise ValueError(
                f"datapath: only for py4DSTEM/EMD files; {str(path)!r} is not one"
            )
        try:
            dc = py4DSTEM.import_file(str(path), mem="MEMMAP")
        except Exception as err:  # py4DSTEM raises bare Exception/AssertionError
            msg = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ValueError(
                f"data: cannot memory-map {str(path)!r}: {msg}; read it with "
                "read_datacube and pass the DataCube"
            ) from err
        if not isinstance(dc, py4DSTEM.DataCube):
            raise ValueError(f"data: {str(path)!r} does not hold a 4D DataCube")
        return dc
    cubes = find_datacubes(path, datapath)
    if len(cubes) != 1:
        what = "no DataCube" if not cubes else f"{len(cubes)} DataCubes"
        hint = "" if not cubes else f"; choose one with datapath ({', '.join(cubes)})"
        raise ValueError(f"data: {str(path)!r} holds {what}{hint}")
    node = cubes[0]
    root = node.split("/")[0]
    f = h5py.File(path, "r")
    dataset = f[node]["data"]
    meta = read_emd(emdfile.read, str(path), emdpath=root, tree=False).metadata
    cal = meta["calibration"] if "calibration" in meta else None
    return py4DSTEM.DataCube(data=dataset, calibration=cal)


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
        dc = read_emd(py4DSTEM.read, str(path), datapath=cubes[0], tree=False)
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
