"""Soak: ``facerep prepare`` on a folder of 10,000 small images with two pool workers, ``kill -9`` in the
middle and a rerun, while another process reads every finished shard as it appears. The result equals an
uninterrupted run's byte for byte, no reader ever sees a partial shard, and memory stays flat: the peak RSS
of the prepare process and its workers is printed and bounded, and so is its growth while the rerun's
workers are busy (between the first and the last third of its units)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerep.commands.prepare import PrepareConfig, run_prepare
from facerep.config import load_config
from facerep.data.synthetic import render_face

IMAGES, SHARD = 10_000, 250
UNITS = IMAGES // SHARD  # forty
ARGS = ("detector=haar", "crop.min_face=24", "crop.size=32", f"shard_size={SHARD}", "progress=false")
KILL_AFTER = 16  # units finished when the first run is killed
SAMPLE_S = 0.05  # RSS sampling period
# bytes: parent and both workers together, at their peaks; each imports all of facerep (~1 GB) today
RSS_BOUND = 4 << 30
GROWTH_BOUND = 64 << 20  # bytes: the rerun's RSS in its last third of units over its middle third
CODE = "import sys; from facerep.commands.cli import main; sys.exit(main(sys.argv[1:]))"
READER = """
import json, sys, tarfile, time
from pathlib import Path
out, stop = Path(sys.argv[1]), Path(sys.argv[2])
read, errors = {}, []
while True:
    last = stop.exists()
    for stats in sorted(out.glob("crops-*_stats.json")):
        shard = out / stats.name.replace("_stats.json", ".tar")
        if shard.name in read:
            continue
        try:
            crops = json.loads(stats.read_text())["crops"]
            with tarfile.open(shard) as tar:
                names = [m.name for m in tar if tar.extractfile(m).read() is not None]
            if len(names) != 2 * crops or len(set(names)) != len(names):
                errors.append(f"{shard.name}: {len(names)} members for {crops} crops")
            read[shard.name] = len(names)
        except Exception as err:
            errors.append(f"{shard.name}: {err!r}")
    if last:
        break
    time.sleep(0.05)
print(json.dumps({"shards": len(read), "errors": errors}))
"""


def _folder(root: Path) -> Path:
    """:data:`IMAGES` 48 x 48 images: every fourth a synthetic face (JPEG, the detector finds about a third
    of them), the rest flat colours (PNG, nothing to find)."""
    root.mkdir()
    faces = [cv2.imencode(".jpg", render_face(1, i, 48).image[:, :, ::-1])[1].tobytes() for i in range(100)]
    for i in range(IMAGES):
        if i % 4 == 0:
            (root / f"{i:05d}.jpg").write_bytes(faces[i // 4 % len(faces)])
        else:
            flat = np.full((48, 48, 3), (i % 251, i * 7 % 253, 128), np.uint8)
            (root / f"{i:05d}.png").write_bytes(cv2.imencode(".png", flat)[1].tobytes())
    return root


class _Tree:
    """Samples the RSS of a process and its children until it ends: each process's own peak (VmHWM) and,
    over time, the sum with the number of units finished in ``out`` at that moment."""

    def __init__(self, proc: subprocess.Popen, out: Path) -> None:
        self.proc, self.out = proc, out
        self.samples: list[tuple[int, int]] = []
        self.peaks: dict[int, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return {}
        return {
            k: int(v.split()[0]) << 10
            for k, v in (ln.split(":", 1) for ln in lines)
            if k in ("VmRSS", "VmHWM")
        }

    def _pids(self) -> list[int]:
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def _run(self) -> None:
        while self.proc.poll() is None:
            total = 0
            for pid in self._pids():
                status = self._status(pid)
                total += status.get("VmRSS", 0)
                self.peaks[pid] = max(self.peaks.get(pid, 0), status.get("VmHWM", 0))
            self.samples.append((len(list(self.out.glob("crops-*_stats.json"))), total))
            time.sleep(SAMPLE_S)

    def join(self) -> None:
        self.thread.join()

    @property
    def peak(self) -> int:
        """Sum of every process's own peak: an upper bound of the tree's peak."""
        return sum(self.peaks.values())

    def rss(self, low: int, high: int) -> int:
        """The largest sampled sum while ``low <= finished units < high``."""
        return max(total for units, total in self.samples if low <= units < high)


def _start(out: Path, photos: Path) -> tuple[subprocess.Popen, _Tree]:
    cmd = [sys.executable, "-c", CODE, "prepare", f"input={photos}", f"output_dir={out}", "workers=2", *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, _Tree(proc, out)


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("crops-*.tar"))}


def _stats(out: Path) -> dict[str, dict]:
    stats = {p.name: json.loads(p.read_text()) for p in sorted(out.glob("crops-*_stats.json"))}
    for s in stats.values():
        s.pop("seconds")
    return stats


@pytest.mark.slow
def test_killed_and_resumed_under_a_reader_equals_the_uninterrupted_run(tmp_path) -> None:
    start = time.monotonic()
    photos = _folder(tmp_path / "photos")
    made = time.monotonic()
    reference = tmp_path / "reference"  # uninterrupted, in this process, no pool: the pool must agree
    run_prepare(
        load_config(PrepareConfig, None, [f"input={photos}", f"output_dir={reference}", "workers=1", *ARGS])
    )
    referenced = time.monotonic()

    out, stop = tmp_path / "out", tmp_path / "stop-reader"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        first, first_tree = _start(out, photos)
        deadline = time.monotonic() + 120
        while len(list(out.glob("crops-*_stats.json"))) < KILL_AFTER:
            assert first.poll() is None, f"the run ended before it was killed: {first.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        first_tree.join()
        done = len(list(out.glob("crops-*_stats.json")))
        assert KILL_AFTER <= done < UNITS
        rerun, rerun_tree = _start(out, photos)
        _, stderr = rerun.communicate(timeout=300)
        rerun_tree.join()
        assert rerun.returncode == 0, stderr[-2000:]
    finally:
        stop.touch()
        report = json.loads(reader.communicate(timeout=120)[0])
    finished = time.monotonic()

    summary = json.loads((out / "summary.json").read_text())
    assert summary["units_skipped"] == done and summary["units_run"] == UNITS - done
    assert summary["images"] == IMAGES and summary["crops"] > 500
    assert _shards(out) == _shards(reference) and len(_shards(out)) == UNITS
    assert _stats(out) == _stats(reference)
    assert report == {"shards": UNITS, "errors": []}

    third = (UNITS - done) // 3
    growth = rerun_tree.rss(done + 2 * third, UNITS) - rerun_tree.rss(done + third, done + 2 * third)
    peak = max(first_tree.peak, rerun_tree.peak)
    sampled = max(total for _, total in first_tree.samples + rerun_tree.samples)
    print(f"\nsoak: {IMAGES} images, {summary['crops']} crops, killed after {done} of {UNITS} units; making "
          f"the folder {made - start:.1f} s, reference run {referenced - made:.1f} s, killed run + rerun "
          f"{finished - referenced:.1f} s, total {finished - start:.1f} s; peak RSS of prepare and its "
          f"workers {peak / 2**20:.0f} MiB (largest sampled sum {sampled / 2**20:.0f} MiB); the rerun's "
          f"growth from its middle to its last third of units {growth / 2**20:+.1f} MiB")  # fmt: skip
    assert peak < RSS_BOUND and growth < GROWTH_BOUND
