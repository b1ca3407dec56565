"""Prediction overlays: landmarks drawn on the image, parsing masks coloured with a legend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def palette(num_classes: int) -> np.ndarray:
    """``[C, 3]`` uint8 distinct colours (background black)."""
    rng = np.random.default_rng(7)
    colours = rng.integers(40, 256, size=(num_classes, 3), dtype=np.uint8)
    colours[0] = 0
    return colours


def draw_landmarks(image: np.ndarray, points: np.ndarray, target: np.ndarray | None = None) -> Image.Image:
    """``image [H, W, 3]`` uint8 with predicted ``points [K, 2]`` (green) and optional ground truth (red)."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    radius = max(1.0, min(canvas.size) / 150)
    for pts, colour in ((target, (255, 40, 40)), (points, (40, 255, 40))):
        if pts is None:
            continue
        for x, y in np.asarray(pts, dtype=float):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return canvas


def draw_parsing(
    image: np.ndarray, mask: np.ndarray, class_names: Sequence[str], alpha: float = 0.55
) -> Image.Image:
    """Image blended with the coloured ``mask [H, W]``, and a legend of the classes present on the right."""
    colours = palette(len(class_names))
    base = image.astype(np.float32)
    coloured = colours[mask].astype(np.float32)
    blend = np.where(mask[..., None] > 0, (1 - alpha) * base + alpha * coloured, base).astype(np.uint8)
    h, w = mask.shape
    row = max(12, h // 24)
    present = [c for c in range(len(class_names)) if (mask == c).any()]
    legend = Image.new("RGB", (max(120, w // 3), h), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, c in enumerate(present):
        y = 4 + i * (row + 2)
        draw.rectangle([4, y, 4 + row, y + row], fill=tuple(int(v) for v in colours[c]), outline=(0, 0, 0))
        draw.text((8 + row, y), class_names[c], fill=(0, 0, 0))
    canvas = Image.new("RGB", (w + legend.width, h), (255, 255, 255))
    canvas.paste(Image.fromarray(blend), (0, 0))
    canvas.paste(legend, (w, 0))
    return canvas
