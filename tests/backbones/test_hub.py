"""Named architectures and checkpoints (create_model), the Hugging Face Hub layout (save_pretrained /
from_pretrained through huggingface_hub's PyTorchModelHubMixin), timm's layout, and
``facerep export backbone=... format=hf|timm``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
import pytest
import safetensors
import safetensors.torch
import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

import facerep
from clip_files import openai_state
from facerep.backbones import ARCHITECTURES, CHECKPOINTS, CheckpointError, build_backbone, load_backbone
from facerep.backbones.hub import (
    HubResNet,
    HubViT,
    create_model,
    export_timm,
    from_pretrained,
    load_timm,
    registry_table,
    save_pretrained,
)
from facerep.backbones.io import export_backbone
from facerep.backbones.resnet import ResNetArch, build_resnet
from facerep.backbones.vit import CLIP_TOWER, MaskedViT, ViTArch, build_vit
from facerep.commands.cli import main
from facerep.config import ConfigError
from resnet_files import perturbed

DOCS = Path(__file__).resolve().parents[2] / "docs" / "weights.md"


def _vit(**fields: object) -> nn.Module:
    torch.manual_seed(0)
    return perturbed(build_vit(ViTArch(64, 2, 1, 16, 32, **fields)), 1)


def _clip_tower(tmp_path: Path) -> nn.Module:
    """A FaRL-layout file's image tower (pre-norm, QuickGELU, eps 1e-5, learned positions)."""
    path = tmp_path / "farl.pth"
    torch.save({"state_dict": openai_state()}, path)
    return load_backbone(path)


FAMILIES: dict[str, Callable[[Path], nn.Module]] = {
    "vit": lambda tmp: _vit(),
    "vit-layer-scale": lambda tmp: _vit(layer_scale=1.0),
    "clip-tower": _clip_tower,
    "resnet-basic": lambda tmp: perturbed(build_resnet(ResNetArch((1, 1, 1, 1), False), img_size=32), 2),
    "resnet-bottleneck": lambda tmp: perturbed(build_resnet(ResNetArch((1, 2, 1, 1), True), img_size=32), 3),
}


def _x(model: nn.Module) -> torch.Tensor:
    size = model.arch.img_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


def _same(a: nn.Module, b: nn.Module) -> None:
    x = _x(a)
    with torch.no_grad():
        assert torch.equal(a.eval().forward_features(x), b.eval().forward_features(x))


class PlainHubViT(MaskedViT, PyTorchModelHubMixin):
    """What any huggingface_hub user writes: the mixin's own save/load, nothing from facerep.backbones.hub."""

    def __init__(self, arch: dict, family: str = "vit") -> None:
        super().__init__(ViTArch(**arch))


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_save_pretrained_round_trip(tmp_path: Path, kind: str) -> None:
    model = FAMILIES[kind](tmp_path)
    out = save_pretrained(model, tmp_path / "hub")
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["family"] == model.arch.family and config["arch"]["img_size"] == model.arch.img_size
    # safetensors reads the weights under the backbone's own key names
    assert safetensors.torch.load_file(str(out / "model.safetensors")).keys() == model.state_dict().keys()
    loaded = from_pretrained(out)
    assert isinstance(loaded, HubViT if model.arch.family == "vit" else HubResNet)
    assert loaded.arch == model.arch and not loaded.training
    _same(loaded, model)
    _same(load_backbone(out), model)  # the weights file alone records the architecture
    cls = HubViT if model.arch.family == "vit" else HubResNet
    _same(cls.from_pretrained(out, strict=True), model)  # the mixin's own from_pretrained
    _same(create_model("facerep", pretrained=out), model)


def test_huggingface_hub_mixin_reads_the_directory(tmp_path: Path) -> None:
    model = _vit()
    save_pretrained(model, tmp_path)
    plain = PlainHubViT.from_pretrained(tmp_path, strict=True)
    assert type(plain) is PlainHubViT
    _same(plain, model)
    # and a facerep directory saved by a Hub class itself (create_model's result) is the same layout
    created = create_model("resnet18")
    created.save_pretrained(tmp_path / "r18")
    assert json.loads((tmp_path / "r18" / "config.json").read_text())["arch"]["layers"] == [2, 2, 2, 2]
    _same(from_pretrained(tmp_path / "r18"), created)


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_timm_layout_loads_in_timm_and_facerep(tmp_path: Path, kind: str) -> None:
    model = FAMILIES[kind](tmp_path)
    out = export_timm(model, tmp_path / "timm")
    config = json.loads((out / "config.json").read_text())
    assert timm.is_model(config["architecture"]) and config["num_classes"] == 0
    in_timm = load_timm(out)
    assert not isinstance(in_timm, (MaskedViT, HubResNet))  # timm's own class
    assert in_timm.state_dict().keys() == model.state_dict().keys()
    _same(model, in_timm)
    _same(create_model("facerep", pretrained=out), model)


def test_create_model_by_name_is_random_and_seeded() -> None:
    torch.manual_seed(3)
    model = facerep.create_model("resnet18")
    torch.manual_seed(3)
    reference = build_backbone("resnet18")
    assert isinstance(model, HubResNet) and model.training
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )
    vit = create_model("vit_tiny_patch16", img_size=32)
    assert isinstance(vit, HubViT) and vit.arch.embed_dim == 192 and vit.arch.img_size == 32
    assert create_model("vit_tiny_patch16_64").arch.img_size == 64  # any name the family parses


