"""Image decoding and the pre-training transform shared by every data source.

:func:`decode_image` turns bytes or a file into a fully loaded RGB ``PIL.Image`` or raises
:class:`BadImage`; :func:`build_pretrain_transform` maps such an image to a normalised
``[3, S, S]`` float32 tensor. Truncated files are *bad*: we never set PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from facerep.config import DataConfig
from facerep.runtime.errors import FacerepError, one_line

# Colour transparent pixels are composited over (RGBA, LA, PA, palette with transparency).
ALPHA_BACKGROUND = (255, 255, 255)


class BadImage(FacerepError):
    """An input that cannot be decoded into an image (empty, truncated, not an image, ...)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """Scale a single-channel ``I;16*`` / ``I`` / ``F`` image to 8 bits and replicate it to RGB.

    ``I;16*``: value / 257. ``I``: treated as 16-bit (value / 257) when any value exceeds 255, else as
    8-bit. ``F``: treated as [0, 1] (value * 255) when the maximum is <= 1, else as [0, 255].
    Values are clipped to [0, 255].
    """
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        arr = arr / 257.0
    elif img.mode == "I":
        if arr.size and arr.max() > 255:
            arr = arr / 257.0
    elif arr.size and np.nanmax(arr) <= 1.0:  # "F"
        arr = arr * 255.0
    gray = np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any PIL mode to ``RGB``; transparency is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_bit_depth_to_rgb(img)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | str | os.PathLike, name: str) -> Image.Image:
    """Decode encoded image bytes (or a file path) into a fully loaded RGB image.

    Multi-frame files (GIF, TIFF) give their first frame. Raises :class:`BadImage` naming ``name``
    for empty, truncated or non-image data, or any other decoder error.
    """
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) == 0:
                raise BadImage(name, "empty (0 bytes)")
            src: io.BytesIO | str | os.PathLike = io.BytesIO(bytes(data))
        else:
            if os.path.getsize(data) == 0:
                raise BadImage(name, "empty file (0 bytes)")
            src = data
        with Image.open(src) as img:
            img.load()
            rgb = to_rgb(img)
            if rgb is img:  # detach from the file before the context manager closes it
                rgb = img.copy()
        return rgb
    except BadImage:
        raise
    except Image.UnidentifiedImageError as err:
        raise BadImage(name, "not an image (unrecognised format)") from err
    except Exception as err:
        detail = one_line(err)
        kind = "truncated" if "truncat" in detail.lower() else "cannot decode"
        raise BadImage(name, f"{kind} ({type(err).__name__}: {detail})") from err


class PretrainTransform:
    """RGB PIL image -> ``[3, S, S]`` float32 tensor (picklable, so it can travel to spawned workers)."""

    def __init__(self, image_size: int, hflip: float, mean: list[float], std: list[float]) -> None:
        if image_size <= 0:
            raise FacerepError(f"data.image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3:
            raise FacerepError(f"data.mean and data.std need 3 values each, got {mean} and {std}")
        self.pipeline = v2.Compose(
            [
                v2.Resize((int(image_size), int(image_size)), antialias=True),
                v2.RandomHorizontalFlip(p=float(hflip)),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
            ]
        )

    def __call__(self, img: Image.Image) -> Tensor:
        return self.pipeline(to_rgb(img)).as_subclass(Tensor)


def build_pretrain_transform(cfg: DataConfig) -> Callable[[Image.Image], Tensor]:
    """RGB PIL image -> ``[3, S, S]`` float32 tensor, ``S = cfg.image_size``.

    Square resize (antialiased, aspect ratio not kept) -> horizontal flip with probability
    ``cfg.hflip`` (drawn from torch's global RNG: seed it per sample for determinism) -> [0, 1]
    -> ``Normalize(cfg.mean, cfg.std)``. Non-RGB inputs are converted with :func:`to_rgb` first.
    """
    return PretrainTransform(cfg.image_size, cfg.hflip, list(cfg.mean), list(cfg.std))


class BYOLAugment:
    """One view of BYOL's augmentation (Grill et al., 2020; FRA's ``get_vggface_tranforms``), picklable.

    RGB PIL image -> ``[3, S, S]`` float32: random resized crop (``crop_scale`` of the area, aspect
    3/4-4/3) -> horizontal flip (``hflip``) -> colour jitter (brightness 0.4, contrast 0.4, saturation
    0.2, hue 0.1) with probability ``color_jitter`` (0.8) -> grayscale with probability ``grayscale`` (0.2)
    -> Gaussian blur (sigma uniform in ``blur_sigma`` pixels, kernel about a tenth of the image) with
    probability ``blur`` -> solarize (threshold 128) with probability ``solarize`` -> [0, 1]
    -> ``Normalize(mean, std)``.
    BYOL's two views differ only in ``blur`` (1.0 / 0.1) and ``solarize`` (0.0 / 0.2).
    """

    def __init__(
        self,
        image_size: int,
        mean: list[float],
        std: list[float],
        *,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: float = 0.5,
        blur: float = 1.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize: float = 0.0,
        color_jitter: float = 0.8,
        grayscale: float = 0.2,
    ) -> None:
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise FacerepError(f"crop scale must satisfy 0 < low <= high <= 1, got {list(crop_scale)}")
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        self.pipeline = v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(int(image_size), scale=tuple(crop_scale), antialias=True),
                v2.RandomHorizontalFlip(p=float(hflip)),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=float(color_jitter)),
                v2.RandomGrayscale(p=float(grayscale)),
                v2.RandomApply([v2.GaussianBlur(kernel, sigma=tuple(blur_sigma))], p=float(blur)),
                v2.RandomSolarize(threshold=128, p=float(solarize)),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
            ]
        )

    def __call__(self, img: Image.Image) -> Tensor:
        return self.pipeline(to_rgb(img)).as_subclass(Tensor)
