"""method=farl: FaRL's tower and MIM head, the masks, losses, gradients, the dVAE target, the export of both
towers in FaRL's key layout, the recipes, losses falling."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from timm.layers import QuickGELU
from torch import nn

from facerep import load_backbone, load_clip
from facerep.config import ConfigError, PretrainConfig, load_config
from facerep.data.masking import BlockMasking, RandomMasking
from facerep.data.views import random_masks
from facerep.losses.clip import clip_contrastive_loss
from facerep.methods import build_method
from facerep.methods.farl import FaRL
from facerep.models.clip import CLIP_FILE
from facerep.models.dvae import DVAEEncoder
from facerep.train.pretrain import pretrain

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = [
    "method=farl", "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.image_size=32",
    "text.width=32", "text.layers=1", "text.heads=2", "text.context_length=12", "text.embed_dim=16",
]  # fmt: skip


def small(*overrides: str) -> FaRL:
    torch.manual_seed(0)
    return build_method(load_config(PretrainConfig, None, [*SMALL, *overrides]))


def batch_for(method: FaRL, n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    spec = method.batch_spec(load_config(PretrainConfig, None, SMALL).data)
    captions = ["a photo of a smiling person", "a person wearing glasses", "a bald person", "a person"][:n]
    return {
        "views": [torch.randn(n, 3, 32, 32, generator=g)],
        "masks": random_masks(spec, n, g),
        "texts": torch.stack([spec.text(c) for c in captions]),
    }


def test_batch_spec_asks_for_one_view_one_block_mask_and_the_tokenized_caption():
    method = small()
    spec = method.batch_spec(load_config(PretrainConfig, None, SMALL).data)
    assert (len(spec.views), spec.masks, spec.num_patches) == (1, 1, 4)
    assert spec.draw_mask == BlockMasking(grid=2, count=2, min_block=16, min_aspect=0.3)  # round(0.4 * 4)
    ids = spec.text("a photo of a smiling person")
    assert ids.shape == (12,) and ids.dtype == torch.int64
    assert small("farl.mim_weight=0").batch_spec(load_config(PretrainConfig, None, SMALL).data).masks == 0
    uniform = small("farl.masking=random").batch_spec(load_config(PretrainConfig, None, SMALL).data)
    assert uniform.draw_mask == RandomMasking(4, 2)


def test_image_tower_and_mim_head_are_built_as_farls_release():
    """farl/network/farl/model.py: ln_pre and no patch bias, QuickGELU, LayerNorm eps 1e-5, a learned
    position embedding; the MIM head's blocks alike, its mask token width**-0.5 * randn."""
    method = small("model.embed_dim=256", "model.num_heads=4")
    vit, head = method.encoder, method.mim_head
    assert (vit.arch.pre_norm, vit.arch.act, vit.arch.norm_eps, vit.arch.pos_embed) == (
        True, "quick_gelu", 1e-5, "learned",
    )  # fmt: skip
    assert vit.pos_embed.requires_grad and vit.patch_embed.proj.bias is None
    for module in (vit, head):
        assert all(m.eps == 1e-5 for m in module.modules() if isinstance(m, nn.LayerNorm))
        assert all(isinstance(block.mlp.act, QuickGELU) for block in module.blocks)
    for token in (vit.cls_token, vit.pos_embed, head.mask_token, method.clip.visual_proj):
        assert token.std().item() == pytest.approx(256**-0.5, rel=0.15)
    assert head.head.weight.std().item() == pytest.approx(0.02, rel=0.1) and not head.head.bias.any()


def test_forward_masks_the_patches_the_pipeline_drew():
    method = small()
    batch = batch_for(method)
    (masked,) = batch["masks"]
    assert masked.dtype == torch.bool and (masked.sum(1) <= 2).all()
    seen = {}
    replaced = method.encoder.forward_replaced

    def spy(images, replace, token):
        seen["replace"] = replace
        return replaced(images, replace, token)

    method.encoder.forward_replaced = spy
    method(batch)
    assert torch.equal(seen["replace"], torch.cat([torch.zeros_like(masked), masked]))  # clean, then masked


