"""Reading input that anyone may have written: files, JSON and integer ids that cannot hang or crash a reader.

Web-scraped data (img2dataset metadata, stats side files beside the shards, a folder of downloads) can hold
anything, and Python's readers fail on some of it with errors that are no one line naming the input:
``json.loads`` raises ``RecursionError`` on ``[`` nested 200,000 deep and ``ValueError`` on a 5,000-digit
number, ``int(1e999)`` raises ``OverflowError``; opening a named pipe blocks until something writes to it
and reading ``/dev/zero`` never ends. These helpers turn all of that into one-line errors of the caller's
:class:`~facerep.runtime.errors.FacerepError` subclass (``error=``), naming the input and what was expected.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from facerep.runtime.errors import FacerepError, one_line

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# metadata, stats and annotation files are a few levels deep; Python's own parser fails near 1,000 levels
MAX_JSON_DEPTH = 100
_STRINGS = re.compile(rb'"(?:[^"\\]+|\\.)*"', re.S)  # JSON strings (their brackets are text)
_BRACKETS = re.compile(rb"[\[\]{}]")
_DECIMAL = re.compile(r"[+-]?[0-9]{1,19}")  # an int64 has at most 19 digits: longer strings are not converted
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(FacerepError):
    """A path that resolves to something other than a regular file (a pipe, a device, a socket, a folder)."""


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: str | os.PathLike) -> bytes:
    """The bytes of ``path`` if it is a regular file after following symlinks; :class:`NotRegularFile`
    otherwise, without opening it (opening a pipe blocks, a device may act on being opened).

    The file is opened non-blocking and checked again on the open descriptor, so a path swapped for a pipe
    between the two checks cannot block either. ``OSError`` (missing, unreadable) propagates.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"{path}: {_kind(mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=True) as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path}: {_kind(mode)}, not a regular file")
        return f.read()


def json_depth(data: bytes | str) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``data`` (brackets inside strings do not
    count), found without parsing it: a scan of the brackets, no recursion."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_json(
    data: bytes | str, where: str, error: type[FacerepError] = FacerepError, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """``json.loads(data)``; undecodable text, bad syntax, nesting deeper than ``max_depth`` (0: Python's
    recursion limit only) and numbers Python refuses are ``error`` naming ``where``."""
    if max_depth and (depth := json_depth(data)) > max_depth:
        raise error(f"{where}: JSON nested {depth} deep, more than max_json_depth={max_depth}")
    try:
        return json.loads(data)
    except RecursionError as err:
        raise error(f"{where}: JSON nested too deep to read (expected a flat JSON document)") from err
    except (ValueError, OverflowError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise error(f"{where}: not valid JSON ({one_line(err, 120)})") from err


def read_json(path: str | os.PathLike, error: type[FacerepError] = FacerepError) -> Any:
    """The JSON document in the regular file ``path``; anything unreadable is ``error`` naming the file."""
    try:
        data = read_regular(path)
    except OSError as err:
        raise error(f"{path}: cannot read it ({one_line(err, 120)})") from err
    except NotRegularFile as err:
        raise error(str(err)) from err
    return loads_json(data, str(Path(path)), error)


def _brief(value: Any) -> str:
    """``repr(value)`` kept short (and never converting a huge int to decimal, which Python refuses)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:40]) + "..."
    return one_line(repr(value), 60)


def as_int(
    value: Any,
    where: str,
    error: type[FacerepError] = FacerepError,
    low: int = INT64_MIN,
    high: int = INT64_MAX,
) -> int:
    """``value`` (from JSON) as an int in ``[low, high]`` (int64 by default): an int, a float with an integer
    value or a decimal string; ``error`` naming ``where`` for anything else (bools, ``1e999``, ``3.5``,
    ``"12abc"``, out of range)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():  # False for inf and nan
        number = int(value)
    elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None or not low <= number <= high:
        raise error(f"{where}: {_brief(value)} is not an integer in [{low}, {high}]")
    return number
