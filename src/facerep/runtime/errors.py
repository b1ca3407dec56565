"""facerep's own error type and the one-line message helpers.

Every error a user can cause (a bad config value, a missing file, an unreadable checkpoint, a data set
in the wrong layout) is a :class:`FacerepError` whose message is one line naming what is wrong; the
command line prints exactly that line. The system refusing an operation (a full disk, a read-only or
missing folder, a file where a folder should be) is an :class:`OSError`, told as one line by
:func:`os_error_line`; :func:`write_failure_line` does the same for libraries that wrap a failed write in
their own error type. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class FacerepError(ValueError):
    """A problem with the user's input, told in one line (subclasses name the area: config, data, ...)."""


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first non-empty line of ``error``'s message (its type name if it has none), cut to ``limit``."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


def os_error_line(error: OSError) -> str:
    """``<path>[ -> <path2>]: <what went wrong>`` (the paths the error names, its ``strerror``); a file
    where a folder was to be made (``output_dir=<a file>``) says it is not a folder."""
    name = error.filename
    if isinstance(name, str | os.PathLike) and error.errno in (errno.EEXIST, errno.ENOTDIR):
        # output_dir=<a file>: name the file that stands where a folder should be (the path, or the ancestor
        # below which a folder could not be made, e.g. <a file>/teacher_mae)
        file = next((p for p in (Path(name), *Path(name).parents) if p.is_file()), None)
        if file is not None:
            return f"{file}: File exists and is not a folder"
    what = error.strerror or one_line(error)
    paths = " -> ".join(str(p) for p in (name, error.filename2) if p is not None)
    return f"{paths}: {what}" if paths else what


# What libraries raise instead of an OSError when a write fails (a full disk, a read-only or missing folder):
# torch.save to a path (PyTorchStreamWriter, its zip writer's position check, the file open) and
# safetensors' save_file. Reading errors (PytorchStreamReader, ...) are not matched.
_WRITE_FAILURES = re.compile(
    r"PytorchStreamWriter failed|unexpected pos \d+ vs \d+|open file failed with strerror|"
    r"Parent directory .+ does not exist|Error while serializing: I/O error"
)
_ENFORCE = re.compile(r"^\[enforce fail at [^\]]*\][\s.]*")  # c10's source location prefix


def write_failure_line(error: BaseException) -> str | None:
    """``cannot write a file (...): <the library's reason>`` where ``error`` is a library's wrapped write
    failure (see ``_WRITE_FAILURES``; it names no path), else None (a bug, which keeps its traceback)."""
    line = one_line(error)
    if isinstance(error, OSError) or not _WRITE_FAILURES.search(line):
        return None
    return f"cannot write a file (a full disk? a read-only folder?): {_ENFORCE.sub('', line)}"
