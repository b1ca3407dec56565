"""What a backbone's patch tokens keep: linear readability of a target per token, and effective rank.

Used to explain a read-out, not to score a task (``scripts/token_diagnostics.py``, docs/benchmark.md "Why
MAE and MCF from scratch do not beat random init"). Tokens are rows ``[M, D]``: ``M = N * G * G`` tokens of
``N`` images in row-major grid order (:func:`token_rows`), the order of :func:`image_patches` and
:func:`grid_positions`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["effective_rank", "grid_positions", "image_patches", "ridge_r2", "token_rows"]


def ridge_r2(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, strength: float = 1e-3
) -> float:
    """Test R^2 (mean over the outputs) of ridge regression from ``x [M, D]`` (z-scored with the train rows'
    statistics) to ``y [M, K]``; the ridge strength is ``strength`` times the Gram matrix's mean eigenvalue,
    so it does not depend on the features' scale. 1: ``y`` is a linear function of ``x``; 0: no better than
    the train mean. Primal, at one strength: the frozen read-outs' leave-one-out ``ridge_fit`` is dual (an
    ``M x M`` Gram matrix), too large for tens of thousands of tokens."""
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError(
            f"rows differ: x {x_train.shape} / {x_test.shape}, y {y_train.shape} / {y_test.shape}"
        )
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    a, b = (x_train - mean) / std, (x_test - mean) / std
    y_mean = y_train.mean(0)
    gram = a.T @ a
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram + strength * gram.diagonal().mean() * eye, a.T @ (y_train - y_mean))
    residual = ((b @ weight + y_mean - y_test) ** 2).sum(0)
    total = ((y_test - y_test.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    return float((1 - residual / total).mean())


def effective_rank(tokens: Tensor) -> float:
    """``exp`` of the entropy of ``p_i = s_i^2 / sum s^2`` over the singular values ``s`` of the centred
    ``tokens [M, D]`` (Roy and Vetterli 2007): ``k`` for variance spread evenly over ``k`` directions."""
    s2 = torch.linalg.svdvals(tokens - tokens.mean(0)) ** 2
    p = s2 / s2.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


def token_rows(maps: Tensor) -> Tensor:
    """``[N, D, G, G]`` token maps -> ``[N * G * G, D]``, each image's tokens in row-major order."""
    return maps.flatten(2).transpose(1, 2).flatten(0, 1)


def image_patches(images: Tensor, patch: int) -> Tensor:
    """``[N, C, S, S]`` -> the pixels of each ``patch x patch`` patch, ``[N * G * G, C * patch * patch]``,
    in :func:`token_rows`' order (``G = S // patch``)."""
    return F.unfold(images, patch, stride=patch).transpose(1, 2).flatten(0, 1)


def grid_positions(n: int, grid: int) -> Tensor:
    """Each token's (row, column) on its ``grid x grid`` map, ``[n * grid * grid, 2]`` float, in
    :func:`token_rows`' order."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], 1).float().repeat(n, 1)
