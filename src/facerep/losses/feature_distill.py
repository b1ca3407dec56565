"""Feature losses against a frozen teacher: MCF's perceptual term (teacher features of the reconstruction vs
of the input) and direct token regression (the student's own tokens vs the teacher's)."""

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


def token_regression_loss(predicted: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of the MSE between predicted tokens and the teacher's, layer-normalised.

    The direct feature-distillation term (Wei et al.'s FD, BEiT v2's and MaskDistill's targets): each target
    token is standardised over its channels (a layer norm without affine), so every block and every teacher
    scale weighs the same and a constant prediction scores 1.

    Args:
        predicted: per block ``[N, T, D]``: the student's tokens through its regression head (with gradient).
        target: per block ``[N, T, D]``: the teacher's tokens (detached here).
    Returns:
        scalar ``mean_b mean((p_b - layer_norm(t_b))^2)``.
    """
    if len(predicted) != len(target) or not predicted:
        raise ValueError(f"need the same non-zero number of blocks, got {len(predicted)} and {len(target)}")
    total = predicted[0].new_zeros((), dtype=torch.float32)
    for p, t in zip(predicted, target, strict=True):
        if p.shape != t.shape:
            raise ValueError(f"token shapes differ: {list(p.shape)} vs {list(t.shape)}")
        t = t.detach().float()
        total = total + F.mse_loss(p.float(), F.layer_norm(t, t.shape[-1:]))
    return total / len(predicted)
