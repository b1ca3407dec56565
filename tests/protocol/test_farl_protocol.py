"""FaRL's downstream protocol, pinned choice by choice (facerep issue 9; github FacePerceiver/FaRL).

One test per detail a faithful reproduction needs (/work/shared/README.md section 3); changing any of
them fails the test named after it:

1. SyncBatchNorm in the FPN adapters and the UPerNet head under multi-GPU DDP (CPU/gloo: off, said once).
2. The learning rate: constant, x0.1 at epoch 200 (MultiStepLR called per epoch).
3. Parsing: crops at 512, the ViT at 448 (28 x 28 tokens), logits back at 512.
4. The FPN gets raw block outputs (no final norm, not even on the last block).
5. Heatmap targets at 128 x 128 (FaRL's kernel, sigma 1.25 px) and BCE on logits upsampled to 128.
6. The UPerNet classifier: Dropout2d(0.1) and torch's default Conv2d init (mmseg's normal(0.01) is applied
   only by init_weights(), which FaRL never calls; head.classifier_std=0.01 applies it); mmcv's conv init.
7. The AFLW-19 AUC/FR grid np.arange(0, 0.0701, 1e-4).
8. WFLW boxes: the HRNet lists' square box, whichever annotation layout was read.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import facerep.train.finetune as finetune_module
from facerep.backbones.vit import MaskedViT, build_vit
from facerep.config import FinetuneConfig, load_config
from facerep.data.downstream import WFLW, build_dataset
from facerep.metrics.landmarks import ced_auc_fr
from facerep.models.batchnorm import GlobalBatchNorm, sync_batchnorm
from facerep.models.dense import UPerHead
from facerep.runtime.distributed import init_distributed
from facerep.tasks import build_task
from facerep.tasks.alignment import gaussian_heatmaps, soft_argmax
from facerep.train.finetune import Finetuner, finetune_backbone, lr_schedule, sync_batchnorm_wanted

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FARL_RECIPES = ("aflw19", "wflw", "300w", "lapa", "celebamask_hq")
TINY = [
    "backbone=random", "backbone_arch=vit_tiny_patch16_224", "data.image_size=64", "data.num_workers=0",
    "data.options.size=64", "data.train_options.length=8", "data.test_options.length=4",
    "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=2", "train.batch_size=4",
    "train.progress=log",
]  # fmt: skip


def recipe(name: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, CONFIGS / f"finetune_{name}.yaml")


def tiny_tuner(tmp_path: Path, *overrides: str) -> Finetuner:
    """A CPU Finetuner on synthetic faces with a random ViT-Tiny at 64 px."""
    cfg = load_config(FinetuneConfig, None, [*TINY, f"output_dir={tmp_path}", *overrides])
    return Finetuner(cfg, init_distributed("cpu"))


# ---------------------------------------------------------------------------------------------- 1


def test_sync_batchnorm_in_fpn_adapters_and_upernet_under_multi_process_ddp(tmp_path, monkeypatch):
    assert load_config(FinetuneConfig).train.sync_bn == "auto"
    assert all(recipe(name).train.sync_bn == "auto" for name in FARL_RECIPES)
    assert sync_batchnorm_wanted("auto", 8) and sync_batchnorm_wanted("true", 2)
    assert not sync_batchnorm_wanted("false", 8)
    assert not sync_batchnorm_wanted("auto", 1)  # one process: nothing to synchronise
    # when it applies, every BatchNorm of the trunk (FPN adapters, UPerNet) and of the EMA copy spans every
    # process: facerep's GlobalBatchNorm on CPU / gloo, torch's SyncBatchNorm on GPUs
    monkeypatch.setattr(finetune_module, "sync_batchnorm_wanted", lambda *args: True)
    tuner = tiny_tuner(tmp_path)
    for model in (tuner.model, tuner.ema):
        dense = model.dense
        assert isinstance(dense.adapters.up4[1], GlobalBatchNorm)
        assert isinstance(dense.head.fuse[1], GlobalBatchNorm)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, GlobalBatchNorm) for m in norms)
    on_gpu = sync_batchnorm(copy.deepcopy(tuner.model.dense), torch.device("cuda", 0))  # conversion only
    assert isinstance(on_gpu.head.fuse[1], nn.SyncBatchNorm)


# ---------------------------------------------------------------------------------------------- 2


def test_learning_rate_is_constant_then_x0_1_at_epoch_200_as_multisteplr(tmp_path):
    cfg = load_config(FinetuneConfig)
    assert (cfg.train.schedule, cfg.train.milestones, cfg.train.gamma, cfg.train.warmup_epochs) == (
        "step",
        [200],
        0.1,
        0.0,
    )
    for name in FARL_RECIPES:
        train = recipe(name).train
        assert (train.schedule, train.milestones, train.gamma, train.warmup_epochs) == ("step", [200], 0.1, 0)
    # FaRL: torch.optim.lr_scheduler.MultiStepLR(milestones=[200], gamma=0.1), stepped once per epoch
    steps_per_epoch, epochs = 3, 250
    schedule = lr_schedule(cfg, steps_per_epoch)
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-4)
    farl = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[200], gamma=0.1)
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            ours = 1e-4 * schedule.at(epoch * steps_per_epoch + i, epochs * steps_per_epoch)
            assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        farl.step()
    # the fine-tuning loop applies it to every group (backbone 1e-4, head 1e-2), as a function of the step
    tuner = tiny_tuner(tmp_path, "train.milestones=[1]")  # 2 steps per epoch: step 2 is in epoch 2
    batch = next(iter(tuner._train_loader(1)))
    tuner._step(batch, 2)
    assert {g["base_lr"] for g in tuner.optimizer.param_groups} == {1e-4, 1e-2}
    for group in tuner.optimizer.param_groups:
        assert group["lr"] == pytest.approx(group["base_lr"] * 0.1, rel=1e-12)


# ---------------------------------------------------------------------------------------------- 3


def test_parsing_runs_the_vit_at_448_and_scores_logits_at_512():
    for name in ("lapa", "celebamask_hq"):
        data = recipe(name).data
        assert (data.image_size, data.backbone_size) == (512, 448)
    cfg = load_config(FinetuneConfig, None, [
        "task=parsing", "dataset=synthetic_parsing", "backbone=random", "backbone_arch=vit_tiny_patch16_224",
        "data.image_size=512", "data.backbone_size=448", "head.channels=8",
    ])  # fmt: skip
    torch.manual_seed(0)
    backbone = finetune_backbone(cfg)
    assert backbone.arch.img_size == 448 and backbone.pos_embed.shape[1] == 1 + 28 * 28
    task = build_task(cfg)
    model = task.build_model(backbone, build_dataset("synthetic_parsing", None, "test", size=64, length=1))
    seen = {}
    backbone.patch_embed.register_forward_hook(lambda m, args, out: seen.update(input=args[0].shape))
    backbone.blocks[3].register_forward_hook(lambda m, args, out: seen.update(tokens=out.shape))
    images = torch.randn(2, 3, 512, 512)
    loss, _ = task.loss(model, {"image": images, "mask": torch.zeros(2, 512, 512, dtype=torch.long)})
    assert seen["input"] == (2, 3, 448, 448) and seen["tokens"][1] == 1 + 28 * 28
    assert model(images).shape[-2:] == (512, 512) and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- 4


def test_fpn_is_fed_raw_block_outputs_at_every_level():
    assert MaskedViT.default_levels == (3, 5, 7, 11)
    torch.manual_seed(0)
    vit = build_vit("vit_tiny_patch16_224", img_size=32, depth=4, embed_dim=64, num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    levels = [0, 1, 2, 3]  # 3 is the last block
    maps = vit.forward_pyramid(x, levels)
    tokens = vit.forward_block_tokens(x, levels)  # raw, before the final norm
    for level, tok in zip(maps, tokens, strict=True):
        assert torch.equal(level, tok[:, 1:].transpose(1, 2).reshape(2, 64, 2, 2))
    normed = vit.norm(tokens[-1])[:, 1:].transpose(1, 2).reshape(2, 64, 2, 2)
    assert not torch.allclose(maps[-1], normed, atol=1e-3)


# ---------------------------------------------------------------------------------------------- 5


def farl_heatmap(point: tuple[float, float], size: int, radius: float) -> np.ndarray:
    """FaRL's points2heatmap for one normalised point, written out: p2i ``gaussian_awing`` (max-reduced)
    at ``denormalize_points`` (``p * size - 0.5``), ``exp(-r^2 * 16 / 2 / radius^2)`` for ``r <= radius``."""
    px, py = point[0] * size - 0.5, point[1] * size - 0.5
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            r = math.hypot(x - px, y - py)
            if r <= radius:
                out[y, x] = math.exp(-r * r * 16 / 2 / radius / radius)
    return out


def test_heatmap_targets_at_128_with_farls_kernel_and_bce_on_logits_upsampled_to_128():
    cfg = load_config(FinetuneConfig)
    assert (cfg.head.heatmap_size, cfg.head.heatmap_sigma, cfg.head.heatmap_weight) == (128, 1.25, 1.0)
    for name in ("aflw19", "wflw", "300w"):
        assert (recipe(name).head.heatmap_size, recipe(name).head.heatmap_sigma) == (128, 1.25)
    point = (0.3037, 0.6121)
    maps = gaussian_heatmaps(torch.tensor([[point]]), (128, 128), sigma=1.25)  # FaRL: heatmap_radius 5.0
    np.testing.assert_allclose(maps[0, 0].numpy(), farl_heatmap(point, 128, 5.0), atol=1e-6, rtol=0)
    # the BCE compares the head's 112 x 112 logits, upsampled bilinearly (align_corners=False), at 128
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 112, 112), torch.rand(2, 3, 2)
    task = build_task(cfg)  # alignment
    _, terms = task.loss(
        lambda images: {"heatmaps": logits, "landmarks": soft_argmax(logits)},
        {"image": torch.zeros(2, 3, 448, 448), "landmarks": target},
    )
    targets = gaussian_heatmaps(target, (128, 128), 1.25)

    def bce(align_corners: bool) -> torch.Tensor:
        up = F.interpolate(logits, size=(128, 128), mode="bilinear", align_corners=align_corners)
        return F.binary_cross_entropy_with_logits(up, targets)

    assert terms["heatmap_bce"] == pytest.approx(bce(False).item(), rel=1e-6)
    assert terms["heatmap_bce"] != pytest.approx(bce(True).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- 6


def test_upernet_classifier_has_dropout2d_0_1_and_torchs_default_init():
    cfg = load_config(FinetuneConfig)
    assert cfg.head.dropout == 0.1 and all(recipe(name).head.dropout == 0.1 for name in FARL_RECIPES)
    vit = build_vit("vit_tiny_patch16_224", img_size=32, depth=4, embed_dim=64, num_heads=2)
    model = build_task(load_config(FinetuneConfig, None, ["head.blocks=[0,1,2,3]", "head.channels=16"]))
    head = model.build_model(vit, SimpleNamespace(num_points=5)).dense.head
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert (
        all(recipe(name).head.classifier_std is None for name in FARL_RECIPES) and not cfg.head.classifier_std
    )
    torch.manual_seed(0)
    head = UPerHead([64] * 4, channels=256, out_channels=64)
    # FaRL's MMSEG_UPerHead never calls mmseg's init_weights(): conv_seg keeps nn.Conv2d's own init,
    # kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for the weight and the bias alike
    weight, bias = head.classifier.weight, head.classifier.bias
    bound = 1 / math.sqrt(256)
    assert weight.abs().max().item() <= bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert bias.abs().max().item() <= bound and bias.abs().min().item() > 0
    normal = UPerHead([64] * 4, channels=256, out_channels=64, classifier_std=0.01).classifier  # mmseg's
    assert abs(normal.weight.std().item() - 0.01) < 5e-4 and abs(normal.weight.mean().item()) < 5e-4
    assert torch.equal(normal.bias, torch.zeros_like(normal.bias))
    model = build_task(load_config(FinetuneConfig, None, [
        "head.blocks=[0,1,2,3]", "head.channels=16", "head.classifier_std=0.01",
    ])).build_model(vit, SimpleNamespace(num_points=5))  # fmt: skip
    assert not model.dense.head.classifier.bias.any()
    fuse = head.fuse[0].weight  # mmcv ConvModule: kaiming normal, fan_out, relu; no bias before the BN
    assert head.fuse[0].bias is None
    assert fuse.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)
    # the dropout's output is what the classifier sees
    seen = {}
    head.dropout.register_forward_hook(lambda m, args, out: seen.update(dropped=out))
    head.classifier.register_forward_pre_hook(lambda m, args: seen.update(classified=args[0]))
    head.train()([torch.randn(2, 64, side, side) for side in (16, 8, 4, 2)])
    assert seen["classified"] is seen["dropped"]
    zeroed = (seen["dropped"].abs().sum(dim=(2, 3)) == 0).float().mean().item()
    assert 0.03 < zeroed < 0.2  # whole channels, p = 0.1


# ---------------------------------------------------------------------------------------------- 7


def farl_auc_by_hand(nmes: np.ndarray) -> tuple[float, float]:
    """FaRL's AFLW-19 AUC/FR (``scorer.py`` ``AUC_FR``, threshold 0.07, step 1e-4): CED on
    ``np.arange(0., 0.07 + 1e-4, 1e-4)`` -- 702 nodes ending at 0.0701 (the literal
    ``np.arange(0, 0.0701, 1e-4)`` would stop at 0.07) -- integrated by scipy<1.11 ``simps``, whose
    ``even='avg'`` is the mean of (Simpson on the first 701 nodes + last trapezoid) and (first trapezoid
    + Simpson on the last 701), divided by 0.07; FR = 1 - CED(0.0701)."""
    grid = np.arange(0.0, 0.07 + 1e-4, 1e-4)
    assert len(grid) == 702 and grid[-1] == pytest.approx(0.0701, abs=1e-15)
    ced = np.array([(nmes <= x).mean() for x in grid])
    h = 1e-4

    def simpson(y: np.ndarray) -> float:  # composite Simpson, odd number of nodes
        w = np.ones(len(y))
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        return h / 3 * float(w @ y)

    first = simpson(ced[:-1]) + h / 2 * (ced[-2] + ced[-1])
    last = h / 2 * (ced[0] + ced[1]) + simpson(ced[1:])
    return (first + last) / 2 / 0.07, 1.0 - ced[-1]


class AFLW19TestSplit:
    """What the alignment task's evaluation reads of an AFLW-19 test split (box-based NME unit)."""

    nme_unit = "diag"

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def subsets(self) -> dict[str, np.ndarray]:
        return {"full": np.arange(self.size)}


