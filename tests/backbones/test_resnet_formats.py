"""ResNet backbones from the self-supervised field's training checkpoints, in their original layouts.

Each file is written the way the original code writes it (key names checked against the sources: FRA
zaczgao/Facial_Region_Awareness main.py, models/fra.py, utils/extract_backbone.py; facebookresearch/moco
and moco-v3 main_moco.py, moco/builder.py; yaox12/BYOL-PyTorch trainer/byol_trainer.py; vturrisi/solo-learn
solo/methods/base.py), with an online backbone, a differently perturbed target copy and the heads, so
that reading the wrong network fails the feature comparison.
"""

from __future__ import annotations

import copy
import itertools
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import Tensor, nn

from facerep.backbones import load_backbone, read_backbone_state
from facerep.backbones.resnet import ResNet
from facerep.commands.cli import main
from facerep.config import ConfigError, FinetuneConfig, load_config
from facerep.runtime.checkpoint import CheckpointError
from facerep.train import finetune as finetune_module
from facerep.train.finetune import finetune_backbone
from resnet_files import perturbed

State = dict[str, Tensor]
R18 = "resnet18 (layers [2, 2, 2, 2], basic blocks)"


def _resnet18(seed: int) -> nn.Module:
    """torchvision's ResNet-18 with random weights."""
    return perturbed(torchvision.models.resnet18(), seed)


def _state(model: nn.Module, prefix: str) -> State:
    return {f"{prefix}{k}": v for k, v in model.state_dict().items()}


