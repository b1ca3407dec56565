import pytest
import timm
import torch

from facerep.backbones.vit import (
    CLIP_TOWER,
    build_vit,
    num_kept,
    parse_arch,
    random_keep_order,
    sincos_pos_embed_2d,
)
from facerep.models.patches import patchify, unpatchify


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_vit("vit_tiny_patch16_224", img_size=64, depth=2).eval()


def test_parse_arch_table():
    arch = parse_arch("vit_base_patch16_224")
    assert (arch.embed_dim, arch.depth, arch.num_heads, arch.patch_size, arch.img_size) == (
        768,
        12,
        12,
        16,
        224,
    )
    assert parse_arch("vit_huge_patch14", img_size=112).grid_size == 8
    with pytest.raises(ValueError, match="unknown ViT architecture"):
        parse_arch("resnet50")
    with pytest.raises(ValueError, match="not divisible"):
        parse_arch("vit_small_patch16_224", img_size=100)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_masking_keeps_exactly_the_configured_ratio(vit, ratio):
    x = torch.randn(3, 3, 64, 64)
    latent, mask, ids_restore = vit.forward_masked(x, ratio)
    keep = num_kept(16, ratio)
    assert keep == max(1, int(16 * (1 - ratio)))
    assert latent.shape == (3, 1 + keep, 192)
    assert mask.shape == (3, 16)
    assert torch.equal(mask.sum(dim=1), torch.full((3,), 16.0 - keep))
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(16).expand(3, -1))


def test_masking_is_per_sample_and_given_ids_are_used(vit):
    x = torch.randn(4, 3, 64, 64)
    _, mask, _ = vit.forward_masked(x, 0.75)
    assert len({tuple(m.tolist()) for m in mask}) > 1  # different samples get different masks
    ids = random_keep_order(4, 16, "cpu")
    a = vit.forward_masked(x, 0.75, ids)
    b = vit.forward_masked(x, 0.75, ids)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    kept = ids[:, :4]
    assert torch.all(a[1].gather(1, kept) == 0)


def test_unmasked_forward_matches_timm_forward_features(vit):
    x = torch.randn(2, 3, 64, 64)
    ids = torch.arange(16).expand(2, -1)
    latent, _, _ = vit.forward_masked(x, 0.0, ids)
    torch.testing.assert_close(latent, vit.forward_features(x), rtol=1e-5, atol=1e-5)


def test_block_tokens_are_prenorm_outputs(vit):
    x = torch.randn(2, 3, 64, 64)
    feats = vit.forward_block_tokens(x, [0, 1])
    assert [f.shape for f in feats] == [torch.Size([2, 17, 192])] * 2
    torch.testing.assert_close(vit.norm(feats[1]), vit.forward_features(x))
    with pytest.raises(ValueError, match="out of range"):
        vit.forward_block_tokens(x, [5])


def test_pyramid_and_pooled_from_one_pass_match_the_two_calls(vit):
    x = torch.randn(2, 3, 64, 64)
    maps, pooled = vit.pyramid_pooled(x, [0])
    torch.testing.assert_close(maps[0], vit.forward_pyramid(x, [0])[0])
    assert maps[0].shape == (2, 192, 4, 4)
    torch.testing.assert_close(pooled, vit.pooled(x))


def test_state_dict_loads_into_timm_strictly(vit):
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=0)
    model.load_state_dict(vit.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model.eval().forward_features(x), vit.forward_features(x))


def test_sincos_embedding_layout():
    emb = sincos_pos_embed_2d(8, 3)
    assert emb.shape == (10, 8)
    assert torch.all(emb[0] == 0)
    # first quarter: sin(x * 1) for column x; patch 4 is row 1, column 1
    assert emb[1 + 4, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert emb[1 + 3, 4].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())  # row 1, col 0: y part


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 32, 32)
    p = patchify(x, 8)
    assert p.shape == (2, 16, 192)
    assert torch.equal(p[0, 1], x[0, :, 0:8, 8:16].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(p, 8), x)


def test_clip_towers_learn_their_position_embedding_with_farls_init():
    """CLIP_TOWER: FaRL's VisualTransformer init (farl/network/farl/model.py): width**-0.5 * randn class and
    position embeddings, trunc_normal(0.02) Linear/Conv2d with zero biases, and nn.MultiheadAttention's
    xavier-uniform in_proj (which FaRL's apply never reaches)."""
    torch.manual_seed(0)
    vit = build_vit("vit_base_patch16_224", img_size=64, depth=2, **CLIP_TOWER)
    assert vit.pos_embed.requires_grad and vit.patch_embed.proj.bias is None
    for token in (vit.cls_token, vit.pos_embed):
        assert token.std().item() == pytest.approx(768**-0.5, rel=0.1)
    block = vit.blocks[0]
    for layer in (vit.patch_embed.proj, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.05)
    qkv = block.attn.qkv
    bound = (6 / (768 + 3 * 768)) ** 0.5  # xavier-uniform over [3D, D]
    assert qkv.weight.abs().max().item() <= bound
    assert qkv.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    assert not any(layer.bias.any() for layer in (qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2))


def test_mae_style_vits_keep_the_fixed_sincos_embedding(vit):
    assert vit.arch.pos_embed == "sincos" and not vit.pos_embed.requires_grad
    torch.testing.assert_close(vit.pos_embed[0], sincos_pos_embed_2d(192, 4))
    with pytest.raises(ValueError, match="unknown ViT position embedding"):
        build_vit("vit_tiny_patch16_224", pos_embed="rope")
