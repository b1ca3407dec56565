"""Token diagnostics: effective rank and ridge R^2 against hand-computed cases, and one token order."""

import math

import pytest
import torch
import torch.nn.functional as F

from facerep.metrics.tokens import effective_rank, grid_positions, image_patches, ridge_r2, token_rows


def test_effective_rank_by_hand():
    eye = torch.eye(5, dtype=torch.float64)
    even = torch.cat([eye[:3], -eye[:3]])  # 3 directions, equal variance, already centred
    assert effective_rank(even) == pytest.approx(3.0)
    uneven = torch.cat([2 * eye[:1], -2 * eye[:1], eye[1:2], -eye[1:2]]) + 7.0  # variances 4 : 1, offset
    p = torch.tensor([0.8, 0.2], dtype=torch.float64)
    assert effective_rank(uneven) == pytest.approx(math.exp(float(-(p * p.log()).sum())))


def test_ridge_r2_by_hand():
    torch.manual_seed(0)
    x = torch.randn(200, 6, dtype=torch.float64)
    y = x @ torch.randn(6, 3, dtype=torch.float64) + 5.0
    assert ridge_r2(x[:150], y[:150], x[150:], y[150:], strength=1e-9) == pytest.approx(1.0, abs=1e-9)
    # an infinitely strong ridge predicts the train mean (2): test targets 1 and 3 -> R^2 = 1 - 2 / 2 = 0
    x_train, y_train = torch.randn(4, 2, dtype=torch.float64), torch.tensor([[1.0], [3.0], [1.0], [3.0]])
    x_test, y_test = torch.randn(2, 2, dtype=torch.float64), torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    assert ridge_r2(x_train, y_train.double(), x_test, y_test, strength=1e12) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="rows differ"):
        ridge_r2(x[:10], y[:9], x[10:], y[10:])


def test_patches_positions_and_token_rows_share_one_order():
    grid, patch = 3, 4
    index = torch.arange(grid * grid, dtype=torch.float32).view(1, 1, grid, grid)
    images = (
        torch.cat([index, 10 + index]).repeat_interleave(patch, -1).repeat_interleave(patch, -2)
    )  # [2, 1, 12, 12]
    maps = F.avg_pool2d(images, patch)  # a patch embedding: one token per patch, [2, 1, 3, 3]
    rows = token_rows(maps)[:, 0]
    assert torch.equal(rows, image_patches(images, patch).mean(1))
    place = grid_positions(2, grid)
    assert torch.equal(rows, place[:, 0] * grid + place[:, 1] + torch.tensor([0.0] * 9 + [10.0] * 9))
