"""MCF's feature loss: match a frozen teacher's block features of the reconstruction and of the input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

NORM_AXES = {"token": 1, "feature": 2}


def feature_distill_loss(
    student: Sequence[torch.Tensor], target: Sequence[torch.Tensor], norm_axis: str = "token"
) -> torch.Tensor:
    """Sum over blocks of the MSE between L2-normalised features.

    Args:
        student: per block ``[N, T, D]``: teacher features of the reconstructed image (with gradient).
        target: per block ``[N, T, D]``: teacher features of the input image (detached here).
        norm_axis: ``token`` normalises over the token axis (dim 1), as the reference MCF code does;
            ``feature`` normalises each token's feature vector (dim 2), the usual perceptual-loss choice.
    Returns:
        scalar ``sum_b mean((norm(s_b) - norm(t_b))^2)``.
    """
    if norm_axis not in NORM_AXES:
        raise ValueError(f"norm_axis must be one of {sorted(NORM_AXES)}, got {norm_axis!r}")
    if len(student) != len(target) or not student:
        raise ValueError(f"need the same non-zero number of blocks, got {len(student)} and {len(target)}")
    dim = NORM_AXES[norm_axis]
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, target, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"feature shapes differ: {list(s.shape)} vs {list(t.shape)}")
        total = total + F.mse_loss(F.normalize(s.float(), dim=dim), F.normalize(t.detach().float(), dim=dim))
    return total