def test_aflw19_auc_and_fr_on_farls_grid_ending_at_0_0701():
    # one image just above 7 %: a success at 0.0701, so FR = 0; only the last node has CED 1:
    # avg of (0 + h/2) and (0 + h/3) = 5h/12
    assert ced_auc_fr([0.07005], 0.07) == (pytest.approx(5e-4 / 12 / 0.07, abs=1e-13), 0.0)
    # a realistic spread: scipy>=1.11's simpson (Cartwright's rule for an even count) is off by ~1.5e-5
    spread = np.random.default_rng(0).gamma(2.0, 0.02, size=300)
    assert ced_auc_fr(spread, 0.07) == pytest.approx(farl_auc_by_hand(spread), abs=1e-12)
    # the AFLW-19 path of the alignment task (box-normalised NME at 7 %) uses exactly that grid
    nmes = np.array([0.0123, 0.031, 0.07005, 0.2, 0.05])
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 80, (len(nmes), 19, 2))
    boxes = np.array([[10.0, 12.0, 90.0, 100.0]] * len(nmes))
    unit = math.sqrt(80 * 88)  # box NME: sqrt(w * h)
    angle = rng.uniform(0, 2 * math.pi, len(nmes))
    shift = np.stack([np.cos(angle), np.sin(angle)], axis=-1) * (nmes * unit)[:, None]
    pred_px = truth + shift[:, None, :]
    size = 448
    batch = {
        "image": torch.zeros(len(nmes), 3, 8, 8),
        "crop_to_image": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat(len(nmes), 1, 1),
        "orig_landmarks": torch.tensor(truth, dtype=torch.float32),
        "orig_box": torch.tensor(boxes, dtype=torch.float32),
        "index": torch.arange(len(nmes)),
    }
    pred01 = torch.tensor((pred_px + 0.5) / size, dtype=torch.float64)  # crop pixel -> [0, 1]
    task = build_task(load_config(FinetuneConfig, None, [f"data.image_size={size}"]))
    model = lambda images: {"landmarks": pred01}  # noqa: E731
    scores = task.evaluate(model, [batch], AFLW19TestSplit(len(nmes)), torch.device("cpu"))["full"]
    auc, fr = farl_auc_by_hand(nmes)
    assert fr == pytest.approx(0.2)  # 0.2 fails; 0.07005 does not (it would on a grid ending at 0.07)
    assert scores["fr_box@0.07"] == pytest.approx(fr, abs=1e-12)
    assert scores["auc_box@0.07"] == pytest.approx(auc, abs=1e-9)


