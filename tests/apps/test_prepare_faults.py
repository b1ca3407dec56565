"""``facerep prepare`` on hostile input and hostile conditions: JSON nested 200,000 deep and ids of ``1e999``,
decompression-bomb PNGs, named pipes and links to ``/dev/zero`` in an input folder, tar keys with ``../``,
two runs into one output folder, and a parent killed with ``-9`` under its pool workers. Each ends in one line
naming the input (exit code 2) or in the input being skipped and counted, with every finished output kept."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
import torch
from PIL import Image

from facerep.apps.prepare import LOCK_NAME, output_lock
from facerep.commands.cli import main
from facerep.commands.prepare import PrepareConfig, run_prepare
from facerep.config import load_config
from facerep.data.crop import ImageTooLarge, decode_bgr
from facerep.data.sources import DataError
from facerep.data.synthetic import render_face
from facerep.data.transforms import BadImage
from facerep.runtime.untrusted import NotRegularFile, as_int, json_depth, loads_json, read_json, read_regular

DEEP = b"[" * 200_000 + b"]" * 200_000
CODE = "import sys; from facerep.commands.cli import main; sys.exit(main(sys.argv[1:]))"
FOLDER_ARGS = ("detector=haar", "crop.min_face=24", "crop.size=32", "shard_size=60")
FOLDER_IMAGES = 720  # twelve units: the run takes seconds
POLL_S = 0.02


def _prepare(out: Path, *overrides: str) -> dict:
    args = [f"output_dir={out}", "progress=false", "workers=1", *overrides]
    return run_prepare(load_config(PrepareConfig, None, args))


def _cli(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", CODE, "prepare", f"output_dir={out}", "progress=false", *args]


def _jpeg(size: int = 96) -> bytes:
    """A synthetic face in which the Haar detector finds one face."""
    buf = io.BytesIO()
    Image.fromarray(render_face(0, 2, size).image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width x height`` (RGB) and whose data holds four rows: a few hundred bytes
    standing for a picture of ``3 * width * height`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes((1 + 3 * width) * 4), 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _one_face_detections(path: Path, ids: list[int]) -> Path:
    face = (np.array([8, 8, 88, 88], np.float32), None, np.float32(0.99))
    torch.save({i: [face] for i in ids}, path)
    return path


def _members(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


# -------------------------------------------------------------------- 1. JSON and ids from the web


def test_untrusted_json_and_ids_are_one_line_errors_naming_the_input(tmp_path) -> None:
    for data, expected in [
        (DEEP, "x.json: JSON nested 200000 deep, more than max_json_depth=100"),
        (b'{"a": 1', "x.json: not valid JSON"),
        (b"\xff\xfe\x00", "x.json: not valid JSON"),
        (b"1" * 5000, "x.json: not valid JSON"),  # Python refuses to convert > 4300 digits
    ]:
        with pytest.raises(DataError, match=expected) as err:
            loads_json(data, "x.json", DataError)
        assert "\n" not in str(err.value)
    assert loads_json(b'{"SAMPLE_ID": 1e999}', "x")["SAMPLE_ID"] == float("inf")  # JSON allows it ...
    for bad in (float("inf"), float("nan"), 1e999, 3.5, 10**30, True, None, "12abc", "9" * 20, [1]):
        with pytest.raises(DataError, match=r"SAMPLE_ID: .* is not an integer in \[") as err:
            as_int(bad, "s.json: SAMPLE_ID", DataError)  # ... an id does not
        assert len(str(err.value)) < 200
    assert [as_int(v, "x") for v in (7, 7.0, " 7 ", "-7", 2**63 - 1)] == [7, 7, 7, -7, 2**63 - 1]
    with pytest.raises(DataError, match=r"successes: -1 is not an integer in \[0, "):
        as_int(-1, "successes", DataError, 0)
    with pytest.raises(DataError, match="x.json: JSON nested too deep to read"):
        loads_json(DEEP, "x.json", DataError, max_depth=0)  # no limit of ours: Python's recursion limit
    assert json_depth(b'[{"a": "[[{", "b": [1, "\\"]"]}]') == 3  # brackets in strings are text
    assert loads_json(b"[[[1]]]", "x", max_depth=3) == [[[1]]]
    with pytest.raises(DataError, match=r"x: JSON nested 3 deep, more than max_json_depth=2"):
        loads_json(b"[[[1]]]", "x", DataError, max_depth=2)
    (tmp_path / "deep.json").write_bytes(DEEP)
    with pytest.raises(DataError, match="deep.json: JSON nested 200000 deep"):
        read_json(tmp_path / "deep.json", DataError)


def test_deep_json_and_overflowing_ids_in_a_shard_are_counted_and_named(tmp_path) -> None:
    """Before: the nested member was a RecursionError, ``1e999`` an OverflowError; either killed the job."""
    image = _jpeg()
    samples = {
        "ok": b'{"SAMPLE_ID": 1}',
        "deep": DEEP,
        "inf": b'{"SAMPLE_ID": 1e999}',
        "huge": b'{"SAMPLE_ID": 1000000000000000000000000000000}',
        "float": b'{"SAMPLE_ID": 2.5}',
        "list": b"[1, 2]",
        "text": b'{"SAMPLE_ID": " 3 "}',  # a decimal string is an id
        "nested": b'{"SAMPLE_ID": 4, "x": [[1]]}',  # 3 deep: more than max_json_depth=2 below
    }
    members = [m for key, meta in samples.items() for m in ((f"{key}.jpg", image), (f"{key}.json", meta))]
    _write_tar(tmp_path / "00000.tar", members)
    dets = _one_face_detections(tmp_path / "sample2detect.pth", [1, 3])
    summary = _prepare(tmp_path / "out", f"input={tmp_path / '00000.tar'}", f"detections={dets}",
                       "crop.min_face=0", "crop.size=32", "max_json_depth=2")  # fmt: skip
    assert summary["crops"] == 2 and summary["rejected"] == {"no_sample_id": 6}
    examples = "\n".join(summary["corrupt_examples"])
    for expected in ("deep.json: JSON nested 200000 deep, more than max_json_depth=2",
                     "nested.json: JSON nested 3 deep, more than max_json_depth=2",
                     "inf.json: SAMPLE_ID: inf is not an integer",
                     "huge.json: SAMPLE_ID: an integer of 100 bits", "float.json: SAMPLE_ID: 2.5",
                     "list.json: a JSON list, expected an object"):  # fmt: skip
        assert expected in examples


def test_a_damaged_stats_file_reruns_its_unit(tmp_path) -> None:
    _write_tar(tmp_path / "00000.tar", [("a.jpg", _jpeg()), ("a.json", b'{"SAMPLE_ID": 1}')])
    args = (f"input={tmp_path / '00000.tar'}", f"detections={_one_face_detections(tmp_path / 'd.pth', [1])}",
            "crop.min_face=0", "crop.size=32")  # fmt: skip
    _prepare(tmp_path / "out", *args)
    (tmp_path / "out" / "crops-00000_stats.json").write_bytes(DEEP)  # e.g. a disk that filled up
    (tmp_path / "out" / "detections" / "source.json").write_bytes(DEEP)
    again = _prepare(tmp_path / "out", *args)
    assert again["units_run"] == 1 and again["crops"] == 1


# ---------------------------------------------------------------------------- 2. decompression bombs


def test_the_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    """Before: the 40,000 x 40,000 PNG (545 bytes) was a cv2.error (over OpenCV's own limit) that killed
    the job, a 20,000 x 20,000 one was decoded (1.2 GB and more)."""
    bomb = _png_header_only(40_000, 40_000)
    assert len(bomb) < 1000
    with pytest.raises(ImageTooLarge, match=r"b.png: more than \d+ pixels \(max_pixels=100000000\)"):
        decode_bgr(bomb, "b.png")
    with pytest.raises(
        ImageTooLarge, match="12000 x 9000 = 108000000 pixels, more than max_pixels=100000000"
    ):
        decode_bgr(_png_header_only(12_000, 9_000), "c.png")
    with pytest.raises(ImageTooLarge, match="more than max_pixels=5000"):
        decode_bgr(_jpeg(96), "small.jpg", max_pixels=5000)
    assert decode_bgr(_jpeg(96), "small.jpg", max_pixels=96 * 96)[0].shape == (96, 96, 3)
    with pytest.raises(BadImage) as err:  # no limit of ours: OpenCV's and PIL's refuse it, one line
        decode_bgr(bomb, "b.png", max_pixels=0)
    assert not isinstance(err.value, ImageTooLarge) and "\n" not in str(err.value)


def test_images_over_max_pixels_are_skipped_and_counted(tmp_path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg(96))
    (root / "b.png").write_bytes(_png_header_only(40_000, 40_000))
    (root / "c.png").write_bytes(_png_header_only(20_000, 20_000))
    (root / "d.jpg").write_bytes(_jpeg(96))
    summary = _prepare(tmp_path / "out", f"input={root}", *FOLDER_ARGS)
    assert summary["images"] == 4 and summary["corrupt"] == 0
    assert summary["rejected"]["too_large"] == 2 and summary["images_with_crops"] == 2
    assert sum("b.png: more than" in e or "c.png: more than" in e for e in summary["corrupt_examples"]) == 2
    small = _prepare(tmp_path / "out_small", f"input={root}", *FOLDER_ARGS, "max_pixels=9000")
    assert small["rejected"]["too_large"] == 4


# ------------------------------------------------------------------- 3. pipes and devices in a folder


def test_pipes_and_device_links_are_never_opened() -> None:
    with pytest.raises(NotRegularFile, match="/dev/zero: a character device, not a regular file"):
        read_regular("/dev/zero")


def test_a_named_pipe_and_a_link_to_dev_zero_are_skipped_with_a_reason(tmp_path) -> None:
    """Before: the pipe hung the run forever, the link ended in MemoryError. The run is a subprocess with a
    time and an address-space limit, so a regression fails instead of hanging or eating the machine."""
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg(96))
    os.mkfifo(root / "b.jpg")
    os.mkfifo(root / "a.txt")  # a's caption: a pipe too
    os.symlink("/dev/zero", root / "c.jpg")
    os.symlink(root / "b.jpg", root / "d.png")  # a link to the pipe

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    run = subprocess.run(_cli(tmp_path / "out", f"input={root}", "workers=1", *FOLDER_ARGS),
                         capture_output=True, text=True, timeout=120, preexec_fn=limit_memory)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"] == 4 and summary["rejected"]["not_a_file"] == 3 and summary["corrupt"] == 0
    examples = "\n".join(summary["corrupt_examples"])
    assert "b.jpg: a named pipe (FIFO), not a regular file" in examples
    assert "c.jpg: a character device, not a regular file" in examples
    assert "d.png: a named pipe (FIFO)" in examples
    assert summary["images_with_crops"] == 1


# ----------------------------------------------------------------------------- 6. names from the input


def test_tar_keys_become_safe_collision_free_output_names(tmp_path) -> None:
    """Before: ``../../evil`` and ``/abs/path`` were copied into the crops' member names."""
    keys = ["../../evil", "/abs/path", "we ird\tkey", "caf\u00e9", "dir/x", "dir%2Fx", "-rf", "k" * 300]
    image = _jpeg()
    members = []
    for i, key in enumerate(keys):
        members += [(f"{key}.jpg", image), (f"{key}.json", json.dumps({"SAMPLE_ID": i}).encode())]
    _write_tar(tmp_path / "00000.tar", members)
    dets = _one_face_detections(tmp_path / "d.pth", list(range(len(keys))))
    summary = _prepare(tmp_path / "out", f"input={tmp_path / '00000.tar'}", f"detections={dets}",
                       "crop.min_face=0", "crop.size=32")  # fmt: skip
    assert summary["crops"] == len(keys)
    shard = tmp_path / "out" / "crops-00000.tar"
    names = _members(shard)
    assert len(set(names)) == len(names) == 2 * len(keys)
    for name in names:
        stem, ext = name.split(".", 1)
        assert ext in ("jpg", "json") and "/" not in name and not name.startswith("-")
        assert set(stem) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_%-~")
        assert len(name) <= 210
    with tarfile.open(shard) as tar:
        tar.extractall(tmp_path / "x", filter="data")  # the strict filter finds nothing to refuse
        records = [json.loads(tar.extractfile(n).read()) for n in names if n.endswith(".json")]
    assert sorted(r["source_key"] for r in records) == sorted(keys)
    for record in records:
        member = record["key"].rsplit("_", 1)[0]
        if "~" not in member:  # the long key is cut and hashed
            assert unquote_to_bytes(member).decode() == record["source_key"]


# ------------------------------------------------------------------------ 4, 5. two runs; kill -9


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """:data:`FOLDER_IMAGES` face photos (copies of 24 rendered ones)."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(24):
        Image.fromarray(render_face(0, i, 96).image).save(root / f"{i:05d}.jpg", quality=90)
    for i in range(24, FOLDER_IMAGES):
        shutil.copyfile(root / f"{i % 24:05d}.jpg", root / f"{i:05d}.jpg")
    return root


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(POLL_S)


def _assert_complete(out: Path, summary: dict) -> None:
    assert summary["units"] == FOLDER_IMAGES // 60 and summary["images"] == FOLDER_IMAGES
    assert summary["units_run"] + summary["units_skipped"] == summary["units"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for stats in out.glob("crops-*_stats.json"):
        crops = json.loads(stats.read_text())["crops"]
        assert len(_members(out / stats.name.replace("_stats.json", ".tar"))) == 2 * crops


def test_the_lock_names_its_holder(tmp_path, capsys) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg(96))
    out = tmp_path / "out"
    with output_lock(out):
        assert f"pid {os.getpid()} on " in (out / LOCK_NAME).read_text()
        assert main(["prepare", f"input={root}", f"output_dir={out}", "progress=false", *FOLDER_ARGS]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            len(err.splitlines()) == 1 and f"is in use by another facerep prepare (pid {os.getpid()}" in err
        )
        assert not (out / "config.yaml").exists()  # nothing written
    assert main(["prepare", f"input={root}", f"output_dir={out}", "progress=false", "workers=1",
                 *FOLDER_ARGS]) == 0  # fmt: skip  # released


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_stops_and_the_first_completes(photos, tmp_path, capsys) -> None:
    """Before: the second run deleted the first's temporary shard and the first died with a traceback."""
    out = tmp_path / "out"
    first = subprocess.Popen(_cli(out, f"input={photos}", "workers=1", *FOLDER_ARGS),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for(lambda: list(out.glob(".crops-*.tmp")), first, "temporary shard")
        code = main(["prepare", f"input={photos}", f"output_dir={out}", "progress=false", *FOLDER_ARGS])
        err = capsys.readouterr().err.strip()
        assert first.poll() is None, "the first run ended too soon for this test"
        assert code == 2 and len(err.splitlines()) == 1
        assert f"in use by another facerep prepare (pid {first.pid} on" in err
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-2000:]
    _assert_complete(out, json.loads((out / "summary.json").read_text()))


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_pool_workers_die_with_a_killed_parent_and_the_rerun_completes(photos, tmp_path) -> None:
    """Before: after ``kill -9`` of the parent its two workers lived on (blocked on the dead pool's queue,
    or writing into the folder of the rerun)."""
    out = tmp_path / "out"
    parent = subprocess.Popen(_cli(out, f"input={photos}", "workers=2", *FOLDER_ARGS),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    workers: list[int] = []
    try:
        _wait_for(lambda: list(out.glob("crops-*_stats.json")), parent, "finished shard")
        workers = [
            pid for pid in _children(parent.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(workers) == 2
        parent.send_signal(signal.SIGKILL)
        assert parent.wait() == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        survivors = [pid for pid in workers if _alive(pid)]
        assert not survivors, f"workers {survivors} outlived their parent"
    finally:
        parent.kill()
        for pid in workers:  # a regression must not leave them behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    summary = _prepare(out, f"input={photos}", *FOLDER_ARGS)
    assert summary["units_skipped"] >= 1 and summary["units_run"] >= 1
    _assert_complete(out, summary)
