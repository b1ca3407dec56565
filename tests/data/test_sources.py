"""Folder / LMDB / webdataset / synthetic sources: good images load, bad ones are skipped and reported."""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import unquote_to_bytes

import lmdb
import numpy as np
import pytest
from PIL import Image

from facerep.config import DataConfig
from facerep.data.loader import build_pretrain_loader, dataset_length
from facerep.data.sources import (
    DataError,
    FolderSource,
    LmdbSource,
    NotAnImageFile,
    WebDatasetSource,
    build_source,
    load_item_with_fallback,
    safe_key,
)


def _one_pass(cfg: DataConfig, n: int, batch_size: int) -> tuple[list[str], list[str]]:
    """(keys, skipped) over exactly ``n`` samples (one epoch when ``n`` = dataset length)."""
    assert n % batch_size == 0
    keys: list[str] = []
    skipped: list[str] = []
    it = iter(build_pretrain_loader(cfg, batch_size=batch_size, seed=3, return_keys=True))
    for _ in range(n // batch_size):
        batch = next(it)
        assert batch["views"][0].shape == (batch_size, 3, cfg.image_size, cfg.image_size)
        keys += batch["keys"]
        skipped += batch["skipped"]
    return keys, skipped


def test_folder_lists_recursively_and_skips_bad(image_folder) -> None:
    root, good, bad = image_folder
    src = FolderSource(root)
    assert src.files == sorted(good + bad)
    for i, rel in enumerate(src.files):
        if rel in bad:
            with pytest.raises(ValueError):
                src.load(i)
            assert src.files[(i + 1) % len(src)] in good  # fixture: bad files are never adjacent
        else:
            assert src.load(i).mode == "RGB"
    cfg = DataConfig(source="folder", path=str(root), image_size=16, num_workers=0)
    assert dataset_length(cfg) == len(good) + len(bad) == 12
    keys, skipped = _one_pass(cfg, 12, batch_size=4)
    assert sorted(skipped) == sorted(bad)
    assert set(keys) == set(good)  # each bad draw was replaced by the (good) next file


def test_folder_bad_names_reported_with_workers(image_folder) -> None:
    root, _, bad = image_folder
    cfg = DataConfig(source="folder", path=str(root), image_size=16, num_workers=2)
    _, skipped = _one_pass(cfg, 12, batch_size=3)
    assert sorted(skipped) == sorted(bad)


def test_folder_pipes_and_device_links_are_skipped_unopened(image_folder) -> None:
    """Before: a named pipe blocked the loader forever, a link to /dev/zero read until MemoryError."""
    root, _, _ = image_folder
    os.mkfifo(root / "a" / "001_pipe.jpg")
    os.mkfifo(root / "a" / "001.txt")  # a caption that is a pipe: no caption
    os.symlink("/dev/zero", root / "a" / "001_zero.jpg")
    src = FolderSource(root)
    for name, kind in (("a/001_pipe.jpg", "a named pipe"), ("a/001_zero.jpg", "a character device")):
        with pytest.raises(NotAnImageFile, match=f"{name}: {kind}.*, not a regular file"):
            src.load(src.files.index(name))
    image, _, loaded, skipped = load_item_with_fallback(src, src.files.index("a/001_pipe.jpg"), None)
    assert skipped == ["a/001_pipe.jpg", "a/001_zero.jpg"] and src.files[loaded] == "a/b/002.PNG"
    assert src.caption(src.files.index("a/001.jpg")) is None and image.mode == "RGB"


def test_safe_key_escapes_paths_and_odd_bytes_reversibly() -> None:
    keys = [
        "000123",
        "../../etc/passwd",
        "/abs",
        "a.b",
        "a/b",
        "a%2Fb",
        "-rf",
        "x-y",
        "caf\u00e9",
        "\udcff",
        "",
    ]
    safe = [safe_key(k) for k in keys]
    assert safe[:3] == ["000123", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "%2Fabs"] and safe[6:8] == [
        "%2Drf",
        "x-y",
    ]
    assert len(set(safe)) == len(keys)
    assert [unquote_to_bytes(k) for k in safe] == [k.encode("utf-8", "surrogateescape") for k in keys]
    long = [safe_key("k" * 300), safe_key("k" * 301)]
    assert len(set(long)) == 2 and all(len(k) == 200 and "~" in k for k in long)


def test_all_unreadable_is_one_line_data_error(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"nope")
    src = FolderSource(tmp_path)
    with pytest.raises(DataError, match="unreadable"):
        load_item_with_fallback(src, 0, None)
    for workers in (0, 2):
        cfg = DataConfig(source="folder", path=str(tmp_path), image_size=8, num_workers=workers)
        with pytest.raises(DataError, match="looks unreadable") as info:
            next(iter(build_pretrain_loader(cfg, batch_size=2, seed=0)))
        assert "\n" not in str(info.value)


def _write_lmdb(path: Path, items: dict[str, bytes], *, keys_txt: bool = True) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key.encode(), value)
        txn.put(b"length", str(len(items)).encode())
    env.close()
    if keys_txt:
        (path / "keys.txt").write_text("".join(f"{k}\n" for k in items))


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (value, 255 - value, 7)).save(buf, "JPEG")
    return buf.getvalue()


