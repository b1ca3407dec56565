"""ResNet backbones: the protocol, torchvision/timm state dicts in, a strict torchvision/timm export out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn

from facerep.backbones import Backbone, build_backbone, export_backbone, load_backbone, read_backbone_state
from facerep.backbones.resnet import ResNet, ResNetArch, ResNetFamily, build_resnet
from facerep.config import ConfigError, PretrainConfig, load_config
from facerep.methods.base import build_encoder
from facerep.runtime.checkpoint import CheckpointError
from resnet_files import perturbed


def _images(size: int = 64) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_protocol_pyramid_and_pooled(name: str) -> None:
    model = build_backbone(name, img_size=64).eval()
    assert isinstance(model, Backbone) and isinstance(model, ResNet)
    wide = name == "resnet50"
    assert model.feature_dim == (2048 if wide else 512)
    assert (
        model.arch == ResNetArch((3, 4, 6, 3) if wide else (2, 2, 2, 2), wide, 64) and model.arch.name == name
    )
    x = _images()
    with torch.no_grad():
        maps = model.forward_pyramid(x, model.default_levels)
        pooled = model.pooled(x)
    channels = [256, 512, 1024, 2048] if wide else [64, 128, 256, 512]
    assert [tuple(m.shape) for m in maps] == [
        (2, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)
    ]
    assert model.pyramid_channels([1, 2, 3, 4]) == channels and model.pyramid_strides([1, 2, 3, 4]) == [
        4,
        8,
        16,
        32,
    ]
    torch.testing.assert_close(pooled, maps[-1].mean(dim=(2, 3)))
    with torch.no_grad():
        both, vector = model.pyramid_pooled(x, [0, 2])  # one pass
    torch.testing.assert_close(vector, pooled)
    for got, want in zip(both, model.forward_pyramid(x, [0, 2]), strict=True):
        torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match=r"0 \(stem\) and 1-4"):
        model.pyramid_channels([1, 5])


def test_unknown_architectures_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backbone architecture 'convnext_tiny'"):
        build_backbone("convnext_tiny")
    with pytest.raises(ConfigError, match="unknown ResNet architecture 'resnet26'"):
        build_backbone("resnet26")
    with pytest.raises(ConfigError, match=r"no overrides \['depth'\]"):
        build_backbone("resnet18", depth=3)


@pytest.mark.parametrize(("name", "suffix"), [("resnet18", ".pth"), ("resnet50", ".safetensors")])
def test_plain_torchvision_state_dict_loads_with_the_same_pooled_features(
    tmp_path: Path, name: str, suffix: str
) -> None:
    source = perturbed(getattr(torchvision.models, name)(), 0)  # with its fc classifier
    path = tmp_path / f"{name}{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    assert read_backbone_state(path)[1] == "resnet"
    loaded = load_backbone(path)
    assert isinstance(loaded, ResNet) and loaded.arch.name == name and not loaded.training
    x = _images()
    with torch.no_grad():
        trunk = nn.Sequential(*list(source.children())[:-1])  # everything before fc: ... avgpool
        torch.testing.assert_close(loaded.pooled(x), trunk(x).flatten(1), atol=1e-5, rtol=1e-5)


def test_timm_state_dict_wrapped_and_ddp_prefixed(tmp_path: Path) -> None:
    source = perturbed(timm.create_model("resnet18", num_classes=10), 1)
    path = tmp_path / "timm_r18.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    loaded = load_backbone(path)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.pooled(_images()), source.forward_head(source.forward_features(_images()), pre_logits=True)
        )


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_export_loads_strictly_into_torchvision_and_timm(tmp_path: Path, name: str) -> None:
    model = perturbed(build_resnet(name, img_size=96), 2)
    weights = export_backbone(model, tmp_path, extra={"method": "test"})
    record = json.loads((tmp_path / "backbone.json").read_text())
    assert record["family"] == "resnet" and record["timm_model"] == record["torchvision_model"] == name
    assert record["img_size"] == 96 and record["arch"]["bottleneck"] == (name == "resnet50")
    state = safetensors.torch.load_file(str(weights))
    x = _images()
    with torch.no_grad():
        expected = model.pooled(x)
        tv = getattr(torchvision.models, name)()
        tv.fc = nn.Identity()
        tv.load_state_dict(state, strict=True)
        torch.testing.assert_close(tv.eval()(x), expected, atol=1e-5, rtol=1e-5)
        tm = timm.create_model(record["timm_model"], num_classes=0)
        tm.load_state_dict(state, strict=True)
        torch.testing.assert_close(tm.eval()(x), expected, atol=1e-5, rtol=1e-5)
        back = load_backbone(tmp_path)
        assert back.arch == model.arch
        torch.testing.assert_close(back.pooled(x), expected)


def test_a_resnet_that_does_not_fit_is_a_one_line_error(tmp_path: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 63, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError, match=r"bad.pth: weights do not fit resnet18: shape mismatch \[layer2.0.conv1"
    ):
        load_backbone(path)
    del state["layer4.1.conv1.weight"]
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, path)
    with pytest.raises(CheckpointError, match=r"blocks per stage \[2, 2, 2, 0\]"):
        load_backbone(path)


def test_blocks_are_not_zero_initialised_as_in_torchvision_and_fras_resnet():
    """timm zero-initialises each block's last BatchNorm by default; torchvision (``zero_init_residual``
    off) and FRA's ResNet do not: every BatchNorm starts at weight 1, bias 0, convolutions kaiming-normal."""
    torch.manual_seed(0)
    for name, last in (("resnet18", "bn2"), ("resnet50", "bn3")):
        model = build_resnet(name)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
        assert getattr(model.layer4[-1], last).weight.min() == 1.0
        conv = model.layer3[0].conv1
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_output_stride_dilates_as_torchvision_and_survives_export(tmp_path: Path) -> None:
    """``output_stride=16`` is torchvision's ``replace_stride_with_dilation=[False, False, True]`` on the
    same weights (a 6 x 6 last map at 96 px instead of 3 x 3; torchvision dilates bottleneck ResNets only),
    and an export rebuilds it dilated."""
    model = perturbed(build_backbone("resnet50", img_size=96, output_stride=16), 2).eval()
    assert model.arch.output_stride == 16 and model.pyramid_strides([1, 2, 3, 4]) == [4, 8, 16, 16]
    x = _images(96)
    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    tv.fc = nn.Identity()
    tv.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        features = model.forward_features(x)
        assert tuple(features.shape) == (2, 2048, 6, 6)
        torch.testing.assert_close(tv.eval()(x), model.pooled(x), atol=1e-5, rtol=1e-5)
    export_backbone(model, tmp_path, extra={"method": "test"})
    back = load_backbone(tmp_path).eval()
    assert back.arch == model.arch
    assert (
        ResNetFamily().describe(back.arch)
        == "resnet50 (layers [3, 4, 6, 3], bottleneck blocks, output stride 16)"
    )
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features(x), features)
    small = build_backbone("resnet18", output_stride=8)
    assert small.pyramid_strides([1, 2, 3, 4]) == [4, 8, 8, 8]
    with pytest.raises(ConfigError, match="output_stride is 8, 16 or 32, got 4"):
        build_backbone("resnet18", output_stride=4)
    with pytest.raises(ConfigError, match=r"a ViT has no architecture field \['output_stride'\]"):
        build_backbone("vit_tiny_patch16_224", output_stride=16)


