"""Mask drawers (BEiT's blockwise masks, uniform random ones) and the pipeline drawing them per sample."""

import math

import pytest
import torch
from PIL import Image

from facerep.data.masking import BlockMasking, RandomMasking, masked_count
from facerep.data.views import BatchSpec, draw_sample, random_masks

BEIT = BlockMasking(grid=14, count=masked_count(196, 0.4))  # FaRL's ViT-B/16 at 224: 78 of 196 patches


def test_the_count_is_round_ratio_times_patches():
    assert (masked_count(196, 0.4), masked_count(16, 0.4), masked_count(4, 0.5), masked_count(9, 0.0)) == (
        78,
        6,
        2,
        0,
    )
    with pytest.raises(ValueError, match="mask_ratio"):
        masked_count(196, 1.0)


def test_block_masks_reach_the_count_and_never_exceed_it():
    counts = [int(BEIT(torch.Generator().manual_seed(seed)).sum()) for seed in range(300)]
    # BEiT's rule ends a mask after ten tries that add nothing, so a few masks stop a little short
    assert max(counts) == 78 and min(counts) >= 60
    assert sum(c == 78 for c in counts) / len(counts) > 0.6
    assert 77 < sum(counts) / len(counts) <= 78


def test_block_masks_are_the_union_of_rectangles_within_beits_bounds():
    for seed in range(100):
        blocks = BEIT.blocks(torch.Generator().manual_seed(seed))
        mask = BEIT(torch.Generator().manual_seed(seed)).view(14, 14)
        union = torch.zeros(14, 14, dtype=torch.bool)
        for top, left, h, w in blocks:
            assert 1 <= h < 14 and 1 <= w < 14 and top + h <= 14 and left + w <= 14  # inside, narrower
            # h = round(sqrt(area * r)), w = round(sqrt(area / r)), r in [0.3, 1 / 0.3]: rounding moves
            # each side by at most half a patch
            assert (h - 0.5) / (w + 0.5) <= 1 / 0.3 and (h + 0.5) / (w - 0.5) >= 0.3
            union[top : top + h, left : left + w] = True
        assert torch.equal(union, mask)
        first = blocks[0][2] * blocks[0][3]  # area >= min_block = 16 before rounding the sides
        assert first >= 12


def test_min_block_is_capped_on_grids_too_small_for_it():
    tiny = BlockMasking(grid=4, count=6)  # a 64 px ViT/16: 40 % is 6 patches, a block holds at most 3 x 3
    assert (tiny.smallest_block, BlockMasking(4, 12).smallest_block, BEIT.smallest_block) == (6, 9, 16)
    counts = [int(tiny(torch.Generator().manual_seed(s)).sum()) for s in range(200)]
    assert max(counts) == 6 and sum(counts) / len(counts) > 5.9


def test_random_masks_hold_exactly_the_count():
    drawer = RandomMasking(196, 78)
    masks = torch.stack([drawer(torch.Generator().manual_seed(s)) for s in range(20)])
    assert masks.dtype == torch.bool and (masks.sum(1) == 78).all()
    assert len({tuple(m.nonzero().flatten().tolist()) for m in masks}) == 20


def test_masks_are_drawn_per_sample_from_the_seed():
    spec = BatchSpec((lambda image: torch.zeros(3, 8, 8),), masks=1, num_patches=196, draw_mask=BEIT)
    image = Image.new("RGB", (8, 8))
    (first,) = draw_sample(spec, image, seed=5)[1]
    (again,) = draw_sample(spec, image, seed=5)[1]
    (other,) = draw_sample(spec, image, seed=6)[1]
    assert first.dtype == torch.bool and first.shape == (196,)
    assert torch.equal(first, again) and not torch.equal(first, other)
    batch = random_masks(spec, 3, torch.Generator().manual_seed(0))
    assert len(batch) == 1 and batch[0].shape == (3, 196) and batch[0].dtype == torch.bool


def test_block_masking_validates_its_arguments():
    with pytest.raises(ValueError, match="count"):
        BlockMasking(grid=4, count=17)
    with pytest.raises(ValueError, match="min_aspect"):
        BlockMasking(grid=4, count=6, min_aspect=1.5)
    assert math.isclose(BEIT.min_aspect, 0.3)
