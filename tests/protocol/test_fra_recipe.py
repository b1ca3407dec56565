"""FRA's paper recipe and its transfer recipe carry the published values (README command of
zaczgao/Facial_Region_Awareness and ../shared/README.md section 4)."""

from pathlib import Path

import pytest

from facerep.config import FinetuneConfig, PretrainConfig, load_config
from facerep.methods import build_method
from facerep.methods.fra import FRA

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_paper_recipe_values():
    cfg = load_config(PretrainConfig, CONFIGS / "fra_resnet50.yaml")
    assert cfg.method == "fra" and cfg.model.arch == "resnet50" and cfg.data.image_size == 224
    t = cfg.train
    assert (t.optimizer, t.lr, t.weight_decay, t.momentum, t.global_batch, t.epochs) == (
        "lars",
        0.9,
        1e-6,
        0.9,
        512,
        50,
    )
    assert cfg.byol.momentum == 0.996 and (cfg.byol.proj_dim, cfg.byol.hidden_dim) == (256, 4096)
    assert (
        cfg.byol.crop_scale == [0.2, 1.0] and cfg.byol.blur == [1.0, 0.1] and cfg.byol.solarize == [0.0, 0.2]
    )
    f = cfg.fra
    assert (f.num_regions, f.global_weight, f.cluster_weight, f.teacher_temp, f.student_temp) == (
        8,
        0.5,
        0.1,
        0.04,
        0.1,
    )
    assert (f.decorrelation_weight, f.sinkhorn_iterations, f.decoder_layers) == (0.02, 3, 2)
    assert cfg.data.mean == pytest.approx([0.5231, 0.4044, 0.3489])


@pytest.mark.slow
def test_paper_recipe_builds_resnet50_with_fras_neck():
    method = build_method(load_config(PretrainConfig, CONFIGS / "fra_resnet50.yaml"))
    assert isinstance(method, FRA) and method.encoder.feature_dim == 2048
    assert tuple(method.head.proto.shape) == (8, 256)
    assert method.head.project[0].in_features == 2048 and method.head.project[0].out_features == 4096


def test_transfer_recipe_is_fras_fer_fine_tuning():
    cfg = load_config(FinetuneConfig, CONFIGS / "finetune_rafdb_resnet50.yaml")
    assert cfg.backbone_arch == "resnet50" and cfg.data.image_size == 224
    t = cfg.train
    assert (t.lr_backbone, t.lr_head, t.weight_decay, t.epochs, t.warmup_epochs, t.schedule, t.ema) == (
        2e-4,
        2e-4,
        0.05,
        100,
        5,
        "cosine",
        0.0,
    )