def test_model_output_stride_builds_or_restrides_the_pretraining_encoder(tmp_path: Path) -> None:
    """``model.output_stride`` on ``model.arch`` builds a dilated ResNet; on ``model.init`` it re-strides the
    loaded weights unchanged; on a ViT it is a one-line error."""
    base = ["model.arch=resnet18", "data.image_size=96", "model.output_stride=16"]
    built = build_encoder(load_config(PretrainConfig, None, base))
    assert built.arch.output_stride == 16 and built.pyramid_strides([4]) == [16]
    source = perturbed(build_resnet("resnet18", img_size=96), 2)
    export_backbone(source, tmp_path, extra={"method": "test"})
    started = build_encoder(load_config(PretrainConfig, None, [*base, f"model.init={tmp_path}"]))
    assert started.training and started.arch.output_stride == 16
    for key, value in source.state_dict().items():
        torch.testing.assert_close(started.state_dict()[key], value)
    with torch.no_grad():
        assert tuple(started.eval().forward_features(_images(96)).shape) == (2, 512, 6, 6)
    vit = tmp_path / "vit"
    export_backbone(
        build_backbone("vit_tiny_patch16_224", img_size=32, depth=1), vit, extra={"method": "test"}
    )
    with pytest.raises(
        ConfigError, match="model.output_stride dilates a ResNet; model.init=.* holds a MaskedViT"
    ):
        build_encoder(load_config(PretrainConfig, None, [*base, f"model.init={vit}"]))