# ---------------------------------------------------------------------------------------------- 8


def test_wflw_boxes_are_the_hrnet_square_whatever_the_layout(tmp_path):
    name = "1--Handshaking/a.jpg"
    (tmp_path / "WFLW_images" / "1--Handshaking").mkdir(parents=True)
    Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(tmp_path / "WFLW_images" / name, format="PNG")
    points = np.random.default_rng(1).uniform(12, 38, (98, 2)).round(3)
    rect = [10, 12, 30, 40]  # official x_min y_min x_max y_max: 20 wide, 28 high, centre (20, 26)
    official = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    official.mkdir(parents=True)
    fields = [f"{v:.3f}" for v in points.reshape(-1)] + [str(v) for v in rect] + ["0"] * 6 + [name]
    (official / "list_98pt_rect_attr_test.txt").write_text(" ".join(fields) + "\n")
    header = ",".join(["image_name", "scale", "center_w", "center_h"] + [f"p{i}" for i in range(196)])
    row = ",".join([name, "0.14", "20.0", "26.0", *(f"{v:.3f}" for v in points.reshape(-1))])
    (tmp_path / "face_landmarks_wflw_test.csv").write_text(f"{header}\n{row}\n")
    square = [20 - 14, 26 - 14, 20 + 14, 26 + 14]  # centre +- 100 * scale, scale = max(w, h) / 200 = 0.14
    for layout in ("official", "hrnet"):
        np.testing.assert_allclose(WFLW(tmp_path, "test", layout=layout)[0]["box"], square, rtol=1e-6)
