"""Captions through the pre-training pipeline: synthetic captions from ground truth, folder / LMDB /
webdataset captions, the missing-caption policy, and determinism of batches with text."""

from __future__ import annotations

import io
import re
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from facerep.config import ConfigError, DataConfig, PretrainConfig, load_config
from facerep.data import sources
from facerep.data.captions import (
    ATTRIBUTE_PHRASES,
    HAIR_COLOUR_NAMES,
    attribute_prompt,
    hair_colour_name,
    synthetic_caption,
)
from facerep.data.loader import build_pretrain_loader
from facerep.data.sources import DataError, FolderSource, LmdbSource, SyntheticSource, build_source
from facerep.data.synthetic import _HAIR_COLOURS, ATTRIBUTES, render_face
from facerep.data.tokenizer import Tokenizer
from facerep.data.transforms import build_pretrain_transform
from facerep.data.views import BatchSpec

CONTEXT = 24
TEMPLATE = re.compile(
    r"^(a (blurry )?photo of|close-up of|a portrait of|a picture of|headshot of|a face photo of)"
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(CONTEXT)


def _spec(cfg: DataConfig, tok: Tokenizer) -> BatchSpec:
    return BatchSpec((build_pretrain_transform(cfg),), masks=1, num_patches=4, text=tok.encode)


def _take(cfg: DataConfig, tok: Tokenizer, count: int, **kwargs) -> list[dict]:
    kwargs = {"batch_size": 4, "seed": 7, "return_keys": True, "spec": _spec(cfg, tok), **kwargs}
    loader = build_pretrain_loader(cfg, **kwargs)
    batches = list(islice(loader, count))
    loader.close()
    return batches


# ------------------------------------------------------------------------------------ synthetic captions


@pytest.fixture(scope="module")
def faces() -> list:
    return [render_face(0, i, size=16) for i in range(200)]


def test_synthetic_captions_are_deterministic_and_varied(faces) -> None:
    captions = [synthetic_caption(f, 0, i) for i, f in enumerate(faces[:50])]
    assert captions == [synthetic_caption(render_face(0, i, size=40), 0, i) for i in range(50)]  # any size
    assert len(set(captions)) == 50 and synthetic_caption(faces[0], 1, 0) != captions[0]
    templates = Counter(m.group(1) if (m := TEMPLATE.match(c.lower())) else "bare" for c in captions)
    assert len(templates) >= 3, templates
    orders = {tuple(sorted(c.split(", "))) != tuple(c.split(", ")) for c in captions}
    assert orders == {True, False}  # phrase order varies


def test_present_attributes_are_stated_absent_ones_rarely(faces) -> None:
    captions = [synthetic_caption(f, 0, i) for i, f in enumerate(faces)]
    for k, name in enumerate(ATTRIBUTES):
        phrase = ATTRIBUTE_PHRASES[name]
        present = [phrase in c for f, c in zip(faces, captions, strict=True) if f.attributes[k]]
        absent = [phrase in c for f, c in zip(faces, captions, strict=True) if not f.attributes[k]]
        assert len(present) >= 3 and sum(present) >= 0.9 * len(present), name
        assert sum(absent) <= 0.05 * len(absent), name
    hair = [f.params["hair_style"] for f in faces]
    assert sum("hair" in c or "buzz cut" in c or "fringe" in c for c in captions) >= 0.7 * sum(
        s != "bald" for s in hair
    )
    assert all(len(Tokenizer()(c)[0].nonzero()) < 77 for c in captions[:20])  # fits CLIP's context


def test_hair_colour_names_and_prompts() -> None:
    for row, name in zip(_HAIR_COLOURS, HAIR_COLOUR_NAMES, strict=True):
        for scale in (0.85, 1.0, 1.15):
            assert hair_colour_name(np.clip(np.rint(row * scale), 0, 255)) == name
    assert (
        hair_colour_name((210, 31, 128)) == "dyed pink" and hair_colour_name((121, 159, 41)) == "dyed green"
    )
    for name, phrase in ATTRIBUTE_PHRASES.items():
        assert phrase in attribute_prompt(name) and attribute_prompt(name).startswith("a photo of a")


def test_synthetic_source_renders_each_face_once(monkeypatch) -> None:
    src = SyntheticSource(5, 24)
    calls: list[int] = []

    def counting(seed: int, index: int, size: int = 128):
        calls.append(index)
        return render_face(seed, index, size)

    monkeypatch.setattr(sources, "render_face", counting)
    img, caption = src.load_item(3)
    assert calls == [3] and caption == src.caption(3) == synthetic_caption(render_face(0, 3, 24), 0, 3)
    assert np.array_equal(np.asarray(img), np.asarray(src.load(3)))


# ---------------------------------------------------------------------------------- captions on disk


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (value, 255 - value, 7)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def captioned_folder(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    """8 images; img_002 has no sidecar and img_005 an empty one: ``(root, name -> caption or None)``."""
    root = tmp_path / "faces"
    (root / "sub").mkdir(parents=True)
    captions: dict[str, str | None] = {}
    for i in range(8):
        rel = f"{'sub/' if i % 2 else ''}img_{i:03d}.jpg"
        (root / rel).write_bytes(_jpeg(i * 30))
        text = None if i in (2, 5) else f"  a face number {i}, café\n"
        if i != 2:
            (root / rel).with_suffix(".txt").write_text(text or " \n", encoding="utf-8")
        captions[rel] = text.strip() if text else None
    return root, captions


def test_folder_sidecar_captions(captioned_folder, tok: Tokenizer) -> None:
    root, captions = captioned_folder
    src = FolderSource(root)
    assert len(src) == 8 and {src.name(i): src.caption(i) for i in range(8)} == captions
    cfg = DataConfig(source="folder", path=str(root), image_size=8, num_workers=0)
    batches = _take(cfg, tok, 2)  # one epoch of 8 draws
    keys = [k for b in batches for k in b["keys"]]
    assert set(keys) == {k for k, c in captions.items() if c is not None}
    for b in batches:
        assert b["captions"] == [captions[k] for k in b["keys"]]
        assert torch.equal(b["texts"], tok(b["captions"])) and b["texts"].shape == (4, CONTEXT)
    skipped = [s for b in batches for s in b["skipped"]]
    assert sorted(skipped) == ["img_002.jpg (no caption)", "sub/img_005.jpg (no caption)"]
    empty = DataConfig(**{**cfg.__dict__, "missing_caption": "empty"})
    batches = _take(empty, tok, 2)
    assert not any(b["skipped"] for b in batches)
    for b in batches:
        assert b["captions"] == [captions[k] or "" for k in b["keys"]]
        for key, row in zip(b["keys"], b["texts"], strict=True):
            if captions[key] is None:
                assert row[:3].tolist() == [tok.sot_id, tok.eot_id, 0]


def test_no_captions_at_all_is_one_line_error(tmp_path: Path, tok: Tokenizer) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_jpeg(i))
    cfg = DataConfig(source="folder", path=str(tmp_path), image_size=8, num_workers=0)
    with pytest.raises(DataError, match=r"without a caption.*<image stem>\.txt files") as info:
        _take(cfg, tok, 1, batch_size=2)
    assert "\n" not in str(info.value) and "missing_caption=empty" in str(info.value)
    plain = next(iter(build_pretrain_loader(cfg, batch_size=2, seed=0)))  # without text: no captions read
    assert set(plain) == {"views", "masks", "skipped"} and not plain["skipped"]


def _write_lmdb(path: Path, items: dict[str, bytes], keys: list[str] | None) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key.encode(), value)
    env.close()
    if keys is not None:
        (path / "keys.txt").write_text("".join(f"{k}\n" for k in keys))