def _mlp(prefix: str, seed: int, sizes: tuple[int, ...] = (512, 32, 16), conv1d: bool = False) -> State:
    """A projector / predictor: Linear (or FRA's 1x1 Conv1d), BatchNorm, ReLU, Linear (``mlp.0``, ``.1``,
    ``.3``)."""
    first, second = (nn.Conv1d(a, b, 1) if conv1d else nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    return _state(perturbed(nn.Sequential(first, nn.BatchNorm1d(sizes[1]), nn.ReLU(), second), seed), prefix)


def _optimizer_state() -> dict:
    """A real optimizer state dict (ints, floats, momentum buffers)."""
    layer = nn.Linear(4, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    layer(torch.ones(1, 4)).sum().backward()
    opt.step()
    return opt.state_dict()


SCALER = torch.amp.GradScaler("cpu").state_dict()


def _reference(online: nn.Module) -> nn.Module:
    """torchvision's ResNet-18 holding the online backbone, without classifier, in eval mode."""
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    state = {k: v for k, v in online.state_dict().items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _assert_online(path: Path, online: nn.Module, fmt: str) -> None:
    assert read_backbone_state(path)[1] == fmt
    loaded = load_backbone(path)
    assert isinstance(loaded, ResNet) and loaded.arch.name == "resnet18" and not loaded.training
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded.pooled(x), _reference(online)(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- the layouts
def _fra_neck(prefix: str, seed: int) -> State:
    """FRA's ObjectNeck: MLP1D projectors, the mask-query transformer decoder, the ``proto`` buffer."""
    sd = _mlp(f"{prefix}proj.mlp.", seed, conv1d=True)
    sd |= _mlp(f"{prefix}proj_pixel.mlp.", seed + 1, conv1d=True)
    sd |= _mlp(f"{prefix}proj_obj.mlp.", seed + 2, conv1d=True)
    gen = torch.Generator().manual_seed(seed)
    for key, shape in {
        "proj_attn.query_embed.weight": (8, 16),
        "proj_attn.transformer.decoder.layers.0.self_attn.in_proj_weight": (48, 16),
        "proj_attn.transformer.decoder.layers.0.linear1.weight": (16, 16),
        "proj_attn.transformer.decoder.norm.weight": (16,),
        "proj_attn.mask_embed.layers.0.weight": (16, 16),
        "proto": (8, 16),
    }.items():
        sd[f"{prefix}{key}"] = torch.randn(shape, generator=gen)
    return sd


def write_fra(path: Path, online: nn.Module, target: nn.Module) -> Path:
    """FRA's ``checkpoint_XXXX.pth.tar``: the DDP state dict of FRAB (online_net / target_net backbone +
    neck, predictors, the ``encoder_q`` alias of the online backbone, ``center``) and the training state."""
    sd = _state(online, "module.online_net.backbone.") | _fra_neck("module.online_net.neck.", 10)
    sd |= _state(target, "module.target_net.backbone.") | _fra_neck("module.target_net.neck.", 20)
    sd |= _mlp("module.predictor.mlp.", 30, (16, 32, 16), conv1d=True)
    sd |= _mlp("module.predictor_obj.mlp.", 31, (16, 32, 16), conv1d=True)
    sd |= _state(online, "module.encoder_q.")  # self.encoder_q = self.online_net.backbone
    sd["module.center"] = torch.zeros(1, 8)
    obj = {"epoch": 100, "arch": "FRAB", "state_dict": sd, "best_acc1": 97.25,
           "optimizer": _optimizer_state(), "scaler": SCALER}  # fmt: skip
    torch.save(obj, path)
    return path


def extract_backbone(src: Path, dst: Path) -> Path:
    """FRA's ``utils/extract_backbone.py``, line for line (legacy, non-zip serialization)."""
    obj = torch.load(src, map_location="cpu", weights_only=True)["state_dict"]
    newmodel = {}
    for k, v in obj.items():
        if not (k.startswith("module.encoder_q.backbone") or k.startswith("module.online_net.backbone")) or (
            "fc" in k
        ):
            continue
        k = k.replace("backbone.", "").replace("module.encoder_q.", "").replace("module.online_net.", "")
        newmodel[k] = v
    with open(dst, "wb") as f:
        torch.save(newmodel, f, _use_new_zipfile_serialization=False)
    return dst


def write_moco(path: Path, online: nn.Module, target: nn.Module) -> Path:
    """MoCo v2 (``--mlp``): ``module.encoder_q`` / ``encoder_k`` with the MLP in ``fc``, the queue."""
    sd = _state(online, "module.encoder_q.") | _state(target, "module.encoder_k.")
    sd |= {"module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": _optimizer_state()}, path)
    return path


def _moco_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))


def _mocov3_mlp() -> nn.Module:
    """moco-v3's ``_build_mlp(2, 512, mlp_dim, dim)`` in a ResNet's ``fc``."""
    return nn.Sequential(nn.Linear(512, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
                         nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32, affine=False))  # fmt: skip


def write_mocov3(path: Path, online: nn.Module, target: nn.Module) -> Path:
    """MoCo v3 ResNet: ``module.base_encoder`` (projector in ``fc``), ``momentum_encoder``, ``predictor``."""
    sd = _state(online, "module.base_encoder.") | _state(target, "module.momentum_encoder.")
    sd |= _mlp("module.predictor.", 40, (32, 64, 32))
    obj = {
        "epoch": 100,
        "arch": "resnet18",
        "state_dict": sd,
        "optimizer": _optimizer_state(),
        "scaler": SCALER,
    }
    torch.save(obj, path)
    return path


def write_solo_learn(path: Path, online: nn.Module, target: nn.Module) -> Path:
    """A solo-learn (PyTorch Lightning) BYOL checkpoint: ``backbone`` (fc = Identity) and its momentum copy,
    projectors, predictor, the online linear classifier, and Lightning's training state."""
    sd = _state(online, "backbone.") | _state(target, "momentum_backbone.")
    sd |= _mlp("projector.", 50) | _mlp("momentum_projector.", 51) | _mlp("predictor.", 52, (16, 32, 16))
    sd |= {"classifier.weight": torch.randn(10, 512), "classifier.bias": torch.zeros(10)}
    obj = {
        "epoch": 9, "global_step": 1000, "pytorch-lightning_version": "2.0.2", "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 10, "completed": 9}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "best_model_path": ""}},
        "optimizer_states": [_optimizer_state()],
        "lr_schedulers": [{"base_lrs": [0.1], "last_epoch": 9, "_step_count": 10, "verbose": False}],
    }  # fmt: skip
    torch.save(obj, path)
    return path


def write_byol_yaox12(path: Path, online: nn.Module, target: nn.Module) -> Path:
    """yaox12/BYOL-PyTorch: BYOLModel under apex DDP; the encoder is ``nn.Sequential`` of torchvision's
    children without ``fc`` (``online_network.encoder.0`` = conv1, ``.4`` = layer1, ...)."""
    children = {
        f"module.{net}_network.encoder.": nn.Sequential(*list(model.children())[:-1])
        for net, model in (("online", online), ("target", target))
    }
    sd = {f"{prefix}{k}": v for prefix, seq in children.items() for k, v in seq.state_dict().items()}
    for i, net in enumerate(("online", "target")):  # the projector is "projetion" (sic) in the original
        gen = torch.Generator().manual_seed(i)
        for layer, shape in (("l1.weight", (32, 512)), ("bn1.weight", (32,)), ("l2.weight", (16, 32))):
            sd[f"module.{net}_network.projetion.{layer}"] = torch.randn(shape, generator=gen)
    sd |= {"module.predictor.predictor.l1.weight": torch.randn(32, 16)}
    config = {"model": {"backbone": {"type": "resnet18", "pretrained": False}}, "amp": {"opt_level": "O0"}}
    obj = {"config": config, "epoch": 10, "steps": 5000, "model": sd, "optimizer": _optimizer_state(),
           "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}}  # fmt: skip
    torch.save(obj, path)
    return path


LAYOUTS: dict[str, tuple[Callable[[Path, nn.Module, nn.Module], Path], Callable[[], nn.Module] | None]] = {
    # format: (writer, what replaces torchvision's fc in the online/target networks; None: kept, the writer
    # drops it)
    "fra": (write_fra, nn.Identity),
    "moco": (write_moco, _moco_mlp),
    "mocov3": (write_mocov3, _mocov3_mlp),
    "solo-learn": (write_solo_learn, nn.Identity),
    "byol-yaox12": (write_byol_yaox12, None),
}


_TRUNKS: list[nn.Module] = []


def _networks(fc: Callable[[], nn.Module] | None) -> tuple[nn.Module, nn.Module]:
    """The online and the target network: ResNet-18s of different weights (built once, copied), with
    ``fc`` (perturbed) in place of torchvision's classifier."""
    if not _TRUNKS:
        _TRUNKS.extend(_resnet18(seed) for seed in (1, 2))
    pair = []
    for seed, trunk in enumerate(_TRUNKS):
        model = copy.deepcopy(trunk)
        if fc is not None:
            model.fc = perturbed(fc(), 10 + seed)
        pair.append(model.eval())
    return pair[0], pair[1]


@pytest.fixture(scope="module")
def fra_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """An FRA checkpoint of a ResNet-18 and its online network."""
    online, target = _networks(nn.Identity)
    return write_fra(tmp_path_factory.mktemp("fra") / "checkpoint_0099.pth.tar", online, target), online


@pytest.mark.parametrize("fmt", sorted(LAYOUTS))
def test_each_layout_loads_its_online_backbone(tmp_path: Path, fmt: str) -> None:
    write, fc = LAYOUTS[fmt]
    online, target = _networks(fc)
    path = write(tmp_path / "checkpoint_0099.pth.tar", online, target)
    _assert_online(path, online, fmt)


def test_fra_extract_backbone_legacy_file_loads_as_a_plain_resnet(
    tmp_path: Path, fra_file: tuple[Path, nn.Module]
) -> None:
    fra, online = fra_file
    path = extract_backbone(fra, tmp_path / "fra_r18.pth")
    assert not zipfile.is_zipfile(path)  # torch.save(..., _use_new_zipfile_serialization=False)
    keys = torch.load(path, weights_only=True).keys()
    assert "conv1.weight" in keys and not any("fc" in k or "neck" in k or "target" in k for k in keys)
    _assert_online(path, online, "resnet")


def test_arch_check_is_a_one_line_error_naming_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(_networks(None)[0].state_dict(), path)  # torchvision's, with fc
    assert load_backbone(path, arch="resnet18").arch.name == "resnet18"
    for asked in ("resnet50", "resnet34", "vit_base_patch16_224"):
        with pytest.raises(CheckpointError) as info:
            load_backbone(path, arch=asked)
        assert str(info.value) == f"{path}: holds {R18}, asked for {asked}"
    with pytest.raises(ConfigError, match="unknown ResNet architecture 'resnet26'"):
        load_backbone(path, arch="resnet26")

    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, num_classes=0
    )  # 192 wide, 12 blocks, 3 heads
    vit_path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), vit_path)
    assert load_backbone(vit_path, arch="vit_tiny_patch16_224").arch.img_size == 32  # the input size is free
    with pytest.raises(CheckpointError) as info:
        load_backbone(vit_path, arch="resnet50")
    shape = "embed_dim 192, depth 12, num_heads 3, patch_size 16"
    assert str(info.value) == f"{vit_path}: holds a vit ({shape}), asked for resnet50"
    with pytest.raises(
        CheckpointError, match=r"holds a vit \(embed_dim 192, .*asked for vit_small_patch16_224"
    ):
        load_backbone(vit_path, arch="vit_small_patch16_224")


