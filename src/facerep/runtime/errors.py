"""facerep's own error type and the one-line message helper.

Every error a user can cause (a bad config value, a missing file, an unreadable checkpoint, a data set
in the wrong layout) is a :class:`FacerepError` whose message is one line naming what is wrong; the
command line prints exactly that line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FacerepError(ValueError):
    """A problem with the user's input, told in one line (subclasses name the area: config, data, ...)."""


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first non-empty line of ``error``'s message (its type name if it has none), cut to ``limit``."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    return line
