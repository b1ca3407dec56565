"""FRA's region neck: heatmaps, the batch-averaged mask embeddings and their EMA, DETR's position
encoding, and the per-position MLP equal to the reference code's 1x1 Conv1d MLP."""

import math

import pytest
import torch
from torch import nn

from facerep.models.heads import mlp_head
from facerep.models.regions import MaskQueryDecoder, RegionNeck, pointwise, sine_position_encoding


def _cosines(embeddings, pixels):
    """``[Q, D]`` x ``[B, D, h, w]`` -> ``[B, Q, h, w]``."""
    return torch.einsum(
        "qc,bchw->bqhw", nn.functional.normalize(embeddings, dim=1), nn.functional.normalize(pixels, dim=1)
    )


def _neck(**kw):
    torch.manual_seed(0)
    return RegionNeck(in_dim=16, hidden_dim=32, dim=8, num_queries=4, decoder_heads=2, **kw)


def test_heatmaps_sum_to_one_over_queries_and_shapes():
    neck = _neck()
    x = torch.randn(3, 16, 5, 6)
    for use_batch in (True, False):
        out = neck(x, use_batch=use_batch)
        assert out["heatmaps"].shape == out["dots"].shape == (3, 4, 5, 6)
        torch.testing.assert_close(out["heatmaps"].sum(1), torch.ones(3, 5, 6))
        assert out["global"].shape == (3, 8) and out["regions"].shape == (3, 4, 8)
        assert out["dots"].abs().max() <= 1 + 1e-5  # cosines


def test_training_scores_every_image_against_the_batch_mean_and_refreshes_the_ema_proto():
    neck = _neck(proto_momentum=0.9)
    x = torch.randn(3, 16, 4, 4)
    proto = neck.proto.clone()
    embed = neck.decoder(x)
    pixels = torch.randn(3, 8, 4, 4)
    dots = neck.scores(pixels, embed)
    mean = embed.mean(0)
    torch.testing.assert_close(dots, _cosines(mean, pixels))
    torch.testing.assert_close(neck.proto, 0.9 * proto + 0.1 * mean.detach())
    # inference: the EMA proto, and nothing moves
    before = neck.proto.clone()
    eval_dots = neck.scores(pixels, None)
    torch.testing.assert_close(
        eval_dots,
        torch.einsum(
            "qc,bchw->bqhw", nn.functional.normalize(before, dim=1), nn.functional.normalize(pixels, dim=1)
        ),
    )
    assert torch.equal(neck.proto, before)


def test_region_embeddings_pool_the_feature_map_with_the_normalised_heatmaps():
    neck = _neck().eval()
    x = torch.randn(2, 16, 3, 3)
    out = neck(x, use_batch=False)
    w = out["heatmaps"] + 1e-7
    w = w / w.sum(dim=(2, 3), keepdim=True)
    pooled = torch.einsum("bchw,bqhw->bqc", x, w)
    expected = neck.project_region(pooled.reshape(-1, 16)).reshape(2, 4, 8)
    torch.testing.assert_close(out["regions"], expected)


def test_pointwise_mlp_equals_the_reference_1x1_conv1d_mlp():
    torch.manual_seed(0)
    mlp = mlp_head(6, 10, 4, last_bn=False)
    conv = nn.Sequential(
        nn.Conv1d(6, 10, 1, bias=False), nn.BatchNorm1d(10), nn.ReLU(), nn.Conv1d(10, 4, 1, bias=False)
    )
    with torch.no_grad():
        conv[0].weight.copy_(mlp[0].weight[..., None])
        conv[1].weight.copy_(mlp[1].weight)
        conv[1].bias.copy_(mlp[1].bias)
        conv[3].weight.copy_(mlp[3].weight[..., None])
    x = torch.randn(3, 6, 7)  # [B, C, L]: BatchNorm over batch and positions alike
    torch.testing.assert_close(pointwise(mlp, x), conv(x))
    torch.testing.assert_close(mlp[1].running_mean, conv[1].running_mean)


