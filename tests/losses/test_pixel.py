import pytest
import torch

from facerep.losses.pixel import masked_pixel_loss


def test_only_masked_patches_count():
    pred = torch.zeros(1, 4, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert masked_pixel_loss(pred, target, mask).item() == pytest.approx((4 + 16) / 2)


def test_norm_pix_normalises_each_patch():
    target = torch.tensor([[[1.0, 3.0]]])  # mean 2, var (unbiased) 2
    pred = torch.zeros(1, 1, 2)
    expected = ((1 / (2 + 1e-6) ** 0.5) ** 2 * 2) / 2
    assert masked_pixel_loss(pred, target, torch.ones(1, 1), norm_pix=True).item() == pytest.approx(expected)


def test_shape_check():
    with pytest.raises(ValueError, match="shapes"):
        masked_pixel_loss(torch.zeros(1, 4, 2), torch.zeros(1, 4, 3), torch.ones(1, 4))
