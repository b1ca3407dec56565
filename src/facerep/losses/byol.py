"""BYOL's regression loss and FRA's region-consistency loss (pure functions).

BYOL (Grill et al., 2020) regresses the target network's projection of one view from the online
network's prediction of the other: ``2 - 2 cos(p, z)``, averaged over the batch. FRA (Gao & Patras,
CVPR 2024) applies the same loss to every facial-region embedding and adds a decorrelation term that
pushes each predicted region away from the *other* regions of the same image (its reference code's
``compute_unigrad_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``2 - 2 * mean_i cos(prediction_i, target_i)`` over ``[N, D]`` rows (0 when aligned, 4 opposite).

    ``target`` should carry no gradient (the momentum network's output).
    """
    if prediction.ndim != 2 or prediction.shape != target.shape:
        raise ValueError(
            f"byol_loss needs two [N, D] tensors of one shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    return 2 - 2 * F.cosine_similarity(prediction.float(), target.float(), dim=-1).mean()


def region_consistency_loss(
    prediction: Tensor, target: Tensor, decorrelation_weight: float = 0.02
) -> tuple[Tensor, Tensor, Tensor]:
    """FRA's region loss: BYOL over matched regions plus a decorrelation of mismatched ones.

    Args:
        prediction: ``[B, Q, D]`` online predictions of the ``Q`` region embeddings of one view.
        target: ``[B, Q, D]`` momentum region embeddings of the other view (same query order).
        decorrelation_weight: weight of the off-diagonal term (0.02 in FRA's code).

    Returns:
        ``(loss, match, decorrelation)``: ``match = byol_loss`` over the ``B * Q`` region pairs;
        ``decorrelation = mean_{b, q} sum_{q' != q} cos(p_bq, z_bq')^2 / Q``;
        ``loss = match + decorrelation_weight * decorrelation``.
    """
    if prediction.ndim != 3 or prediction.shape != target.shape:
        raise ValueError(
            f"region_consistency_loss needs two [B, Q, D] tensors of one shape, got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    if decorrelation_weight < 0:
        raise ValueError(f"decorrelation_weight must be >= 0, got {decorrelation_weight}")
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.float(), dim=-1)
    match = byol_loss(p.flatten(0, 1), z.flatten(0, 1))
    num_regions = p.shape[1]
    cosines = torch.einsum("bqd,bkd->bqk", p, z)  # [B, Q, Q]
    off_diagonal = cosines * (1 - torch.eye(num_regions, device=p.device, dtype=p.dtype))
    decorrelation = (off_diagonal.square().sum(-1) / num_regions).mean()
    return match + decorrelation_weight * decorrelation, match, decorrelation
