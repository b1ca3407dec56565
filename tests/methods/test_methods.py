import pytest
import torch

from facerep.checkpoints import export_backbone
from facerep.config import PretrainConfig, load_config
from facerep.methods import METHODS, build_method
from facerep.methods.mcf import default_teacher_blocks, momentum_at
from facerep.models.vit import build_vit, random_keep_order

SMALL = [
    "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.image_size=32",
    "decoder.embed_dim=32", "decoder.depth=1", "decoder.num_heads=2",
    "mcf.proj_hidden_dim=64", "mcf.proj_dim=32", "teacher.checkpoint=random",
]  # fmt: skip


def small(*overrides: str):
    torch.manual_seed(0)
    return build_method(load_config(PretrainConfig, None, [*SMALL, *overrides]))


def test_registry_and_unknown_method():
    assert {"mae", "mcf"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method 'simclr'; available: mae, mcf"):
        small("method=simclr")


def test_teacher_blocks_and_momentum_schedule():
    assert default_teacher_blocks(12) == [2, 5, 8, 11]
    assert default_teacher_blocks(24) == [5, 11, 17, 23]
    assert momentum_at(5, 10, 0.99, 1.0, "constant") == 0.99
    assert momentum_at(0, 10, 0.99, 1.0, "cosine") == pytest.approx(0.99)
    assert momentum_at(5, 10, 0.99, 1.0, "cosine") == pytest.approx(0.995)
    assert momentum_at(10, 10, 0.99, 1.0, "cosine") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="momentum_schedule"):
        momentum_at(1, 10, 0.99, 1.0, "linear")


def test_mcf_gradients_reach_online_parts_only():
    method = small("method=mcf")
    images = torch.randn(4, 3, 32, 32)
    loss, terms = method(images)
    assert set(terms) == {"feature", "contrastive"}
    torch.testing.assert_close(loss, 1000 * terms["feature"] + terms["contrastive"])
    loss.backward()
    for module in (method.encoder.blocks, method.decoder, method.projector, method.predictor):
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    for module in (method.teacher, method.target_encoder, method.target_projector):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert not method.teacher.backbone.training  # frozen teacher stays in eval mode
    method.train()
    assert not method.teacher.backbone.training


def test_mcf_given_masks_are_reproducible_and_views_independent():
    method = small("method=mcf").eval()
    images = torch.randn(4, 3, 32, 32)
    ids = (random_keep_order(4, 4, "cpu"), random_keep_order(4, 4, "cpu"))
    a, _ = method(images, ids)
    b, _ = method(images, ids)
    torch.testing.assert_close(a, b)
    torch.manual_seed(1)
    _, mask_1, _ = method.encoder.forward_masked(images, 0.75)
    _, mask_2, _ = method.target_encoder.forward_masked(images, 0.75)
    assert not torch.equal(mask_1, mask_2)  # independent draws


def test_mcf_symmetric_adds_the_second_direction():
    images = torch.randn(4, 3, 32, 32)
    ids = (random_keep_order(4, 4, "cpu"), random_keep_order(4, 4, "cpu"))
    one = small("method=mcf").eval()(images, ids)[1]["contrastive"]
    both = small("method=mcf", "mcf.symmetric=true").eval()(images, ids)[1]["contrastive"]
    assert both > one


def test_teacher_file_at_another_resolution_sees_resized_images(tmp_path):
    teacher = build_vit("vit_tiny_patch16_224", img_size=64, depth=3)
    path = export_backbone(teacher, tmp_path)
    method = small("method=mcf", f"teacher.checkpoint={path}", "data.image_size=48")
    assert method.teacher.img_size == 64 and method.teacher.blocks == [0, 1, 2]
    loss, _ = method(torch.randn(2, 3, 48, 48))
    assert torch.isfinite(loss)


def test_mae_scores_masked_patches_and_decay_groups():
    method = small("method=mae")
    loss, terms = method(torch.randn(2, 3, 32, 32))
    assert loss.item() > 0 and set(terms) == {"pixel"}
    decay, no_decay = method.param_groups(0.05)
    names = {id(p): n for n, p in method.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "encoder.cls_token" in undecayed and "decoder.mask_token" in undecayed
    assert "encoder.blocks.0.norm1.weight" in undecayed and "encoder.blocks.0.attn.qkv.bias" in undecayed
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert "encoder.pos_embed" not in undecayed | {names[id(p)] for p in decay["params"]}  # frozen