def _mcf_file(tmp_path: Path, src: nn.Module) -> Path:
    sd = {f"online_encoder.{k}": v for k, v in src.state_dict().items()}
    sd |= {f"target_encoder.{k}": v + 1 for k, v in src.state_dict().items()}
    sd |= {"mask_token": torch.zeros(1, 1, 32), "decoder_pos_embed": torch.zeros(1, 10, 32)}
    torch.save({"model": sd}, tmp_path / "mcf.pth")
    return tmp_path / "mcf.pth"


def test_create_model_with_pretrained_files_in_each_layout(tmp_path: Path) -> None:
    vit, resnet = _vit(), perturbed(build_resnet("resnet18"), 4)
    mae = tmp_path / "mae.pth"
    torch.save({"model": {**vit.state_dict(), "mask_token": torch.zeros(1, 1, 8), "decoder_embed.weight":
                          torch.zeros(8, 64)}}, mae)  # fmt: skip
    fra = tmp_path / "checkpoint_0001.pth.tar"
    fra_sd = {f"module.online_net.backbone.{k}": v for k, v in resnet.state_dict().items()}
    fra_sd |= {f"module.target_net.backbone.{k}": v + 1 for k, v in resnet.state_dict().items()}
    torch.save({"state_dict": fra_sd, "epoch": 1}, fra)
    torch.save(vit.state_dict(), tmp_path / "timm.pth")
    torch.save(resnet.state_dict(), tmp_path / "torchvision.pth")
    farl = tmp_path / "farl.pth"
    torch.save({"state_dict": openai_state()}, farl)
    export_backbone(vit, tmp_path / "export")
    cases = [
        ("mcf", _mcf_file(tmp_path, vit), vit),
        ("mae", mae, vit),
        ("fra", fra, resnet),
        ("timm", tmp_path / "timm.pth", vit),
        ("timm", tmp_path / "torchvision.pth", resnet),
        ("farl", farl, load_backbone(farl)),
        ("facerep", tmp_path / "export", vit),
        ("resnet18", fra, resnet),  # an architecture name with weights: checked to be that architecture
    ]
    for name, path, reference in cases:
        model = create_model(name, pretrained=path)
        assert isinstance(model, HubViT | HubResNet), name
        _same(model, reference)
    with pytest.raises(CheckpointError, match=r"mae\.pth: a mae file, not a mcf checkpoint \(mcf\)"):
        create_model("mcf", pretrained=mae)
    with pytest.raises(CheckpointError, match="holds resnet18 .* asked for resnet50"):
        create_model("resnet50", pretrained=tmp_path / "torchvision.pth")
    with pytest.raises(ConfigError, match=r"create_model\('mcf'\) needs pretrained=PATH"):
        create_model("mcf")


def test_unknown_names_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        create_model("vit_gigantic_patch16")
    message = str(err.value)
    assert "\n" not in message and message.startswith("unknown model 'vit_gigantic_patch16'; architectures: ")
    assert all(name in message for name in [*ARCHITECTURES, *CHECKPOINTS])
    with pytest.raises(CheckpointError, match="no such file or directory") as err:
        create_model("resnet18", pretrained=tmp_path / "missing.pth")
    assert "\n" not in str(err.value)


def test_repo_id_from_the_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repo id resolves with snapshot_download against a pre-populated cache, offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model, commit = _vit(), "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-face-vit"
    save_pretrained(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = create_model("facerep", pretrained="someone/tiny-face-vit", cache_dir=tmp_path / "cache")
    _same(loaded, model)
    _same(from_pretrained("hf-hub:someone/tiny-face-vit", cache_dir=tmp_path / "cache"), model)
    with pytest.raises(
        CheckpointError, match="someone/absent: not a local path, and the Hugging Face Hub"
    ) as err:
        create_model("facerep", pretrained="someone/absent", cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_facerep_export_backbone_hf_and_timm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _vit(**CLIP_TOWER)
    path = tmp_path / "backbone.safetensors"
    export_backbone(model, tmp_path)
    assert main(["export", f"backbone={path}", "format=hf", f"output={tmp_path / 'hf'}"]) == 0
    assert "max abs diff 0" in capsys.readouterr().out
    _same(create_model("facerep", pretrained=tmp_path / "hf"), model)
    assert main(["export", f"backbone={path}", "format=timm", f"output={tmp_path / 'timm'}"]) == 0
    assert json.loads((tmp_path / "timm" / "config.json").read_text())["architecture"] == (
        "vit_base_patch16_clip_quickgelu_224"
    )
    _same(model, load_timm(tmp_path / "timm"))
    # a backbone is exported as hf or timm only, and those formats need a backbone
    assert main(["export", f"backbone={path}", "format=onnx", f"output={tmp_path / 'x'}"]) == 2
    assert main(["export", "format=hf", f"output={tmp_path / 'x'}"]) == 2
    assert "format=hf exports a backbone" in capsys.readouterr().err


def test_docs_list_every_registered_name() -> None:
    page = DOCS.read_text()
    missing = [name for name in [*ARCHITECTURES, *CHECKPOINTS] if f"`{name}`" not in page]
    assert not missing, f"docs/weights.md does not list {missing}"
    stale = [line for line in registry_table().splitlines() if line and line not in page]
    assert not stale, f"docs/weights.md's tables differ from registry_table(): {stale}"
