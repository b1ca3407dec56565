"""The OpenAI CLIP / FaRL checkpoint layout: key conversion both ways, detection, and ``load_backbone`` on
FaRL-layout files against open_clip's own model code on the same (random, tiny) weights."""

import pytest
import safetensors.torch
import torch
from open_clip.model import build_model_from_openai_state_dict
from timm.layers import resample_abs_pos_embed

from clip_files import IMAGE, PATCH, WIDTH, assert_malformed_refused, mim_head, openai_state, save_torchscript
from facerep.backbones import CheckpointError, build_vit, load_backbone
from facerep.backbones.clip_layout import block_indices, clip_to_vit, vit_to_clip
from facerep.backbones.io import clip_state, detect_format, read_backbone_state


@pytest.fixture(scope="module")
def state():
    return openai_state()


@pytest.fixture(scope="module")
def reference(state):
    """open_clip's CLIP on the same weights (built without the MIM keys, which it would count as blocks)."""
    model = build_model_from_openai_state_dict(dict(state), cast_dtype=None).float()
    model.load_state_dict(state)
    model.visual.output_tokens = True
    return model.eval()


@pytest.fixture(scope="module")
def farl_file(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("farl") / "FaRL-Base-Patch16-LAIONFace20M-ep16.pth"
    torch.save({"state_dict": state | mim_head()}, path)
    return path


def test_keys_convert_both_ways_and_ignore_the_mim_head(state):
    tower, proj = clip_to_vit(state | mim_head(), "f.pth")
    assert torch.equal(proj, state["visual.proj"])
    assert block_indices(tower, "blocks.") == [0, 1]
    assert tower["cls_token"].shape == (1, 1, WIDTH) and tower["pos_embed"].shape == (1, 17, WIDTH)
    assert torch.equal(
        tower["blocks.1.attn.qkv.weight"], state["visual.transformer.resblocks.1.attn.in_proj_weight"]
    )
    assert torch.equal(tower["norm.bias"], state["visual.ln_post.bias"])
    back = vit_to_clip(tower, proj)
    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    assert back.keys() == visual.keys()
    assert all(torch.equal(back[k], visual[k]) for k in visual)


def test_a_facerep_vit_that_is_not_clip_shaped_round_trips():
    """GELU, no pre-norm (a patch bias), layer scale: facerep's own CLIP files keep these keys too."""
    vit = build_vit("vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=64, num_heads=2, layer_scale=0.1)
    tower, proj = clip_to_vit(vit_to_clip(vit.state_dict()), "f")
    assert proj is None and tower.keys() == vit.state_dict().keys()
    assert all(torch.equal(tower[k], v) for k, v in vit.state_dict().items())


def test_clip_state_unwraps_state_dict_and_ddp_prefix(state):
    assert clip_state({"state_dict": {f"module.{k}": v for k, v in state.items()}}).keys() == state.keys()
    assert clip_state(state) is not None
    assert clip_state({"state_dict": {"blocks.0.norm1.weight": torch.ones(2)}}) is None


def test_load_backbone_on_a_farl_file_equals_open_clip_tokens_after_ln_post(farl_file, state, reference):
    vit = load_backbone(farl_file)
    assert read_backbone_state(farl_file)[1] == "clip"
    assert (vit.arch.depth, vit.arch.num_heads, vit.arch.act, vit.arch.norm_eps) == (2, 2, "quick_gelu", 1e-5)
    assert vit.arch.pre_norm and vit.arch.img_size == IMAGE
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pooled, tokens = reference.visual(images)
        features = vit.forward_features(images)
    torch.testing.assert_close(features[:, 1:], tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(features[:, 0] @ state["visual.proj"], pooled, atol=1e-5, rtol=0)


def test_bare_pt_safetensors_and_ddp_files_are_clip(state, tmp_path):
    torch.save(state, tmp_path / "openai.pt")
    safetensors.torch.save_file(state, tmp_path / "open_clip.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    expected = load_backbone(tmp_path / "openai.pt").state_dict()
    for name in ("openai.pt", "open_clip.safetensors", "ddp.pth"):
        loaded = load_backbone(tmp_path / name).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), name
    assert detect_format({"state_dict": state}) == "clip"


def test_img_size_resamples_the_position_embedding(farl_file, state):
    vit = load_backbone(farl_file, img_size=64)
    grid = IMAGE // PATCH
    pos = state["visual.positional_embedding"][None]
    expected = resample_abs_pos_embed(pos, [2 * grid, 2 * grid], [grid, grid], num_prefix_tokens=1)
    torch.testing.assert_close(vit.pos_embed, expected)
    assert vit.pos_embed.requires_grad and vit.arch.pos_embed == "learned"  # CLIP towers learn theirs
    assert vit.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 1 + 64, WIDTH)


def _without(*prefixes):
    return lambda s: {k: v for k, v in s.items() if not k.startswith(prefixes)}


def _with(**entries):
    return lambda s: s | {k.replace("__", "."): v for k, v in entries.items()}


BLOCK_1 = "visual.transformer.resblocks.1."
MALFORMED = {
    "blocks-gap": (lambda s: {k.replace(BLOCK_1, BLOCK_1.replace("1", "2")): v for k, v in s.items()},
                   r"expected CLIP vision blocks visual\.transformer\.resblocks\.0\.\.N-1, found \[0, 2\]"),
    "missing-key": (_without(f"{BLOCK_1}ln_1.bias"), r"lacks visual\.transformer\.resblocks\.1\.ln_1\.bias"),
    "wrong-shape": (_with(**{f"{BLOCK_1}attn.in_proj_weight": torch.zeros(WIDTH, WIDTH)}),
                    r"resblocks\.1\.attn\.in_proj_weight has shape \[128, 128\]; expected \[384, 128\]"),
    "pos-grid": (_with(visual__positional_embedding=torch.zeros(18, WIDTH)),
                 r"visual\.positional_embedding has shape \[18, 128\]; expected \[1 \+ G\*G, 128\]"),
    "no-cls": (_without("visual.class_embedding"), r"lacks the tensor visual\.class_embedding"),
    "unknown-key": (_with(visual__extra__weight=torch.zeros(2)), r"visual\.extra\.weight is not understood"),
    "resnet": (lambda s: _with(visual__layer1__0__conv1__weight=torch.zeros(2))(
        _without("visual.transformer.", "visual.class_embedding")(s)), "a CLIP ResNet image tower"),
}  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_give_one_line_errors_naming_the_file_and_key(state, tmp_path, edit, message):
    assert_malformed_refused(load_backbone, edit(dict(state)), tmp_path / "bad.pth", message)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_a_torchscript_archive_is_refused_with_how_to_resave(tmp_path):
    path = save_torchscript(tmp_path / "ViT-B-16.pt")
    with pytest.raises(
        CheckpointError, match=r"TorchScript archive .* re-save it with .*state_dict\(\)"
    ) as info:
        load_backbone(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