def test_sine_position_encoding_is_detrs():
    pos = sine_position_encoding(2, 2, 8)  # 4 features per axis, frequencies 1, 1, 100, 100
    y0 = math.pi * 1 / (2 + 1e-6) * 2  # first row: 1 / h of the 2 pi range
    expected_row0_y = [math.sin(y0), math.cos(y0), math.sin(y0 / 100), math.cos(y0 / 100)]
    torch.testing.assert_close(pos[0, :4], torch.tensor(expected_row0_y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pos[1, :4], pos[0, :4])  # same row, other column: y half unchanged
    assert not torch.allclose(pos[0, 4:], pos[1, 4:])
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(2, 2, 6)


def test_mask_query_decoder_gives_one_distinct_embedding_per_query():
    torch.manual_seed(0)
    decoder = MaskQueryDecoder(16, 8, num_queries=5, layers=2, heads=2, ffn_dim=8, dropout=0.0)
    out = decoder(torch.randn(2, 16, 3, 3))
    assert out.shape == (2, 5, 8)
    assert torch.cdist(out[0], out[0]).add(torch.eye(5)).min() > 1e-3


def test_zero_queries_are_one_embedding_on_a_uniform_map_and_learned_content_separates_them():
    """DETR's zero-initialised queries differ only in their attention weights, which cannot matter when every
    position holds the same feature; Mask2Former's learned query features give each query its own content."""
    x = torch.randn(2, 16, 1, 1).expand(2, 16, 3, 3)  # the same feature at every position
    outs = {}
    for init in ("zeros", "learned"):
        torch.manual_seed(0)
        decoder = MaskQueryDecoder(
            16, 8, num_queries=4, layers=2, heads=2, ffn_dim=8, dropout=0.1, query_init=init
        )
        outs[init] = decoder.eval()(x)
    zeros, learned = outs["zeros"], outs["learned"]
    torch.testing.assert_close(zeros, zeros[:, :1].expand_as(zeros))
    assert torch.cdist(learned[0], learned[0]).add(torch.eye(4)).min() > 1e-2
    with pytest.raises(ValueError, match="query_init"):
        MaskQueryDecoder(16, 8, 4, 1, 2, 8, 0.0, "random")


def _std(t: torch.Tensor) -> float:
    return t.detach().double().std().item()


def test_heads_and_decoder_start_as_fras_code_initialises_them():
    """FRA's ``MLP1D.init_weights``: kaiming-normal with fan_out (Caffe2's MSRAFill) for every layer of the
    three neck MLPs; DETR's ``_reset_parameters``: xavier-uniform for every matrix of the decoder layers
    (torch's default would leave ``out_proj`` at kaiming-uniform, a = sqrt(5)); ``c2_xavier_fill`` for the
    input projection (kaiming-uniform with a = 1, bias 0); the query embeddings standard normal."""
    torch.manual_seed(0)
    dim, width = 128, 256
    neck = RegionNeck(in_dim=64, hidden_dim=width, dim=dim, num_queries=8, decoder_heads=4)
    for mlp in (neck.project, neck.project_pixel, neck.project_region):
        for layer in (mlp[0], mlp[3]):
            assert _std(layer.weight) == pytest.approx(math.sqrt(2 / layer.out_features), rel=0.05)
        assert torch.equal(mlp[1].weight, torch.ones(width)) and torch.equal(mlp[1].bias, torch.zeros(width))
    decoder = neck.decoder
    for layer in decoder.layers:
        for attn in (layer.self_attn, layer.cross_attn):
            bound = math.sqrt(6 / (dim + 3 * dim))  # in_proj_weight [3D, D]
            assert attn.in_proj_weight.abs().max() <= bound
            assert _std(attn.in_proj_weight) == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert _std(attn.out_proj.weight) == pytest.approx(math.sqrt(1 / dim), rel=0.05)  # xavier, D x D
        for linear in (layer.ffn[0], layer.ffn[3]):
            assert _std(linear.weight) == pytest.approx(math.sqrt(2 / (dim + dim)), rel=0.05)
    proj = decoder.input_proj
    assert _std(proj.weight) == pytest.approx(1 / math.sqrt(64), rel=0.05)  # kaiming-uniform, a = 1
    assert proj.weight.abs().max() <= math.sqrt(3 / 64) and torch.equal(proj.bias, torch.zeros(dim))
    assert _std(decoder.query_embed) == pytest.approx(1.0, rel=0.15)
