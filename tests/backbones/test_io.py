"""Backbone readers for MoCo v3 / MAE / MCF / timm / facerep files, and the facerep export."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from clip_files import openai_state
from facerep.backbones.io import (
    CheckpointError,
    detect_format,
    export_backbone,
    load_backbone,
    read_backbone_state,
)
from facerep.backbones.resnet import build_resnet
from facerep.backbones.vit import ViTArch, build_vit, timm_model_name
from facerep.models.clip import load_clip, save_clip

DIM, DEPTH, PATCH, IMG = 64, 2, 16, 48  # heads_for_dim(64) == 1


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add noise to every parameter so that each tensor matters (incl. pos_embed and LayerNorms)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _source(seed: int = 0, heads: int = 1, num_classes: int = 0, **kw: object) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=heads,
        num_classes=num_classes,
        **kw,
    )
    return _perturb(model, seed)


def _encoder_sd(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}


def _junk(prefix: str, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}weight": torch.randn(8, 4, generator=gen),
        f"{prefix}bias": torch.randn(8, generator=gen),
    }


def _images(size: int = IMG) -> Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


def _assert_same_features(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    assert not loaded.training
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), source.forward_features(x), atol=1e-6, rtol=0)


def _mae_file(tmp_path: Path, src: VisionTransformer) -> Path:
    sd = {
        **_encoder_sd(src),
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_pos_embed": torch.zeros(1, 10, 32),
    }
    sd |= _junk("decoder_embed.", 1) | _junk("decoder_blocks.0.attn.qkv.", 2)
    sd |= _junk("decoder_norm.", 3) | _junk("decoder_pred.", 4)
    path = tmp_path / "mae.pth"
    torch.save({"model": sd}, path)
    return path


def test_mocov3(tmp_path: Path) -> None:
    src, momentum = _source(0, num_classes=10), _source(1)
    sd = {f"module.base_encoder.{k}": v for k, v in src.state_dict().items()}
    sd |= _junk("module.base_encoder.head.0.", 5) | _junk("module.base_encoder.head.3.", 6)
    sd |= {f"module.momentum_encoder.{k}": v for k, v in momentum.state_dict().items()}
    sd |= _junk("module.predictor.0.", 7)
    path = tmp_path / "linear-vit-b-300ep.pth.tar"
    torch.save({"state_dict": sd, "epoch": 3, "arch": "vit_small"}, path)
    assert read_backbone_state(path)[1] == "mocov3"
    _assert_same_features(load_backbone(path), src)


def test_mae_pretrain(tmp_path: Path) -> None:
    src = _source(2)
    path = _mae_file(tmp_path, src)
    state, fmt = read_backbone_state(path)
    assert fmt == "mae" and "mask_token" not in state and not any(k.startswith("decoder") for k in state)
    model = load_backbone(path)
    _assert_same_features(model, src)
    torch.testing.assert_close(model.pos_embed, src.pos_embed)  # learned pos embed replaces the sin-cos one


def test_mae_finetuned_head_dropped_and_global_pool_rejected(tmp_path: Path) -> None:
    src = _source(3, num_classes=5)
    path = tmp_path / "mae_finetuned.pth"
    torch.save({"model": src.state_dict()}, path)
    _assert_same_features(load_backbone(path), src)

    gap = _source(3, num_classes=5, global_pool="avg", fc_norm=True)
    assert "fc_norm.weight" in gap.state_dict() and "norm.weight" not in gap.state_dict()
    torch.save({"model": gap.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"global pooling \(fc_norm"):
        load_backbone(path)


def test_mcf_official(tmp_path: Path) -> None:
    online, target = _source(4), _source(5)
    sd = {f"online_encoder.{k}": v for k, v in online.state_dict().items()}
    sd |= _junk("online_encoder.fc.0.", 8)
    sd |= {f"target_encoder.{k}": v for k, v in target.state_dict().items()} | _junk(
        "target_encoder.fc.0.", 9
    )
    sd |= _junk("decoder_embed.", 10) | _junk("decoder_blocks.0.mlp.fc1.", 11) | _junk("decoder_pred.", 12)
    sd |= {"mask_token": torch.zeros(1, 1, 32), "decoder_pos_embed": torch.zeros(1, 10, 32)}
    sd |= _junk("predictor.0.", 13) | _junk("perceptual_loss.model.features.0.", 14)
    path = tmp_path / "mcf.pth"
    torch.save({"model": sd, "epoch": 100}, path)
    assert read_backbone_state(path)[1] == "mcf"
    _assert_same_features(load_backbone(path), online)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_timm_pth(tmp_path: Path, wrapper: str | None) -> None:
    src = _source(6, num_classes=3)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict() if wrapper is None else {wrapper: src.state_dict()}, path)
    assert read_backbone_state(path)[1] == "timm"
    _assert_same_features(load_backbone(path), src)


def test_timm_safetensors_and_ddp_prefix(tmp_path: Path) -> None:
    src = _source(7, num_classes=3)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    assert read_backbone_state(path)[1] == "timm"
    _assert_same_features(load_backbone(path), src)

    ddp = tmp_path / "ddp.bin"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, ddp)
    _assert_same_features(load_backbone(ddp), src)


def test_facerep_training_checkpoint(tmp_path: Path) -> None:
    src, other = _source(8, heads=4), _source(9, heads=4)
    model = {f"encoder.{k}": v for k, v in src.state_dict().items()}
    model |= {f"target_encoder.{k}": v for k, v in other.state_dict().items()}
    model |= _junk("decoder.blocks.0.", 15) | _junk("projector.0.", 16) | _junk("teacher.fc.", 17)
    arch = {
        "embed_dim": DIM,
        "depth": DEPTH,
        "num_heads": 4,
        "patch_size": PATCH,
        "img_size": IMG,
        "mlp_ratio": 4.0,
    }
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "facerep-checkpoint", "model": model, "arch": arch, "step": 12}, path)
    loaded = load_backbone(path)  # num_heads=4 comes from the recorded arch, not the ViT table
    assert loaded.arch.num_heads == 4
    _assert_same_features(loaded, src)


def test_export_roundtrip_through_timm(tmp_path: Path) -> None:
    model = _perturb(build_vit(ViTArch(DIM, DEPTH, 4, PATCH, IMG)), 10)
    weights = export_backbone(model, tmp_path / "export", extra={"method": "mcf", "step": 5})
    assert weights == tmp_path / "export" / "backbone.safetensors"
    record = json.loads((tmp_path / "export" / "backbone.json").read_text())
    assert record["format"] == "facerep-backbone" and record["timm_model"] is None
    assert record["arch"]["num_heads"] == 4 and record["img_size"] == IMG and record["method"] == "mcf"
    with safetensors.safe_open(str(weights), framework="pt") as handle:
        assert handle.metadata()["format"] == "facerep-backbone"
    assert not list((tmp_path / "export").glob(".*.tmp"))

    name = record["timm_model"] or "vit_base_patch16_224"
    kwargs = {k: record["arch"][k] for k in ("embed_dim", "depth", "num_heads", "patch_size", "img_size")}
    reference = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    reference.load_state_dict(safetensors.torch.load_file(str(weights)), strict=True)
    _assert_same_features(reference, model)

    assert read_backbone_state(weights)[1] == "facerep-backbone"
    for source in (weights, tmp_path / "export"):
        back = load_backbone(source)
        assert back.arch == model.arch
        _assert_same_features(back, model)


def test_timm_model_name() -> None:
    assert timm_model_name(ViTArch(768, 12, 12, 16, 224)) == "vit_base_patch16_224"
    assert timm_model_name(ViTArch(384, 12, 6, 16, 384)) == "vit_small_patch16_384"
    assert timm_model_name(ViTArch(768, 12, 12, 16, 112)) == "vit_base_patch16_224"  # + img_size=112
    assert timm_model_name(ViTArch(DIM, DEPTH, 1, PATCH, IMG)) is None
    assert timm_model_name(ViTArch(768, 12, 12, 16, 224, mlp_ratio=2.0)) is None


def test_img_size_override_resamples_pos_embed(tmp_path: Path) -> None:
    src = _source(11)
    path = _mae_file(tmp_path, src)
    model = load_backbone(path, img_size=64)
    assert model.arch.img_size == 64 and model.pos_embed.shape == (1, 1 + 4 * 4, DIM)
    torch.testing.assert_close(model.pos_embed[:, :1], src.pos_embed[:, :1])  # CLS row kept
    with torch.no_grad():
        assert model.forward_features(_images(64)).shape == (2, 17, DIM)
    with pytest.raises(CheckpointError, match="not a multiple of patch size"):
        load_backbone(path, img_size=50)


def test_num_heads_override(tmp_path: Path) -> None:
    src = _source(12, heads=4)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    _assert_same_features(load_backbone(path, num_heads=4), src)
    default = load_backbone(path)  # one head per the table: same weights, different function
    assert default.arch.num_heads == 1
    with torch.no_grad():
        assert not torch.allclose(default.forward_features(_images()), src.forward_features(_images()))


def _assert_error(path: Path, match: str, **kw: int) -> None:
    with pytest.raises(CheckpointError) as info:
        load_backbone(path, **kw)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    assert match in message, message


def test_errors(tmp_path: Path) -> None:
    _assert_error(tmp_path / "nope.pth", "not found")

    junk = tmp_path / "junk.pth"
    torch.save({"foo": torch.zeros(2), "epoch": 1}, junk)
    _assert_error(junk, "unrecognised checkpoint layout")
    with pytest.raises(CheckpointError, match="unrecognised"):
        detect_format({"foo": 1})

    src = _source(13)
    mae = _mae_file(tmp_path, src)
    obj = torch.load(mae, weights_only=True)
    del obj["model"]["blocks.1.attn.qkv.weight"], obj["model"]["norm.bias"]
    torch.save(obj, mae)
    _assert_error(mae, "missing [blocks.1.attn.qkv.weight, norm.bias]")
    del obj["model"]["cls_token"]
    torch.save(obj, mae)
    _assert_error(mae, "missing required ViT keys ['cls_token']")

    bad = {k: v.contiguous() for k, v in src.state_dict().items()}
    bad["blocks.0.attn.proj.weight"] = torch.zeros(DIM, DIM + 1)
    shaped = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(bad, str(shaped))
    _assert_error(shaped, "shape mismatch [blocks.0.attn.proj.weight file [64, 65] vs model [64, 64]]")

    grid = {**src.state_dict(), "pos_embed": torch.zeros(1, 1 + 6, DIM)}
    torch.save(grid, tmp_path / "grid.pth")
    _assert_error(tmp_path / "grid.pth", "square patch grid")

    pickled = tmp_path / "legacy.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=1e-3)}, pickled)
    _assert_error(pickled, "weights_only=False")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    _assert_error(garbage, "not a readable safetensors file")


def _with_metadata(source: Path, path: Path, field: str, record: str, value: object) -> Path:
    """``source`` (a safetensors file) written to ``path`` with its metadata's JSON ``field`` record
    saying ``record=value``."""
    with safetensors.safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    metadata[field] = json.dumps(json.loads(metadata[field]) | {record: value})
    path.write_bytes(safetensors.torch.save(safetensors.torch.load_file(str(source)), metadata=metadata))
    return path


def test_a_recorded_arch_the_tensors_contradict_is_refused_before_building(tmp_path: Path) -> None:
    """Metadata saying img_size 3,200,000 made load_backbone resample the position embedding to a
    200,000 x 200,000 grid (a 10 TB allocation); any recorded field the weights fix is checked first."""
    vit = export_backbone(  # 48 px: a 3x3 grid of 16-px patches
        build_vit("vit_tiny_patch16_224", img_size=IMG, depth=DEPTH, embed_dim=DIM, num_heads=2),
        tmp_path / "vit",
    )
    for record, value, evidence in (
        ("img_size", 3_200_000, "pos_embed has shape [1, 10, 64] (3x3 patches of 16 px), so img_size is 48"),
        ("depth", 12, "the weights hold blocks 0-1, so depth is 2"),
        ("embed_dim", 768, "patch_embed.proj.weight has shape [64, 3, 16, 16], so embed_dim is 64"),
    ):
        bad = _with_metadata(vit, tmp_path / f"{record}.safetensors", "arch", record, value)
        _assert_error(bad, f"recorded {record}={value} disagrees with the weights: {evidence}")
    sidecar = tmp_path / "vit" / "backbone.json"  # metadata without an arch: the JSON sidecar's record
    safetensors.torch.save_file(
        safetensors.torch.load_file(str(vit)), str(vit), {"format": "facerep-backbone"}
    )
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"arch": {"img_size": 3_200_000}}))
    _assert_error(vit, "recorded img_size=3200000 disagrees with the weights")
    _assert_error(vit, "recorded img_size=3200000 disagrees", img_size=64)  # whatever size is asked

    resnet = export_backbone(build_resnet("resnet18", img_size=32), tmp_path / "resnet")
    bad = _with_metadata(resnet, tmp_path / "resnet50.safetensors", "arch", "layers", [3, 4, 6, 3])
    _assert_error(
        bad, "recorded layers=[3, 4, 6, 3] disagrees with the weights: the weights hold [2, 2, 2, 2]"
    )


def test_a_clip_file_whose_recorded_towers_the_tensors_contradict_is_refused(tmp_path: Path) -> None:
    """The same for facerep's clip.safetensors: its vision and text records (a context length of millions
    would build a text tower of gigabytes)."""
    torch.save(openai_state(), tmp_path / "openai.pt")
    clip = save_clip(load_clip(tmp_path / "openai.pt"), tmp_path / "clip.safetensors")
    bad = _with_metadata(clip, tmp_path / "text.safetensors", "text", "context_length", 3_200_000)
    text = r"text.safetensors: recorded context_length=3200000 .* positional_embedding has shape \[16, 64\]"
    with pytest.raises(CheckpointError, match=text):
        load_clip(bad)
    bad = _with_metadata(clip, tmp_path / "vision.safetensors", "vision", "img_size", 3_200_000)
    for load in (load_clip, load_backbone):
        with pytest.raises(CheckpointError, match=r"vision.safetensors: recorded img_size=3200000 disagrees"):
            load(bad)
