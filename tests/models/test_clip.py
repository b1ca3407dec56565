"""``CLIPModel``, CLIP's text tower and ``load_clip`` / ``save_clip``: FaRL-layout, OpenAI (.pt) and
safetensors files against open_clip's own model code on the same (random, tiny) weights."""

import json

import pytest
import safetensors
import safetensors.torch
import torch
from open_clip.model import build_model_from_openai_state_dict

from clip_files import EMBED, IMAGE, WIDTH, assert_malformed_refused, mim_head, openai_state, save_torchscript
from facerep import load_backbone, load_clip
from facerep.backbones import CheckpointError, build_vit
from facerep.models.clip import CLIPModel, clip_state_dict, save_clip
from facerep.models.text import TextArch, TextTransformer

TEXT_WIDTH, CONTEXT, VOCAB = 128, 16, 49408  # the real vocabulary, so the tokenizer can feed the tower


@pytest.fixture(scope="module")
def state():
    return openai_state(text_width=TEXT_WIDTH, vocab=VOCAB, context=CONTEXT)


@pytest.fixture(scope="module")
def reference(state):
    """open_clip's CLIP on the same weights (built without the MIM keys, which it would count as blocks)."""
    model = build_model_from_openai_state_dict(dict(state), cast_dtype=None).float()
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def files(state, tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    torch.save({"state_dict": state | mim_head()}, root / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth")
    torch.save(state, root / "ViT-B-16.pt")
    safetensors.torch.save_file(state, root / "open_clip_model.safetensors")
    return {"farl": root / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth", "openai": root / "ViT-B-16.pt",
            "safetensors": root / "open_clip_model.safetensors"}  # fmt: skip


def caption_ids():
    """Token ids ``[4, CONTEXT]``: end-of-text (the largest id) at different places, zero padding."""
    ids = torch.randint(1, VOCAB - 1, (4, CONTEXT), generator=torch.Generator().manual_seed(5))
    for row, end in enumerate((3, CONTEXT - 1, 1, 9)):
        ids[row, end] = VOCAB - 1
        ids[row, end + 1 :] = 0
    return ids


IMAGES = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", ["farl", "openai", "safetensors"])
def test_load_clip_equals_open_clip(files, reference, kind):
    model = load_clip(files[kind])
    assert not model.training and model.embed_dim == EMBED
    assert model.text_arch == TextArch(VOCAB, CONTEXT, TEXT_WIDTH, 2, 2, EMBED)
    ids = caption_ids()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_image(IMAGES), reference.encode_image(IMAGES), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(model.encode_text(ids), reference.encode_text(ids), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.logit_scale_value(), reference.logit_scale.exp())
        image, text, scale = model(IMAGES, ids)
    torch.testing.assert_close(image, reference.encode_image(IMAGES, normalize=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(4))
    assert scale.item() == pytest.approx(torch.tensor(2.5).exp().item())
    captions = model.tokenize(["a smiling face", "a photo of a man with glasses"])
    assert captions.shape == (2, CONTEXT) and captions.dtype == torch.int64
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(captions), reference.encode_text(captions), atol=1e-5, rtol=0
        )


def test_load_backbone_and_load_clip_share_the_image_tower(files):
    model, vit = load_clip(files["farl"]), load_backbone(files["farl"])
    with torch.no_grad():
        tokens = vit.forward_features(IMAGES)
        torch.testing.assert_close(model.project_image(tokens), model.encode_image(IMAGES))


def test_text_tower_keys_are_exactly_the_openai_ones(state, reference):
    text = TextTransformer(TextArch(VOCAB, CONTEXT, TEXT_WIDTH, 2, 2, EMBED))
    expected = {k for k in reference.state_dict() if not k.startswith("visual.") and k != "logit_scale"}
    assert set(text.state_dict()) == expected
    text.load_state_dict({k: state[k] for k in expected}, strict=True)


def test_text_init_follows_clip():
    arch = TextArch(vocab_size=4096, context_length=77, width=256, layers=4, heads=4, embed_dim=128)
    text = TextTransformer(arch)
    block = text.transformer.resblocks[0]
    stds = {
        "token": (text.token_embedding.weight, 0.02),
        "position": (text.positional_embedding, 0.01),
        "attn": (block.attn.in_proj_weight, 256**-0.5),
        "out": (block.attn.out_proj.weight, 256**-0.5 * 8**-0.5),
        "fc": (block.mlp.c_fc.weight, 512**-0.5),
        "projection": (text.text_projection, 256**-0.5),
    }
    for name, (weight, std) in stds.items():
        assert weight.std().item() == pytest.approx(std, rel=0.1), name
    assert not block.attn.in_proj_bias.any()


def test_a_new_model_has_clip_defaults_and_checks_ids():
    vit = build_vit("vit_tiny_patch16_224", img_size=32, depth=1, embed_dim=64, num_heads=2)
    model = CLIPModel(vit, TextArch(vocab_size=VOCAB, context_length=8, width=64, layers=1, heads=1))
    assert model.embed_dim == 512 and model.visual_proj.shape == (64, 512)
    assert model.logit_scale_value().item() == pytest.approx(1 / 0.07)
    assert model.tokenize("a face").shape == (1, 8)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.logit_scale_value().item() == 100.0
    assert CLIPModel(vit, TextArch(width=64, layers=1, heads=1), embed_dim=32).text.text_projection.shape == (
        64,
        32,
    )
    with pytest.raises(ValueError, match="T <= 8"):
        model.encode_text(torch.zeros(1, 9, dtype=torch.int64))


def test_save_clip_round_trip_is_exact(files, tmp_path):
    model = load_clip(files["farl"])
    path = save_clip(model, tmp_path / "clip.safetensors", extra={"epoch": 3})
    with safetensors.safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "facerep-clip" and json.loads(meta["epoch"]) == 3
    assert json.loads(meta["text"])["context_length"] == CONTEXT
    assert json.loads(meta["vision"])["act"] == "quick_gelu"
    again = load_clip(path)
    assert again.recorded == {"epoch": 3} and model.recorded == {}  # a FaRL release records nothing
    expected, loaded = clip_state_dict(model), clip_state_dict(again)
    assert expected.keys() == loaded.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert set(expected) == set(safetensors.torch.load_file(files["safetensors"]))
    ids = caption_ids()
    with torch.no_grad():
        assert torch.equal(again(IMAGES, ids)[0], model(IMAGES, ids)[0])
        assert torch.equal(again.encode_text(ids), model.encode_text(ids))
        assert torch.equal(
            load_backbone(path).forward_features(IMAGES), model.visual.forward_features(IMAGES)
        )
    with pytest.raises(ValueError, match="reserved keys"):
        save_clip(model, tmp_path / "x.safetensors", extra={"text": 1})


def test_a_facerep_vit_that_is_not_clip_shaped_round_trips(tmp_path):
    vit = build_vit("vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=64, num_heads=4, layer_scale=0.1)
    model = CLIPModel(
        vit, TextArch(vocab_size=100, context_length=8, width=64, layers=1, heads=1, embed_dim=16)
    )
    again = load_clip(save_clip(model, tmp_path / "clip.safetensors"))
    assert again.visual.arch == vit.arch and again.text_arch == model.text_arch
    expected, loaded = clip_state_dict(model), clip_state_dict(again)
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_img_size_resamples_the_image_tower(files):
    model = load_clip(files["farl"], img_size=64)
    assert model.visual.arch.img_size == 64
    assert model.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, EMBED)


def _edited(state, drop=(), **replace):
    return {k: v for k, v in state.items() if k not in drop} | {
        k.replace("__", "."): v for k, v in replace.items()
    }


MALFORMED = {
    "text-blocks-gap": (lambda s: {k.replace("transformer.resblocks.1.", "transformer.resblocks.3.")
                                   if k.startswith("transformer.") else k: v for k, v in s.items()},
                        r"expected CLIP text blocks transformer\.resblocks\.0\.\.N-1, found \[0, 3\]"),
    "no-logit-scale": (lambda s: _edited(s, drop=("logit_scale",)), "logit_scale must be a scalar"),
    "no-text-projection": (lambda s: _edited(s, drop=("text_projection",)),
                           "lacks the tensor text_projection"),
    "projection-widths": (lambda s: _edited(s, visual__proj=torch.zeros(WIDTH, 32)),
                          r"visual\.proj has shape \[128, 32\]; expected \[D, 64\]"),
    "text-shape": (lambda s: _edited(s, transformer__resblocks__0__ln_1__weight=torch.zeros(3)),
                   r"transformer\.resblocks\.0\.ln_1\.weight file \[3\]"),
    "not-clip": (lambda s: {"blocks.0.norm1.weight": torch.zeros(2)}, "not an OpenAI-layout CLIP checkpoint"),
}  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_give_one_line_errors_naming_the_file(state, tmp_path, edit, message):
    assert_malformed_refused(load_clip, edit(dict(state)), tmp_path / "bad.pth", message)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_the_original_torchscript_release_asks_for_a_state_dict(tmp_path):
    path = save_torchscript(tmp_path / "ViT-B-16.pt")
    with pytest.raises(CheckpointError, match=r"TorchScript archive.*state_dict\(\)"):
        load_clip(path)


def test_keys_outside_both_towers_are_named_in_a_warning(state, tmp_path):
    path = tmp_path / "extra.pt"
    torch.save(state | {"input_resolution": torch.tensor(32), "text_mlm_head.weight": torch.zeros(2)}, path)
    with pytest.warns(UserWarning, match=r"ignored keys outside the CLIP towers: \[text_mlm_head\.weight\]"):
        load_clip(path)
