"""Decoding of every image mode / bad input, and the pre-training transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from facerep.config import DataConfig
from facerep.data.transforms import BadImage, build_pretrain_transform, decode_image, to_rgb


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _noise(h: int = 20, w: int = 30) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_output_shape_dtype_and_normalisation() -> None:
    cfg = DataConfig(image_size=16, hflip=0.5, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])
    out = build_pretrain_transform(cfg)(Image.new("RGB", (40, 25), (255, 0, 51)))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32 and type(out) is torch.Tensor
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, 0.2])
    assert torch.allclose(out, expected[:, None, None].expand(3, 16, 16), atol=1e-6)


def test_flip_probability_one_flips() -> None:
    img = _noise(16, 16)
    base = DataConfig(image_size=16, mean=[0.0] * 3, std=[1.0] * 3)
    plain = build_pretrain_transform(DataConfig(**{**base.__dict__, "hflip": 0.0}))(img)
    flipped = build_pretrain_transform(DataConfig(**{**base.__dict__, "hflip": 1.0}))(img)
    assert torch.equal(flipped, plain.flip(-1))
    assert torch.allclose(plain, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("1", "PNG"),
        ("I", "TIFF"),
    ],
)
def test_modes_decode_to_rgb(mode: str, fmt: str) -> None:
    data = _encode(_noise().convert(mode), fmt)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode == mode
    out = decode_image(data, "x")
    assert out.mode == "RGB" and out.size == (30, 20)
    assert build_pretrain_transform(DataConfig(image_size=8))(out).shape == (3, 8, 8)


def test_16bit_png_scaled_not_clipped() -> None:
    arr = np.full((6, 5), 32896, dtype=np.uint16)  # 32896 / 257 = 128
    data = _encode(Image.fromarray(arr), "PNG")
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.mode.startswith("I")
    out = np.asarray(decode_image(data, "deep.png"))
    assert out.shape == (6, 5, 3) and (out == 128).all()


def test_alpha_composited_over_white_and_palette_transparency() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert (np.asarray(decode_image(_encode(rgba, "PNG"), "a.png")) == 255).all()
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert (np.asarray(to_rgb(pal)) == 255).all()
    assert to_rgb(Image.new("PA", (3, 3))).mode == "RGB"
    assert (np.asarray(to_rgb(Image.new("F", (3, 3), 0.5))) == 128).all()


def test_file_path_input(tmp_path) -> None:
    path = tmp_path / "x.png"
    _noise().save(path)
    assert decode_image(path, "x.png").mode == "RGB"
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="empty"):
        decode_image(tmp_path / "empty.jpg", "empty.jpg")


@pytest.mark.parametrize("kind", ["empty", "truncated_jpeg", "truncated_png", "text"])
def test_bad_inputs_raise(kind: str) -> None:
    jpg, png = _encode(_noise(), "JPEG"), _encode(_noise(), "PNG")
    data = {
        "empty": b"",
        "truncated_jpeg": jpg[: len(jpg) // 2],
        "truncated_png": png[: len(png) // 2],
        "text": b"hello, I am a text file\n",
    }[kind]
    with pytest.raises(BadImage) as info:
        decode_image(data, f"{kind}.jpg")
    assert isinstance(info.value, ValueError) and info.value.name == f"{kind}.jpg"
    assert "\n" not in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
