"""Reading patterns from a DataCube's data: numpy arrays, memmaps, h5py datasets.

The first stage of the chain: every read of measured patterns goes through
:func:`read_patterns`, which reads whole runs of a scan row at a time (one
contiguous slice per row touched, sorted as h5py needs) and, for a shared
``numpy.memmap``, releases the pages it read from the process's resident set
(:func:`release_pages`): pages of a memmap that have been read stay mapped
into the process and count in its resident set (RSS) until the kernel
reclaims them, so after every read from a shared (``'r'``, ``'r+'``, ``'w+'``)
memmap they are released with ``madvise(MADV_DONTNEED)`` (they stay in the
OS page cache; nothing is discarded). A ``'c'`` (copy-on-write) memmap is
left alone. Flat scan indices are row-major over ``[Rx, Ry]``:
``rx * Ry + ry``.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

__all__ = ["check_block", "iter_flat", "read_patterns", "release_pages", "shared_mapping"]


def check_block(block: np.ndarray, name: str = "datacube") -> None:
    """Raise if a block of patterns holds NaN/Inf or negative values.

    Unsigned integers (detector counts) pass without a look at the values.
    """
    if np.issubdtype(block.dtype, np.unsignedinteger) or block.dtype == bool:
        return
    if np.issubdtype(block.dtype, np.floating) and not np.all(np.isfinite(block)):
        raise ValueError(f"{name} data must be finite, found NaN or Inf")
    if block.size and block.min() < 0:
        raise ValueError(f"{name} data must be non-negative, found min {block.min():.4g}")


def shared_mapping(data) -> mmap.mmap | None:
    """The shared ``mmap.mmap`` behind a numpy memmap (or a view of one), else None.

    Follows ``.base`` to the mapping; None unless a ``numpy.memmap`` on the way
    has a shared mode (``'r'``, ``'r+'`` or ``'w+'``; ``'c'`` is private).
    """
    mode = None
    obj = data
    while isinstance(obj, np.ndarray):
        if isinstance(obj, np.memmap) and mode is None:
            mode = obj.mode
        obj = obj.base
    if isinstance(obj, mmap.mmap) and mode in ("r", "r+", "w+"):
        return obj
    return None


def release_pages(data) -> None:
    """Drop the read pages of a shared numpy memmap from this process's RSS.

    ``madvise(MADV_DONTNEED)`` on a shared file mapping unmaps its pages from
    the process only: they stay in the page cache (and are written back if
    dirty) and are mapped again on the next access. No-op for anything else.
    """
    mapping = shared_mapping(data)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None or mapping.closed:
        return
    try:
        mapping.madvise(advice)
    except (OSError, ValueError):  # pragma: no cover - platform dependent
        pass


def read_patterns(data, indices: np.ndarray, Ry: int) -> np.ndarray:
    """Patterns at flat scan ``indices`` (row-major over [Rx, Ry]), shape (n, Qx, Qy).

    Reads one contiguous slice ``data[rx, ry0:ry1]`` per scan row touched (sorted,
    as h5py needs), so only the requested patterns' rows are read.
    """
    uniq, inverse = np.unique(indices, return_inverse=True)
    rx_all, ry_all = np.divmod(uniq, Ry)
    chunks = []
    for rx in np.unique(rx_all):
        ry = ry_all[rx_all == rx]
        lo, hi = int(ry.min()), int(ry.max())
        block = np.asarray(data[int(rx), lo : hi + 1])
        chunks.append(block[ry - lo])
    out = np.concatenate(chunks, axis=0)
    release_pages(data)
    return out[inverse]


def iter_flat(n: int, batch_size: int) -> Iterator[np.ndarray]:
    """Flat indices ``0 .. n - 1`` in arrays of ``batch_size`` (the last may be shorter)."""
    for start in range(0, n, batch_size):
        yield np.arange(start, min(start + batch_size, n))