def test_unknown_layout_and_target_only_files_are_one_line_errors(tmp_path: Path) -> None:
    student, teacher = _networks(nn.Identity)
    unknown = tmp_path / "dino.pth"
    torch.save(
        {"student": _state(student, "module.backbone."), "teacher": _state(teacher, "backbone.")}, unknown
    )
    with pytest.raises(CheckpointError) as info:
        load_backbone(unknown)
    message = str(info.value)
    assert (
        message.startswith(f"{unknown}: unrecognised checkpoint layout; expected one of: ")
        and "\n" not in message
    )
    assert "FRA checkpoint_XXXX.pth.tar ('online_net.backbone.*', not 'target_net.backbone.*')" in message
    assert "top-level keys: ['student', 'teacher']" in message

    # a MoCo file without its query encoder: the key encoder is never taken in its place
    online, target = _networks(_moco_mlp)
    moco = write_moco(tmp_path / "moco.pth.tar", online, target)
    obj = torch.load(moco, weights_only=True)
    obj["state_dict"] = {k: v for k, v in obj["state_dict"].items() if not k.startswith("module.encoder_q.")}
    torch.save(obj, moco)
    with pytest.raises(CheckpointError) as info:
        load_backbone(moco)
    assert str(info.value).startswith(f"{moco}: a moco checkpoint without its online backbone 'encoder_q.*'")
    assert "'encoder_k.*'" in str(info.value)


