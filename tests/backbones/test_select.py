"""Weight selection (facerep.backbones.select): a ViT started as a subset of a wider one."""

import pytest
import torch

from facerep.backbones.select import select_weights_, spread
from facerep.backbones.vit import build_vit
from facerep.config import ConfigError, PretrainConfig, load_config
from facerep.methods.base import build_encoder


def vit(
    embed_dim: int, heads: int, depth: int = 2, patch: int = 8, size: int = 32, **fields
) -> torch.nn.Module:
    torch.manual_seed(embed_dim + depth + patch)
    model = build_vit(f"vit_tiny_patch{patch}", img_size=size, embed_dim=embed_dim, num_heads=heads,
                      depth=depth, **fields).eval()  # fmt: skip
    with torch.no_grad():  # weights off their init (nonzero biases, learned-looking position and scales)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("target_scale", [None, 1.0])
def test_selecting_a_whole_vit_reproduces_it_with_layer_scale_folded_or_kept(target_scale):
    """An equal-size target computes exactly what its source computes, whether it folds the source's
    layer scale into the projections before it (no LayerScale) or keeps it."""
    source = vit(32, 2, layer_scale=1.0)
    target = select_weights_(vit(32, 2, layer_scale=target_scale), source)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.forward_features(x), source.forward_features(x), atol=1e-5, rtol=1e-5)


def test_a_narrower_shallower_vit_takes_evenly_spaced_channels_the_first_heads_and_blocks():
    source = vit(64, 4, depth=3)  # head width 16
    target = select_weights_(vit(32, 2, depth=2, patch=16), source)
    s, t = source.state_dict(), target.state_dict()
    ch, hidden = torch.arange(0, 64, 2), torch.arange(0, 256, 2)
    assert torch.equal(spread(32, 64), ch)
    torch.testing.assert_close(t["cls_token"], s["cls_token"][..., ch])
    torch.testing.assert_close(t["blocks.1.norm1.weight"], s["blocks.1.norm1.weight"][ch])
    rows = torch.cat(
        [torch.arange(32), 64 + torch.arange(32), 128 + torch.arange(32)]
    )  # q, k, v of heads 0-1
    torch.testing.assert_close(t["blocks.1.attn.qkv.weight"], s["blocks.1.attn.qkv.weight"][rows][:, ch])
    torch.testing.assert_close(t["blocks.1.attn.proj.weight"], s["blocks.1.attn.proj.weight"][ch][:, :32])
    torch.testing.assert_close(t["blocks.0.mlp.fc1.weight"], s["blocks.0.mlp.fc1.weight"][hidden][:, ch])
    torch.testing.assert_close(t["blocks.0.mlp.fc2.weight"], s["blocks.0.mlp.fc2.weight"][ch][:, hidden])
    assert t["patch_embed.proj.weight"].shape == (32, 3, 16, 16)  # 8 -> 16 px patches, resampled
    assert t["pos_embed"].shape == (1, 1 + 4, 32)  # 4 x 4 -> 2 x 2 grid, resampled
    assert target.forward_features(torch.randn(1, 3, 32, 32)).isfinite().all()


def test_shapes_that_cannot_be_selected_are_one_line_errors():
    with pytest.raises(ConfigError, match="head width 8 from 16"):
        select_weights_(vit(32, 4), vit(64, 4))
    with pytest.raises(ConfigError, match="wider or deeper"):
        select_weights_(vit(64, 4), vit(32, 2))
    with pytest.raises(ConfigError, match="layer scale in the target only"):
        select_weights_(vit(32, 2, layer_scale=1.0), vit(32, 2))


def test_model_select_from_starts_the_encoder_from_a_wider_file(tmp_path):
    from facerep.backbones import export_backbone

    source = vit(64, 4)
    path = export_backbone(source, tmp_path)
    base = ["model.arch=vit_tiny_patch8", "model.embed_dim=32", "model.num_heads=2", "model.depth=2",
            "data.image_size=32", f"model.select_from={path}"]  # fmt: skip
    encoder = build_encoder(load_config(PretrainConfig, None, base))
    torch.testing.assert_close(encoder.cls_token, source.cls_token[..., ::2])
    with pytest.raises(ConfigError, match="set one of them"):
        build_encoder(load_config(PretrainConfig, None, [*base, f"model.init={path}"]))
    with pytest.raises(ConfigError, match="needs a ViT source"):
        build_encoder(load_config(PretrainConfig, None, ["model.arch=resnet18", f"model.select_from={path}"]))
