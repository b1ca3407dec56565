"""Images <-> sequences of flattened patches (MAE convention: each patch is ``p*p*3`` values, row-major)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, L, p*p*C]``, ``L = (H/p) * (W/p)``; pixel order in a patch is (p, p, C)."""
    n, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = images.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid: ``[N, L, p*p*C]`` -> ``[N, C, H, W]``."""
    n, length, _ = patches.shape
    g = round(length**0.5)
    if g * g != length:
        raise ValueError(f"{length} patches do not form a square grid")
    p = patch_size
    x = patches.reshape(n, g, g, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, g * p, g * p)
