import os
import subprocess
import sys
from pathlib import Path

import pytest

from facerep.runtime.atomic import (
    TEMPORARY_RE,
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temporaries,
)


def test_atomic_save(tmp_path: Path) -> None:
    target = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"one")
    assert target.read_bytes() == b"one"

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(failing, target)
    assert target.read_bytes() == b"one" and sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_atomic_write_json_is_indented_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "r.json", {"a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    """A killed write leaves ``.{name}.{pid}.{hex}.tmp``: removed when its pid is gone (or is this very
    process, a reused pid); another live process's write in progress, other files and sub-folders stay."""
    seen: list[str] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")

    atomic_save(writer, tmp_path / "checkpoint.pt")
    assert TEMPORARY_RE.match(seen[0])["pid"] == str(
        os.getpid()
    )  # the pattern matches what atomic_save writes
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        names = {
            "dead": f".checkpoint.pt.{_dead_pid()}.0123abcd.tmp",
            "mine": f".backbone.safetensors.{os.getpid()}.89abcdef.tmp",
            "live": f".checkpoint.pt.{live.pid}.fedcba98.tmp",
            "other": ".notes.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / names["dead"]).write_bytes(b"partial")
        removed = remove_stale_temporaries(tmp_path)
        live.kill()
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["mine"]])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["checkpoint.pt", names["live"], names["other"], "sub"])
    assert (tmp_path / "sub" / names["dead"]).exists() and remove_stale_temporaries(
        tmp_path / "missing"
    ) == []