def test_finetune_checks_backbone_arch_against_the_file(
    tmp_path: Path,
    fra_file: tuple[Path, nn.Module],
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = fra_file[0]
    args = [
        "task=classification", "dataset=synthetic_attributes", f"backbone={path}", "data.image_size=32",
        "data.num_workers=0", "data.options.size=32", "data.train_options.length=4",
        "data.test_options.length=2",
    ]  # fmt: skip
    assert main(["finetune", *args, "backbone_arch=resnet50", f"output_dir={tmp_path / 'ft'}"]) == 2
    assert capsys.readouterr().err == f"facerep: error: {path}: holds {R18}, asked for resnet50\n"
    for arch in ("backbone_arch=resnet18", "backbone_arch=null"):
        backbone = finetune_backbone(load_config(FinetuneConfig, None, [*args, arch]))
        assert isinstance(backbone, ResNet) and backbone.arch.name == "resnet18"

    built: list[str] = []
    monkeypatch.setattr(
        finetune_module, "build_backbone", lambda arch, img_size: built.append(arch) or nn.Identity()
    )
    for arch, expected in (([], "vit_base_patch16_224"), (["backbone_arch=resnet50"], "resnet50")):
        finetune_backbone(load_config(FinetuneConfig, None, ["backbone=random", *arch]))
        assert built.pop() == expected  # backbone=random without backbone_arch: ViT-B/16, as before