def test_both_terms_train_every_part():
    method = small()
    loss, terms = method(batch_for(method))
    assert set(terms) == {"itc", "mim", "logit_scale"}
    assert terms["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    # the contrast scores the clean images (the masked copies only feed the MIM head)
    batch = batch_for(method)
    scale = method.clip.logit_scale_value()
    images, ids = batch["views"][0], batch["texts"]
    expected = clip_contrastive_loss(method.clip.encode_image(images), method.clip.encode_text(ids), scale)
    torch.testing.assert_close(terms["itc"], expected.detach())
    assert loss.item() == pytest.approx(terms["itc"].item() + terms["mim"].item(), rel=1e-5)
    loss.backward()
    for name in (
        "clip.visual.blocks.0.attn.qkv.weight",
        "clip.visual.pos_embed",  # learned, as FaRL's
        "clip.visual_proj",
        "clip.text.token_embedding.weight",
        "clip.text.text_projection",
        "clip.logit_scale",
        "mim_head.mask_token",
        "mim_head.head.weight",
    ):
        grad = dict(method.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_single_terms_and_weights():
    itc_only, mim_only = small("farl.mim_weight=0"), small("farl.itc_weight=0")
    assert itc_only.mim_head is None
    _, terms = itc_only(batch_for(itc_only))
    assert set(terms) == {"itc", "logit_scale"}
    _, terms = mim_only(batch_for(mim_only))
    assert set(terms) == {"mim"}
    # the MIM term is the same whether or not the clean images share the pass
    both = small()
    _, both_terms = both(batch_for(both))
    torch.testing.assert_close(both_terms["mim"], terms["mim"], rtol=1e-4, atol=1e-5)


def test_logit_scale_is_clamped_after_each_update():
    method = small()
    with torch.no_grad():
        method.clip.logit_scale.fill_(10.0)
    method.on_optimizer_step(1, 10)
    assert method.clip.logit_scale.item() == pytest.approx(math.log(100))


def test_dvae_target_predicts_the_tokens_of_user_supplied_weights(tmp_path):
    torch.manual_seed(0)
    dvae = DVAEEncoder(n_hid=16, n_blk_per_group=1, vocab_size=40)
    torch.save(dvae.state_dict(), tmp_path / "dvae.pth")
    method = small("farl.mim_target=dvae", f"farl.dvae_weights={tmp_path / 'dvae.pth'}")
    assert method.mim_head.head.out_features == 40
    batch = batch_for(method)
    images = batch["views"][0]
    tokens = method.mim_target.tokens(images)
    assert tokens.shape == (4, 4) and tokens.max() < 40  # 32 px ViT/16: a 2 x 2 grid from a 16 px dVAE input
    _, terms = method(batch)
    assert abs(terms["mim"].item() - math.log(40)) < 1.0  # near-uniform logits at initialisation
    assert not any(p.requires_grad for p in method.mim_target.parameters())


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="farl.mim_target=dvae needs farl.dvae_weights"):
        load_config(PretrainConfig, None, ["method=farl", "farl.mim_target=dvae"])
    with pytest.raises(ConfigError, match="farl.mim_target must be one of pixels, dvae"):
        load_config(PretrainConfig, None, ["farl.mim_target=vqgan"])
    with pytest.raises(ConfigError, match="not both 0"):
        load_config(PretrainConfig, None, ["farl.itc_weight=0", "farl.mim_weight=0"])
    with pytest.raises(ConfigError, match="farl.masking must be one of block, random"):
        load_config(PretrainConfig, None, ["farl.masking=grid"])
    with pytest.raises(ConfigError, match="farl.mask_min_aspect"):
        load_config(PretrainConfig, None, ["farl.mask_min_aspect=2"])


def test_recipes_load():
    paper = load_config(
        PretrainConfig, CONFIGS / "farl_vit_base_patch16.yaml", ["farl.dvae_weights=/x/dvae.pth"]
    )
    assert (paper.text.width, paper.text.layers, paper.text.heads, paper.text.context_length) == (
        512,
        12,
        8,
        77,
    )
    assert (paper.train.global_batch, paper.train.epochs, paper.data.image_size) == (5120, 16, 224)
    assert paper.farl.mim_target == "dvae" and paper.model.arch == "vit_base_patch16_224"
    tiny = load_config(PretrainConfig, CONFIGS / "farl_cpu_tiny.yaml")
    assert tiny.method == "farl" and tiny.farl.mim_target == "pixels"
    for recipe in (paper, tiny):  # BEiT's blockwise masking of about 40 %
        farl = recipe.farl
        assert (farl.masking, farl.mask_ratio, farl.mask_min_block) == ("block", 0.4, 16)
        assert farl.mask_min_aspect == 0.3


def farl_visual_keys(width: int, layers: int, grid: int, embed: int, mim_layers: int, vocab: int) -> dict:
    """The state-dict keys and shapes of FaRL's ``VisualTransformer`` with its MIM head
    (farl/network/farl/model.py; ``config.MIM.ENABLE``, ``MIM.LAYERS``, ``MIM.VOCAB_SIZE``), under
    ``visual.``, written out from the model code."""

    def blocks(prefix: str, count: int) -> dict:
        shapes = {
            "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
            "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
            "ln_1.weight": (width,), "ln_1.bias": (width,),
            "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
            "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,),
            "ln_2.weight": (width,), "ln_2.bias": (width,),
        }  # fmt: skip
        return {f"{prefix}.{i}.{k}": v for i in range(count) for k, v in shapes.items()}

    keys = {
        "conv1.weight": (width, 3, 16, 16),  # no bias
        "class_embedding": (width,),
        "positional_embedding": (1 + grid * grid, width),
        "ln_pre.weight": (width,), "ln_pre.bias": (width,),
        **blocks("transformer.resblocks", layers),
        "ln_post.weight": (width,), "ln_post.bias": (width,),
        "proj": (width, embed),
        "mask_token": (width,),
        **blocks("lm_transformer.resblocks", mim_layers),
        "ln_lm.weight": (width,), "ln_lm.bias": (width,),
        "lm_head.weight": (vocab, width), "lm_head.bias": (vocab,),
    }  # fmt: skip
    return {f"visual.{k}": v for k, v in keys.items()}


def test_a_tiny_run_exports_farls_visual_transformer_and_loads_back(tmp_path):
    out = tmp_path / "farl"
    pretrain(load_config(PretrainConfig, None, [
        *SMALL, f"output_dir={out}", "data.num_workers=0", "data.synthetic_length=16", "train.batch_size=4",
        "train.max_steps=3", "train.lr=1e-3", "train.warmup_steps=1", "train.progress=log",
    ]))  # fmt: skip
    with safe_open(out / CLIP_FILE, "pt") as f:
        names = [k for k in f.keys() if k.startswith("visual.")]  # noqa: SIM118 (safe_open is no dict)
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in names}
    # 64 wide, 2 blocks, a 2 x 2 grid (32 px, patch 16), 16-d projection, 1 MIM block, 3*16*16 pixel targets
    assert shapes == farl_visual_keys(64, 2, 2, 16, 1, 768)
    method = small()
    method.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    method.eval()
    images = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ignored keys
        clip = load_clip(out)  # strict: no missing or unexpected key in either tower
        towers = [clip.visual, load_backbone(out / CLIP_FILE), load_backbone(out / "backbone.safetensors")]
    for tower in towers:
        assert tower.arch == method.encoder.arch and tower.pos_embed.requires_grad
        torch.testing.assert_close(tower.forward_features(images), method.encoder.forward_features(images))
    torch.testing.assert_close(clip.encode_image(images), method.clip.encode_image(images))


@pytest.mark.slow
def test_pretraining_on_synthetic_captions_lowers_both_terms_and_exports_both_towers(tmp_path):
    out = tmp_path / "farl"
    pretrain(load_config(PretrainConfig, None, [
        *SMALL, f"output_dir={out}", "data.num_workers=0", "data.synthetic_length=64",
        "train.batch_size=16", "train.max_steps=120", "train.lr=2e-3", "train.warmup_steps=5",
        "train.log_every=1", "train.progress=log", "farl.mask_ratio=0.5", "farl.norm_pix_loss=false",
    ]))  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "itc" in r]
    first, last = rows[:10], rows[-10:]
    for term in ("itc", "mim"):
        before = sum(r[term] for r in first) / len(first)
        after = sum(r[term] for r in last) / len(last)
        assert after < 0.9 * before, (term, before, after)
    assert (out / CLIP_FILE).is_file()
    clip = load_clip(out)  # the run directory stands for its clip.safetensors
    method = small()
    method.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    method.eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(clip.encode_image(images), method.clip.encode_image(images))
    ids = clip.tokenize(["a smiling person", "a bald person"])
    torch.testing.assert_close(clip.encode_text(ids), method.clip.encode_text(ids))
