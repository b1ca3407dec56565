"""Atomic file writes: readers see either the old file or the complete new one, never a partial write.

Every helper writes to a hidden temporary file in the destination's own directory (so the final
``os.replace`` is a same-filesystem rename, which POSIX and Windows make atomic), flushes it to disk,
renames it over the destination and, on POSIX, syncs the directory so the rename itself survives a
crash. If writing fails the temporary file is removed and the destination is left untouched.

Use :func:`atomic_save` with any writer that takes a path, e.g.
``atomic_save(lambda p: torch.save(state, p), "ckpt/last.pt")``, or the shortcuts
:func:`atomic_write_bytes` / :func:`atomic_torch_save`.

A process killed mid-write leaves its temporary ``.{name}.{pid}.{8 hex}.tmp`` behind (possibly gigabytes
for a checkpoint); :func:`remove_stale_temporaries` deletes those of a directory whose writer is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# the temporary atomic_save writes beside its destination: .{name}.{pid}.{uuid4 hex[:8]}.tmp
TEMPORARY_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


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
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # see TEMPORARY_RE
    try:
        writer(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_save: the writer did not create {tmp}")
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, dest)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename in (None, str(tmp), tmp):
            # a full disk or a read-only folder: name the file the user asked for, not the hidden temporary
            raise OSError(err.errno, err.strerror or str(err), str(dest)) from err
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


class _WholeWrites:
    """A binary file whose ``write`` writes every byte or raises the system's error.

    torch.save takes a short write (a file-size limit, a disk filling up) for a broken stream and raises
    ``RuntimeError("... unexpected pos ...")``; retrying the rest surfaces the real ``OSError`` (ENOSPC,
    EFBIG) instead, which :func:`atomic_save` reports with the destination's name."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.error: OSError | None = None  # the first failed write (torch's cleanup then raises its own)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += self._file.write(view[done:])
        except OSError as err:
            self.error = self.error or err
            raise
        return done

    def flush(self) -> None:
        self._file.flush()


def atomic_torch_save(obj: Any, path: str | Path, *, fsync: bool = True) -> Path:
    """Atomically ``torch.save(obj, path)``; a failed write raises the system's OSError naming ``path``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb", buffering=0) as file:
            sink = _WholeWrites(file)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None

    return atomic_save(write, path, fsync=fsync)


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (assumed so where POSIX signals cannot tell)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate it on Windows
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (a pid beyond the system's range)
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the :func:`atomic_save` temporaries in ``directory`` (not below it) left by writers that died.

    A temporary is stale when its writer pid no longer runs here, or is this process's own pid (then a
    crashed earlier process had it: call this before this process starts writing into ``directory``).
    Another live process's temporary (a write in progress) is kept. Returns the paths removed.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMPORARY_RE.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not _pid_alive(pid):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
