"""Reading sampled frames of videos (PyAV) and caching what is made of them, for video-level datasets.

``sample_indices`` picks which frames of a video a dataset uses (every ``step``-th, or ``count`` evenly
spaced); ``read_frames`` decodes the video once, front to back, and keeps only those frames
(``[H, W, 3] uint8`` RGB); ``FrameCache`` stores what a dataset derives from them (face crops) as one
``.npz`` per key, written atomically, so later epochs neither decode nor detect again. A video that cannot
be opened, or of which no frame decodes, is a one-line :class:`VideoError` naming the file.

Damage inside a stream costs only what it hits: a packet that does not decode loses its frame (one frame
slot, so later frames keep their indices) and decoding goes on with the next packet; a requested frame that
was lost gets the nearest decoded frame before it (after it, at the start) in its place. The result
(:class:`Frames`) says how many packets were bad and which requested frames were stood in for. A container
that cannot be read on (demuxing fails) ends the video there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np

from facerep.data.sources import DataError
from facerep.runtime.atomic import atomic_save
from facerep.runtime.errors import one_line
from facerep.runtime.untrusted import read_json

__all__ = ["FrameCache", "Frames", "VideoError", "frame_count", "read_frames", "sample_indices"]

# what PyAV and FFmpeg raise on a missing, truncated or corrupt file
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, IndexError)


class VideoError(DataError):
    """A video that cannot be opened or decoded (one line naming the file)."""


def _fail(path: str | Path, err: BaseException | str) -> VideoError:
    reason = getattr(err, "strerror", None) or one_line(err, 160)  # FFmpeg's text without errno and path
    return VideoError(f"cannot decode video {path}: {reason}")


class _Stream:
    """The frames of ``path``'s first video stream in order, one packet at a time (see the module docstring):
    iterating yields a ``VideoFrame``, or ``None`` for the frame of a packet that did not decode."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.bad_packets = 0
        self.ended = ""  # why demuxing stopped early, if it did

    def frames(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame | None]:
        if not container.streams.video:
            raise _fail(self.path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except _DECODE_ERRORS as err:  # the container is damaged: nothing after this can be read
                self.ended = f" (the container is damaged there: {one_line(err, 80)})"
                return
            try:
                decoded = packet.decode()
            except _DECODE_ERRORS:
                self.bad_packets += 1
                yield None
                continue
            yield from decoded


def frame_count(path: str | Path) -> int:
    """Frames in the first video stream of ``path``: the container's count, else a full decode (frames of
    packets that do not decode count too)."""
    reader = _Stream(path)
    try:
        with av.open(str(path)) as container:
            if container.streams.video and container.streams.video[0].frames > 0:
                return int(container.streams.video[0].frames)
            return sum(1 for _ in reader.frames(container))
    except VideoError:
        raise
    except _DECODE_ERRORS as err:
        raise _fail(path, err) from err


def sample_indices(num_frames: int, *, step: int | None = None, count: int | None = None) -> list[int]:
    """Sorted, distinct frame indices in ``[0, num_frames)``.

    ``step``: frames ``0, step, 2 step, ...``; ``count``: the centres of ``count`` equal segments (fewer
    when the video has fewer frames than ``count``). Exactly one of the two is given.
    """
    if (step is None) == (count is None):
        raise DataError(f"sample_indices: give exactly one of step and count, got step={step}, count={count}")
    if num_frames < 0:
        raise DataError(f"sample_indices: num_frames must be >= 0, got {num_frames}")
    if step is not None:
        if int(step) < 1:
            raise DataError(f"frame_step must be >= 1, got {step}")
        return list(range(0, int(num_frames), int(step)))
    assert count is not None
    if int(count) < 1:
        raise DataError(f"frames must be >= 1, got {count}")
    n, c = int(num_frames), int(count)
    return sorted({min(n - 1, int((k + 0.5) * n / c)) for k in range(c)}) if n else []


class Frames(dict[int, np.ndarray]):
    """:func:`read_frames`' result, ``{index: [H, W, 3] uint8 RGB}``, and what damage cost on the way:
    ``bad_packets`` (packets that did not decode, up to the last requested frame) and ``stood_in`` (the
    requested frames that were lost, each replaced by the nearest decoded frame before it, else after it)."""

    def __init__(self) -> None:
        super().__init__()
        self.bad_packets = 0
        self.stood_in: list[int] = []


def read_frames(path: str | Path, indices: Sequence[int]) -> Frames:
    """Frames ``indices`` of ``path`` as ``{index: [H, W, 3] uint8 RGB}``, decoded once in order.

    Decoding stops after the last requested frame. A lost frame is replaced (see the module docstring). A
    file that cannot be opened, that ends before a requested frame, or of which no frame up to the last
    requested one decodes, is a :class:`VideoError`.
    """
    wanted = sorted({int(i) for i in indices})
    out = Frames()
    if not wanted:
        return out
    if wanted[0] < 0:
        raise _fail(path, f"negative frame index {wanted[0]}")
    reader = _Stream(path)
    todo = set(wanted)
    waiting: list[int] = []  # requested frames lost before any frame decoded: the next decoded one stands in
    previous: av.VideoFrame | None = None
    slots = 0
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(reader.frames(container)):
                slots = i + 1
                if frame is not None:
                    previous = frame
                    if waiting:
                        out.update(dict.fromkeys(waiting, frame.to_ndarray(format="rgb24")))
                        waiting = []
                if i in todo:
                    todo.discard(i)
                    if frame is None:
                        out.stood_in.append(i)
                    if previous is None:
                        waiting.append(i)
                    else:
                        out[i] = previous.to_ndarray(format="rgb24")
                if not todo and not waiting:
                    break
    except VideoError:
        raise
    except _DECODE_ERRORS as err:
        raise _fail(path, err) from err
    out.bad_packets = reader.bad_packets
    if todo:
        raise _fail(path, f"it ends after {slots} frames{reader.ended}, frame {min(todo)} was asked for")
    if waiting:
        raise _fail(path, f"none of its {slots} frames decodes ({reader.bad_packets} bad packets)")
    return out


class FrameCache:
    """``{frame index: array}`` results stored as ``<folder>/<sha1 of the key>.npz`` (atomic writes).

    The key is any JSON-able dict (for a video: its path, size, mtime, the sampled indices and the crop
    settings), so changing the sampling or the file makes a new entry. ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, folder: str | Path, hint: str = "") -> None:
        self.folder = Path(folder)
        self.hits = self.misses = 0
        probe = self.folder / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise DataError(
                f"frame cache folder {self.folder} is not writable ({one_line(err, 100)}){hint}"
            ) from err

    def path(self, key_parts: dict[str, Any]) -> Path:
        """The ``.npz`` file of ``key_parts``."""
        text = json.dumps(key_parts, sort_keys=True, default=str)
        return self.folder / f"{hashlib.sha1(text.encode()).hexdigest()}.npz"

    def get(
        self, key_parts: dict[str, Any], make: Callable[[], dict[int, np.ndarray]]
    ) -> dict[int, np.ndarray]:
        """The stored result for ``key_parts``, else ``make()`` (then stored); a damaged entry is remade."""
        path = self.path(key_parts)
        if path.is_file():
            try:
                with np.load(path) as data:
                    result = {int(k[1:]): data[k] for k in data.files}
                self.hits += 1
                return result
            except (OSError, ValueError, KeyError, EOFError):
                pass  # a damaged entry (e.g. a disk filled up): make it again
        self.misses += 1
        result = make()
        arrays = {f"f{int(k)}": np.ascontiguousarray(v) for k, v in result.items()}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        with contextlib.suppress(OSError):  # caching is an optimisation: a full disk must not stop training
            atomic_save(write, path, fsync=False)
        return result

    def load_json(self, name: str) -> dict[str, Any]:
        """A small JSON side file of the cache (e.g. frame counts); ``{}`` if missing or unreadable."""
        try:
            data = read_json(self.folder / name, DataError)
        except DataError:
            return {}
        return data if isinstance(data, dict) else {}

    def save_json(self, name: str, data: dict[str, Any]) -> None:
        """Write a JSON side file atomically (best effort)."""
        text = json.dumps(data, sort_keys=True)
        with contextlib.suppress(OSError):
            atomic_save(lambda tmp: tmp.write_text(text), self.folder / name, fsync=False)
