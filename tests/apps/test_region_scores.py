"""Scoring region heatmaps against parsing masks: IoU by hand, the grid baseline, the collapse read-outs."""

import pytest
import torch

from facerep.apps.heatmaps import best_matches, grid_assignment, region_iou, spread
from facerep.data.synthetic import LAPA_CLASSES


def test_region_iou_by_hand():
    assignment = torch.tensor([[[0, 0], [1, 1]]])  # region 0 top row, region 1 bottom row
    masks = torch.tensor([[[2, 2], [2, 0]]])  # class 2 on three pixels, class 0 on one
    iou = region_iou(assignment, masks, num_regions=2, num_classes=3)
    assert iou[0, 2].item() == pytest.approx(2 / 3) and iou[0, 0].item() == 0.0
    assert iou[1, 2].item() == pytest.approx(1 / 4) and iou[1, 0].item() == pytest.approx(1 / 2)
    assert iou[:, 1].sum().item() == 0.0  # an absent class has no union: 0, not NaN
    best = best_matches(torch.nn.functional.pad(iou, (0, len(LAPA_CLASSES) - 3)))
    assert [r["class"] for r in best["per_query"]] == [LAPA_CLASSES[2], LAPA_CLASSES[0]]
    assert best["mean_best_iou"] == pytest.approx((2 / 3 + 1 / 2) / 2) and best["classes_matched"] == 2
    with pytest.raises(ValueError, match="differ"):
        region_iou(assignment, masks[:, :1], 2, 3)


def test_grid_assignment_is_as_square_as_possible():
    grid = grid_assignment(8, 8)  # 2 rows x 4 columns
    assert grid.shape == (8, 8) and sorted(grid.unique().tolist()) == list(range(8))
    assert grid[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and grid[7, 0].item() == 4
    assert torch.equal(torch.bincount(grid.flatten()), torch.full((8,), 8))


def test_spread_reads_collapse_and_whether_queries_split_images_or_the_set():
    uniform = torch.full((2, 4, 4, 4), 0.25)  # argmax ties go to query 0: one query owns every image
    one_vector = torch.ones(2, 4, 3)
    assert spread(one_vector, uniform) == pytest.approx(
        {"embedding_cosine": 1.0, "heatmap_peak": 0.25, "largest_query_share": 1.0, "queries_per_image": 1.0}
    )
    # image 0: its four quarters owned by queries 0-3; image 1: owned by query 2 alone
    owners = torch.stack([torch.arange(4).repeat_interleave(4).reshape(4, 4), torch.full((4, 4), 2)])
    one_hot = torch.nn.functional.one_hot(owners, 4).permute(0, 3, 1, 2).float()
    orthogonal = torch.eye(4).expand(2, 4, 4)
    assert spread(orthogonal, one_hot) == pytest.approx(
        {"embedding_cosine": 0.0, "heatmap_peak": 1.0, "largest_query_share": (0.25 + 1) / 2,
         "queries_per_image": (4 + 1) / 2}
    )  # fmt: skip
