"""facerep.data.video: frame sampling, PyAV frame reading, the on-disk frame cache."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from facerep.data.sources import DataError
from facerep.data.video import FrameCache, VideoError, frame_count, read_frames, sample_indices

W, H, N = 64, 48, 12


def colour(i: int) -> np.ndarray:
    """The solid colour of frame ``i`` of the test video."""
    return np.array([20 * i, 240 - 20 * i, 128], np.uint8)


def write_video(path: Path, n: int = N) -> Path:
    """An mpeg4 video of ``n`` frames, ``W x H``, frame ``i`` filled with :func:`colour`."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            img = np.broadcast_to(colour(i), (H, W, 3)).copy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize(
    ("n", "kwargs", "expected"),
    [
        (10, {"count": 4}, [1, 3, 6, 8]),
        (3, {"count": 8}, [0, 1, 2]),
        (10, {"step": 4}, [0, 4, 8]),
        (10, {"count": 1}, [5]),
        (0, {"count": 3}, []),
    ],
)
def test_sample_indices(n: int, kwargs: dict, expected: list[int]) -> None:
    assert sample_indices(n, **kwargs) == expected


def test_sample_indices_needs_exactly_one_rule() -> None:
    for kwargs in ({}, {"step": 2, "count": 2}, {"count": 0}, {"step": 0}):
        with pytest.raises(DataError):
            sample_indices(10, **kwargs)


def test_read_frames_gives_the_requested_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4")
    assert frame_count(path) == N
    frames = read_frames(path, [7, 0, 11, 7])
    assert sorted(frames) == [0, 7, 11]
    for i, img in frames.items():
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert np.abs(img.reshape(-1, 3).mean(0) - colour(i)).max() < 8, i
    with pytest.raises(VideoError, match="ends after 12 frames"):
        read_frames(path, [12])


def test_corrupt_and_truncated_videos_are_one_line_errors(tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.avi").write_bytes(b"not a video at all" * 50)
    for name in ("cut.mp4", "junk.avi", "missing.mp4"):
        for call in (lambda p: frame_count(p), lambda p: read_frames(p, [0, 5])):
            with pytest.raises(VideoError) as err:
                call(tmp_path / name)
            assert "\n" not in str(err.value) and name in str(err.value)


def test_frame_cache_hits_skip_the_work_and_are_keyed_by_sampling(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    calls = []

    def make() -> dict[int, np.ndarray]:
        calls.append(1)
        return {3: np.full((4, 4, 3), 3, np.uint8), 9: np.full((4, 4, 3), 9, np.uint8)}

    key = {"path": "/x/v.mp4", "size": 10, "mtime": 1, "indices": [3, 9], "crop_size": 4}
    first = cache.get(key, make)
    second = FrameCache(tmp_path / "cache").get(dict(reversed(key.items())), make)  # key order is irrelevant
    assert len(calls) == 1 and sorted(second) == [3, 9]
    assert all(np.array_equal(first[k], second[k]) for k in first)
    cache.get({**key, "indices": [3, 8]}, make)
    assert len(calls) == 2 and cache.misses == 2
    cache.path(key).write_bytes(b"damaged")  # a damaged entry is made again, not an error
    cache.get(key, make)
    assert len(calls) == 3
    assert not list((tmp_path / "cache").glob(".*tmp"))


def test_frame_cache_folder_must_be_writable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not writable.*cache=DIR"):
        FrameCache(tmp_path / "file" / "sub", hint="; set cache=DIR")


def _corrupt_packet(path: Path, index: int) -> Path:
    """``path`` with the payload of video packet ``index`` overwritten (the container stays readable)."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = packets[index].pos, packets[index].size
    data[pos + 2 : pos + size] = bytes((37 * k) & 0xFF for k in range(size - 2))
    bad = path.with_name(f"bad_{path.name}")
    bad.write_bytes(bytes(data))
    return bad


def test_a_bad_packet_costs_its_frame_not_the_video(tmp_path: Path) -> None:
    """Before: one undecodable packet made the whole video a VideoError."""
    bad = _corrupt_packet(write_video(tmp_path / "v.mp4"), 6)
    assert frame_count(bad) == N
    frames = read_frames(bad, range(N))
    assert sorted(frames) == list(range(N)) and frames.bad_packets == 1 and frames.stood_in == [6]
    for i, img in frames.items():
        source = 5 if i == 6 else i  # the lost frame: the one before it stands in
        assert np.abs(img.reshape(-1, 3).mean(0) - colour(source)).max() < 8, i
    late = read_frames(bad, [8, 11])  # past the damage: indices keep their frames
    assert late.stood_in == [] and np.abs(late[11].reshape(-1, 3).mean(0) - colour(11)).max() < 8
    first = read_frames(_corrupt_packet(tmp_path / "v.mp4", 0), [0, 2])  # nothing before: the next one
    assert first.stood_in == [0] and np.abs(first[0].reshape(-1, 3).mean(0) - colour(1)).max() < 8
    with pytest.raises(VideoError, match="ends after 12 frames"):
        read_frames(bad, [12])


def test_a_damaged_cache_side_file_reads_as_empty(tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    (tmp_path / "cache" / "frame_counts.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    assert cache.load_json("frame_counts.json") == {}
