"""Shared fixtures: small on-disk image datasets (folder with bad files, webdataset shards) and a
few-second pre-training config (``tiny_config``)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerep.config import PretrainConfig, load_config


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """``img`` encoded as ``fmt`` (PIL format name) bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def solid_rgb(value: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    """A ``size`` (W, H) RGB image of one distinct colour per ``value``."""
    colour = (value * 37 % 256, value * 91 % 256, value * 53 % 256)
    return Image.new("RGB", size, colour)


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A nested folder of mixed-format images: ``(root, good relative paths, bad relative paths)``.

    Bad files (zero-byte .jpg, truncated .png, text renamed .jpg) each sort right before a good one.
    """
    root = tmp_path / "faces"
    png = encode_image(solid_rgb(9), "PNG")
    files: dict[str, bytes] = {
        "a/001.jpg": encode_image(solid_rgb(1), "JPEG"),
        "a/b/002.PNG": encode_image(solid_rgb(2), "PNG"),
        "a/b/003.jpeg": encode_image(solid_rgb(3), "JPEG"),
        "a/c/000_empty.jpg": b"",
        "a/c/004.bmp": encode_image(solid_rgb(4), "BMP"),
        "b/000_trunc.png": png[: len(png) // 2],
        "b/005.webp": encode_image(solid_rgb(5), "WEBP"),
        "b/cmyk.jpg": encode_image(solid_rgb(6).convert("CMYK"), "JPEG"),
        "c/000_text.jpg": b"this is not an image\n",
        "c/d/010.tiff": encode_image(solid_rgb(10), "TIFF"),
        "c/gray.png": encode_image(solid_rgb(7).convert("L"), "PNG"),
        "c/rgba.png": encode_image(solid_rgb(8).convert("RGBA"), "PNG"),
        "notes.md": b"not listed",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    bad = ["a/c/000_empty.jpg", "b/000_trunc.png", "c/000_text.jpg"]
    good = sorted(rel for rel in files if rel not in bad and not rel.endswith(".md"))
    return root, good, bad


@pytest.fixture
def wds_shards(tmp_path: Path) -> tuple[str, list[str], list[str]]:
    """4 img2dataset-style shards (key.jpg + key.txt + key.json), 5 good samples each plus one corrupt
    jpg in the middle of shard 2: ``(brace pattern, good keys, bad keys)``."""
    out = tmp_path / "wds"
    out.mkdir()
    good: list[str] = []
    bad: list[str] = []
    rng = np.random.default_rng(0)
    for shard in range(4):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for i in range(6 if shard == 2 else 5):
                key = f"{shard:05d}{i:04d}"
                if shard == 2 and i == 2:
                    jpg = b"\xff\xd8\xff\xe0 corrupt"
                    bad.append(key)
                else:
                    arr = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
                    jpg = encode_image(Image.fromarray(arr), "JPEG")
                    good.append(key)
                meta = json.dumps({"key": key, "status": "success"}).encode()
                for ext, data in (("jpg", jpg), ("txt", f"caption {key}".encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(out / "{00000..00003}.tar"), good, bad


# ------------------------------------------------------------------ a few-second pre-training config
TINY = [
    "model.arch=vit_tiny_patch16_224",
    "model.depth=2",
    "model.embed_dim=64",
    "model.num_heads=2",
    "data.image_size=32",
    "data.synthetic_length=256",
    "data.num_workers=0",
    "decoder.embed_dim=32",
    "decoder.depth=1",
    "decoder.num_heads=2",
    "mcf.proj_hidden_dim=64",
    "mcf.proj_dim=32",
    "teacher.checkpoint=random",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.warmup_steps=1",
    "train.blr=1e-3",
    "train.log_every=1",
    "train.ckpt_every=100",
    "train.progress=log",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config(tmp_path):
    """A few-second CPU config; extra ``KEY=VALUE`` strings override it."""

    def make(*overrides: str, out: str = "run") -> PretrainConfig:
        return load_config(PretrainConfig, None, [*TINY, f"output_dir={tmp_path / out}", *overrides])

    return make
