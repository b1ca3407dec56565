"""The MCF paper recipe (configs/mcf_vit_base_patch16.yaml) against the reference code (nomewang/MCF)."""

import math
from pathlib import Path

import pytest
import torch

from facerep.config import PretrainConfig, load_config
from facerep.methods import build_method
from facerep.train.pretrain import resolve_accumulation

RECIPE = Path(__file__).parents[2] / "configs" / "mcf_vit_base_patch16.yaml"


def recipe() -> PretrainConfig:
    return load_config(PretrainConfig, RECIPE, ["data.path=/data/{0..1}.tar", "teacher.checkpoint=t.pth"])


def test_momentum_per_optimizer_step_equals_the_references_eight_micro_batch_updates():
    # The reference updates the momentum encoder inside forward (every micro-batch, m = 0.99) and its
    # README recipe accumulates 8 micro-batches per optimizer step on 8 GPUs; facerep updates once per
    # optimizer step.
    cfg = recipe()
    assert resolve_accumulation(cfg.train, world_size=8).accum_steps == 8
    assert cfg.mcf.momentum == pytest.approx(0.99**8, abs=1e-4)
    assert cfg.mcf.momentum_schedule == "constant"


def test_feature_weight_is_the_papers_1000_at_224_px():
    cfg = recipe()
    assert (cfg.mcf.feature_weight, cfg.mcf.balance, cfg.teacher.norm_axis) == (1000.0, "paper", "token")
    assert (cfg.data.image_size, cfg.teacher.blocks) == (224, [2, 5, 8, 11])


def _small_mcf(*overrides):
    cfg = load_config(
        PretrainConfig, None,
        ["method=mcf", "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.image_size=32",
         "decoder.embed_dim=32", "decoder.depth=1", "decoder.num_heads=2", "mcf.proj_hidden_dim=512",
         "mcf.proj_dim=256", "teacher.checkpoint=random", *overrides],
    )  # fmt: skip
    torch.manual_seed(0)
    return build_method(cfg)


def test_teacher_input_is_resized_as_the_references_f_interpolate_default_nearest():
    """``CPLoss.extract_feats`` calls ``F.interpolate(x, size=224)``: legacy nearest, source pixel
    ``floor(i * in / out)`` (a side-by-side run at 96 px found the feature term 0.03984 with the reference's
    resize against 0.03922 with bilinear)."""
    method = _small_mcf("teacher.img_size=48")
    teacher = method.teacher
    assert teacher.resize_mode == "nearest" and teacher.img_size == 48
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    index = torch.div(torch.arange(48) * 32, 48, rounding_mode="floor")
    resized = images[:, :, index][:, :, :, index]
    expected = teacher.backbone.forward_block_tokens(resized, teacher.blocks)
    for got, want in zip(teacher.features(images), expected, strict=True):
        torch.testing.assert_close(got, want)
    bilinear = _small_mcf("teacher.img_size=48", "teacher.resize_mode=bilinear").teacher
    assert not torch.allclose(bilinear.features(images)[0], teacher.features(images)[0])


def test_heads_are_xavier_initialised_with_batchnorm_per_process():
    """The reference builds the projector and predictor (MoCo v3's ``_build_mlp``), then its
    ``initialize_weights`` applies ``xavier_uniform_`` to every Linear; its heads' BatchNorms are plain
    ``BatchNorm1d`` on each GPU (no SyncBN)."""
    method = _small_mcf()
    assert not method.sync_batchnorm
    for head in (method.projector, method.predictor):
        for layer in (head[0], head[3]):
            bound = math.sqrt(6 / (layer.in_features + layer.out_features))
            assert layer.weight.abs().max() <= bound
            assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    torch.testing.assert_close(method.target_projector[0].weight, method.projector[0].weight)
