"""MAE's pixel reconstruction loss."""

from __future__ import annotations

import torch


def masked_pixel_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False
) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    Args:
        pred: ``[N, L, P]`` predicted patch pixels.
        target: ``[N, L, P]`` patchified input.
        mask: ``[N, L]``, 1 for removed (scored) patches, 0 for kept ones.
        norm_pix: normalise each target patch by its own mean and variance (MAE's ``norm_pix_loss``).
    Returns:
        scalar loss.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"shapes do not match: pred {list(pred.shape)}, target {list(target.shape)}, "
            f"mask {list(mask.shape)}"
        )
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)