def test_lmdb_reference_layout(tmp_path: Path) -> None:
    items = {f"img_{i:03d}": _jpeg(i * 20) for i in range(8)}
    items["img_004"] = b"\xff\xd8\xff garbage"
    db = tmp_path / "db"
    _write_lmdb(db, {k: items[k] for k in reversed(items)})  # key file order != sorted order
    src = LmdbSource(db)
    assert src.keys == list(reversed(items)) and len(src) == 8
    img, _, used, skipped = load_item_with_fallback(src, src.keys.index("img_004"), None)
    assert skipped == ["img_004"] and src.keys[used] == "img_003" and img.mode == "RGB"
    cfg = DataConfig(source="lmdb", path=str(db), image_size=16, num_workers=2)
    assert dataset_length(cfg) == 8
    keys, skipped = _one_pass(cfg, 8, batch_size=4)
    assert skipped == ["img_004"] and set(keys) == set(items) - {"img_004"}


def test_lmdb_key_file_option_and_fallback(tmp_path: Path) -> None:
    items = {f"k{i}": _jpeg(i) for i in range(3)}
    db = tmp_path / "db"
    _write_lmdb(db, items, keys_txt=False)
    assert LmdbSource(db).keys == ["k0", "k1", "k2"]  # the db's own keys minus "length"
    (tmp_path / "order.txt").write_text("k2\nk0\nk1\n")
    assert LmdbSource(db, tmp_path / "order.txt").keys == ["k2", "k0", "k1"]
    with pytest.raises(DataError, match="key file not found"):
        LmdbSource(db, tmp_path / "missing.txt")
    (db / "keys.txt").write_text("k0\nk1\n")
    with pytest.raises(DataError, match="length=3"):
        LmdbSource(db)


def test_webdataset_shards_img2dataset_layout(wds_shards) -> None:
    pattern, good, bad = wds_shards
    src = build_source(DataConfig(source="webdataset", path=pattern))
    assert isinstance(src, WebDatasetSource) and len(src.shards) == 4
    errors: list[str] = []
    samples = [s for url in src.shards for s in src.shard_samples(url, errors.append)]
    assert not errors and [s["__key__"] for s in samples] == sorted(good + bad)
    assert {"jpg", "txt", "json"} <= set(samples[0])
    cfg = DataConfig(source="webdataset", path=pattern, image_size=16, num_workers=0, shuffle_buffer=0)
    assert dataset_length(cfg) is None
    keys, skipped = _one_pass(cfg, len(good), batch_size=len(good))
    assert sorted(k.rsplit(":", 1)[1] for k in keys) == sorted(good)
    assert [s.rsplit(":", 1)[1] for s in skipped] == bad


def test_webdataset_stats_length_and_broken_shard(wds_shards, tmp_path: Path) -> None:
    pattern, _, _ = wds_shards
    shard_dir = Path(pattern).parent
    for i in range(4):
        (shard_dir / f"{i:05d}_stats.json").write_text('{"successes": 5}')
    cfg = DataConfig(source="webdataset", path=pattern, image_size=8, num_workers=0, shuffle_buffer=4)
    assert dataset_length(cfg) == 20
    for bad in ("[" * 200_000 + "]" * 200_000, '{"successes": 1e999}', '{"successes": -5}'):
        (shard_dir / "00003_stats.json").write_text(bad)  # before: RecursionError, OverflowError, -5 counted
        assert WebDatasetSource(pattern).local_length() is None
    (shard_dir / "00001.tar").write_bytes(b"not a tar at all" * 100)
    keys, skipped = _one_pass(cfg, 15, batch_size=5)  # the stream goes on without shard 1
    assert all("00001.tar" not in k for k in keys)
    assert any("00001.tar" in s for s in skipped)


def test_synthetic_source() -> None:
    cfg = DataConfig(source="synthetic", synthetic_length=5, synthetic_render_size=24, image_size=16)
    src = build_source(cfg)
    assert len(src) == dataset_length(cfg) == 5
    img = src.load(3)
    assert img.mode == "RGB" and img.size == (24, 24)
    assert np.array_equal(np.asarray(img), np.asarray(src.load(3)))


@pytest.mark.parametrize(
    ("source", "make"),
    [
        ("folder", lambda p: p / "missing"),
        ("folder", lambda p: p),  # empty folder
        ("folder", lambda p: (p / "file.jpg").write_bytes(b"") and p / "file.jpg"),
        ("lmdb", lambda p: p / "no_db"),
        ("webdataset", lambda p: p / "shards-{000..003}.tar"),
    ],
)
def test_config_errors_are_one_line_and_name_the_path(tmp_path: Path, source: str, make) -> None:
    path = str(make(tmp_path))
    cfg = DataConfig(source=source, path=path)
    with pytest.raises(DataError) as info:
        build_pretrain_loader(cfg, batch_size=2, seed=0)
    msg = str(info.value)
    assert "\n" not in msg and (path in msg or path.replace("{000..003}", "000") in msg)


def test_unknown_source_and_missing_path() -> None:
    with pytest.raises(DataError, match=r"'imagenet'.*synthetic, folder, lmdb, webdataset"):
        build_source(DataConfig(source="imagenet"))
    with pytest.raises(DataError, match=r"data\.path"):
        build_source(DataConfig(source="folder", path=None))


def test_empty_lmdb_is_data_error(tmp_path: Path) -> None:
    db = tmp_path / "empty_db"
    _write_lmdb(db, {}, keys_txt=False)
    with pytest.raises(DataError, match=str(db)):
        LmdbSource(db)


def test_webdataset_pipe_urls(wds_shards) -> None:
    pattern, good, _ = wds_shards
    cfg = DataConfig(source="webdataset", path=f"pipe:cat {pattern}", image_size=8, num_workers=0)
    src = build_source(cfg)
    assert len(src.shards) == 4 and all(s.startswith("pipe:cat ") for s in src.shards)
    keys, _ = _one_pass(DataConfig(**{**cfg.__dict__, "shuffle_buffer": 0}), len(good), batch_size=len(good))
    assert sorted(k.rsplit(":", 1)[1] for k in keys) == sorted(good)
