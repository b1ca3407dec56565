"""Atomic file writes: readers see either the old file or the complete new one, never a partial write.

Every helper writes to a hidden temporary file in the destination's own directory (so the final
``os.replace`` is a same-filesystem rename, which POSIX and Windows make atomic), flushes it to disk,
renames it over the destination and, on POSIX, syncs the directory so the rename itself survives a
crash. If writing fails the temporary file is removed and the destination is left untouched.

Use :func:`atomic_save` with any writer that takes a path, e.g.
``atomic_save(lambda p: torch.save(state, p), "ckpt/last.pt")``, or the shortcuts
:func:`atomic_write_bytes` / :func:`atomic_torch_save`.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a directory on POSIX) to stable storage; best effort for directories."""
    if directory and os.name != "posix":
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def atomic_save(writer: Callable[[Path], None], path: str | Path, *, fsync: bool = True) -> Path:
    """Atomically create or replace ``path`` with whatever ``writer(tmp_path)`` writes.

    Args:
        writer: called once with a temporary path in the same directory; it must create that file.
        path: the destination; its parent directories are created if missing.
        fsync: flush the data and the directory entry to disk (disable only for throwaway files).
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        writer(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_save: the writer did not create {tmp}")
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_path(dest.parent, directory=True)
    return dest


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_save(lambda tmp: tmp.write_bytes(data), path, fsync=fsync)


def atomic_write_json(path: str | Path, obj: Any, *, fsync: bool = True) -> Path:
    """Atomically write ``obj`` as indented JSON (results and summaries people read)."""
    return atomic_write_bytes(path, json.dumps(obj, indent=2).encode(), fsync=fsync)


def atomic_torch_save(obj: Any, path: str | Path, *, fsync: bool = True) -> Path:
    """Atomically ``torch.save(obj, path)``."""
    return atomic_save(lambda tmp: torch.save(obj, tmp), path, fsync=fsync)