def test_lmdb_txt_keys(tmp_path: Path, tok: Tokenizer) -> None:
    images = {f"k{i}": _jpeg(i * 40) for i in range(4)}
    texts = {"k0.txt": b"first face", "k1.txt": "second \xe9".encode(), "k3.txt": b"   "}
    for with_key_file in (True, False):
        db = tmp_path / f"db{with_key_file}"
        _write_lmdb(db, {**images, **texts}, list(images) if with_key_file else None)
        src = LmdbSource(db)
        assert src.keys == ["k0", "k1", "k2", "k3"]  # caption keys are not images
        assert [src.caption(i) for i in range(4)] == ["first face", "second é", None, None]
        assert src.load_item(1)[1] == "second é" and src.load(1).mode == "RGB"
    cfg = DataConfig(source="lmdb", path=str(db), image_size=8, num_workers=0)
    (batch,) = _take(cfg, tok, 1, batch_size=2)
    assert sorted(batch["keys"]) == ["k0", "k1"] and sorted(batch["skipped"]) == [
        "k2 (no caption)",
        "k3 (no caption)",
    ]


def _tar(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_txt_members(wds_shards, tok: Tokenizer) -> None:
    pattern, good, _ = wds_shards
    cfg = DataConfig(source="webdataset", path=pattern, image_size=8, num_workers=0, shuffle_buffer=0)
    batches = _take(cfg, tok, len(good) // 4)
    for b in batches:
        assert b["captions"] == [f"caption {k.rsplit(':', 1)[1]}" for k in b["keys"]]
        assert torch.equal(b["texts"], tok(b["captions"]))


def test_webdataset_missing_captions(tmp_path: Path, tok: Tokenizer) -> None:
    samples = {f"s{i}": {"jpg": _jpeg(i * 20)} for i in range(6)}
    for i in (0, 1, 4):
        samples[f"s{i}"]["txt"] = f"sample {i}".encode()
    samples["s4"]["txt"] = b""
    _tar(tmp_path / "0.tar", samples)
    cfg = DataConfig(source="webdataset", path=str(tmp_path / "0.tar"), image_size=8, num_workers=0)
    cfg.shuffle_buffer = 0
    (batch,) = _take(cfg, tok, 1, batch_size=2)
    assert batch["captions"] == ["sample 0", "sample 1"]
    (batch,) = _take(cfg, tok, 1, batch_size=3, start_sample=1)  # s0 s1 | s0 s1 ... (epoch 2)
    assert [s.rsplit(":", 1)[1] for s in batch["skipped"]] == [f"s{i} (no caption)" for i in (2, 3, 4, 5)]
    cfg.missing_caption = "empty"
    (batch,) = _take(cfg, tok, 1, batch_size=6)
    assert batch["captions"] == ["sample 0", "sample 1", "", "", "", ""] and not batch["skipped"]
    _tar(tmp_path / "1.tar", {f"s{i}": {"jpg": _jpeg(i)} for i in range(3)})
    bare = DataConfig(source="webdataset", path=str(tmp_path / "1.tar"), image_size=8, num_workers=0)
    with pytest.raises(DataError, match=r"without a caption.*'txt' member") as info:
        _take(bare, tok, 1, batch_size=2)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ policy and determinism


def test_bad_missing_caption_policy_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.missing_caption must be one of skip, empty") as info:
        load_config(PretrainConfig, overrides=["data.missing_caption=drop"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        DataConfig(missing_caption="")
    assert (
        load_config(PretrainConfig, overrides=["data.missing_caption=empty"]).data.missing_caption == "empty"
    )


def test_batches_with_text_are_deterministic_and_resume(tok: Tokenizer) -> None:
    cfg = DataConfig(source="synthetic", synthetic_length=10, synthetic_render_size=24, image_size=16)
    cfg.num_workers = 0
    full = _take(cfg, tok, 4)
    assert list(full[0]) == ["views", "masks", "skipped", "texts", "captions", "keys"]
    src = build_source(cfg)
    for b in full:
        assert b["captions"] == [src.caption(int(k.split(":")[1])) for k in b["keys"]]
        assert b["texts"].shape == (4, CONTEXT) and b["texts"].dtype == torch.int64
    plain = list(islice(build_pretrain_loader(cfg, batch_size=4, seed=7, spec=_spec(cfg, tok)), 1))
    without = BatchSpec(_spec(cfg, tok).views, masks=1, num_patches=4)
    (no_text,) = islice(build_pretrain_loader(cfg, batch_size=4, seed=7, spec=without), 1)
    assert torch.equal(no_text["views"][0], plain[0]["views"][0]) and "texts" not in no_text

    def flat(batches: list[dict], key: str) -> list:
        return [x for b in batches for x in b[key]]

    workers = _take(DataConfig(**{**cfg.__dict__, "num_workers": 2}), tok, 4)
    resumed = _take(cfg, tok, 2, start_sample=8)
    for other, start in ((workers, 0), (resumed, 8)):
        n = 4 * len(other)
        assert flat(other, "captions") == flat(full, "captions")[start : start + n]
        assert torch.equal(
            torch.cat([b["texts"] for b in other]), torch.cat([b["texts"] for b in full])[start:]
        )
        assert torch.equal(
            torch.cat([b["views"][0] for b in other]), torch.cat([b["views"][0] for b in full])[start:]
        )
        assert torch.equal(
            torch.cat([b["masks"][0] for b in other]), torch.cat([b["masks"][0] for b in full])[start:]
        )
