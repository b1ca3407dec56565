import pytest
import torch

from facerep.backbones.vit import build_vit
from facerep.models.dense import DenseHead
from facerep.tasks.alignment import alignment_loss, gaussian_heatmaps, soft_argmax


def test_soft_argmax_reads_out_a_peak_position():
    logits = torch.full((1, 2, 8, 8), -20.0)
    logits[0, 0, 2, 5] = 20.0  # row 2, column 5
    logits[0, 1, 7, 0] = 20.0
    points = soft_argmax(logits)
    torch.testing.assert_close(points[0, 0], torch.tensor([5.5 / 8, 2.5 / 8]), atol=1e-4, rtol=0)
    torch.testing.assert_close(points[0, 1], torch.tensor([0.5 / 8, 7.5 / 8]), atol=1e-4, rtol=0)


def test_gaussian_heatmap_peaks_at_the_landmark():
    target = torch.tensor([[[0.25, 0.75]]])  # x, y in [0, 1]
    maps = gaussian_heatmaps(target, (16, 16), sigma=1.25)
    assert maps.shape == (1, 1, 16, 16)
    peak = maps[0, 0].argmax()
    assert divmod(peak.item(), 16) in {(11, 3), (11, 4), (12, 3), (12, 4)}  # y=12, x=4 pixel edge
    assert maps.max() <= 1.0


def test_alignment_loss_terms_and_gradient():
    logits = torch.zeros(2, 3, 8, 8, requires_grad=True)
    target = torch.rand(2, 3, 2)
    loss, terms = alignment_loss(
        logits, soft_argmax(logits), target, sigma=1.0, heatmap_weight=0.5, heatmap_size=16
    )
    torch.testing.assert_close(loss, terms["distance"] + 0.5 * terms["heatmap_bce"])
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [64, 96])
def test_dense_head_outputs_quarter_resolution(size):
    backbone = build_vit("vit_tiny_patch16_224", img_size=size, depth=4, embed_dim=64, num_heads=2)
    head = DenseHead(backbone, [0, 1, 2, 3], channels=32, out_channels=5)
    out = head(torch.randn(2, 3, size, size))
    assert out.shape == (2, 5, size // 4, size // 4)
    with pytest.raises(ValueError, match="need 4 pyramid levels"):
        DenseHead(backbone, [1, 3], channels=32, out_channels=5)
