"""Deep-clustering assignment of pixel features to prototypes: Sinkhorn-balanced self-distillation.

FRA learns its facial mask embeddings by assigning every pixel feature of the momentum network to them
(its ``assign_loss`` / ``self_distill``, after SwAV and MSN): the teacher's per-pixel scores over the
``K`` mask embeddings are sharpened (temperature 0.04), balanced by a few Sinkhorn-Knopp iterations so
that every embedding receives an equal share of the pixels of the global batch, and the student's
scores (temperature 0.1) are trained by cross-entropy to predict them; a mean-entropy maximisation
term (MSN's ``me_max``) keeps the student's average assignment spread over the embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from facerep.runtime.distributed import all_gather_with_grad, is_distributed, world_size


def _global_sum(value: Tensor) -> Tensor:
    if is_distributed() and world_size() > 1:
        dist.all_reduce(value)
    return value


@torch.no_grad()
def sinkhorn(probs: Tensor, iterations: int = 3) -> Tensor:
    """Balance ``probs [M, K]`` (non-negative scores of ``M`` samples over ``K`` prototypes) so that each
    prototype gets ``1 / K`` of the total mass of the global batch (all ranks) and each row sums to 1.

    Follows FRA's ``distributed_sinkhorn``: the input is used as the transport kernel directly (it is
    already a softmax), ``iterations`` alternating prototype/sample normalisations, the sample one last.
    """
    if probs.ndim != 2:
        raise ValueError(f"sinkhorn needs [M, K] scores, got shape {tuple(probs.shape)}")
    if iterations < 1:
        raise ValueError(f"sinkhorn needs >= 1 iteration, got {iterations}")
    q = probs.float().t().clone()  # [K, M]
    num_prototypes, num_samples = q.shape[0], q.shape[1] * world_size()
    q /= _global_sum(q.sum())
    for _ in range(iterations):
        q /= _global_sum(q.sum(dim=1, keepdim=True))
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    return (q * num_samples).t()


def cluster_assignment_loss(
    student: Tensor,
    teacher: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
    sinkhorn_iterations: int = 3,
    mean_entropy_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy from Sinkhorn-balanced teacher assignments to student assignments, plus me-max.

    Args:
        student: ``[M, K]`` online scores (cosines) of ``M`` pixels against ``K`` mask embeddings.
        teacher: ``[M, K]`` momentum scores of the same pixels (no gradient needed).
        student_temp, teacher_temp: softmax temperatures (FRA: 0.1 and 0.04).
        sinkhorn_iterations: 0 keeps the teacher's softmax unbalanced.
        mean_entropy_weight: weight of ``log K - H(mean student assignment)`` (FRA: 1).

    Returns:
        ``(loss, cross_entropy, mean_entropy_gap)``; the gap is >= 0 and 0 when the average student
        assignment over the global batch is uniform.
    """
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"cluster_assignment_loss needs two [M, K] tensors of one shape, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    if student_temp <= 0 or teacher_temp <= 0:
        raise ValueError(f"temperatures must be > 0, got {student_temp} and {teacher_temp}")
    log_p = torch.log_softmax(student.float() / student_temp, dim=-1)
    with torch.no_grad():
        targets = torch.softmax(teacher.float() / teacher_temp, dim=-1)
        if sinkhorn_iterations:
            targets = sinkhorn(targets, sinkhorn_iterations)
    cross_entropy = -(targets * log_p).sum(-1).mean()
    mean_probs = all_gather_with_grad(log_p.exp().mean(0, keepdim=True)).mean(0)
    gap = (mean_probs * torch.log(mean_probs)).sum() + math.log(mean_probs.numel())
    return cross_entropy + mean_entropy_weight * gap, cross_entropy, gap
