from pathlib import Path

import pytest

from facerep.runtime.atomic import atomic_save, atomic_write_bytes, atomic_write_json


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
