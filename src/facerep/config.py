"""Run configuration: dataclass defaults, merged with a YAML file and ``key=value`` overrides.

The schema is the dataclasses below (OmegaConf structured config), so an unknown key or a value of
the wrong type is a one-line :class:`ConfigError` naming the key. The resolved config is saved as
``output_dir/config.yaml`` beside every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A bad config file, key or value; the message is one line naming what is wrong."""


@dataclass
class DataConfig:
    """Where pre-training images come from and how they are turned into tensors."""

    source: str = "synthetic"  # synthetic | folder | lmdb | webdataset
    path: str | None = None  # folder root, lmdb dir, or webdataset shard pattern (brace syntax, URLs)
    image_size: int = 96
    hflip: float = 0.5  # probability of a horizontal flip
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 2
    synthetic_length: int = 100_000  # images in one synthetic "epoch"
    synthetic_render_size: int = 0  # resolution the generator draws at (0: data.image_size)
    lmdb_keys: str | None = None  # key-list file for lmdb (default: <path>/keys.txt, else the db's keys)
    shuffle_buffer: int = 1000  # webdataset sample shuffle buffer (0: off)


@dataclass
class ModelConfig:
    """The ViT encoder being pre-trained."""

    arch: str = "vit_tiny_patch16_224"  # vit_{tiny,small,base,large,huge}_patch{14,16}[_SIZE]
    depth: int | None = None  # overrides of the arch table (small test/ablation models)
    embed_dim: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False  # recompute block activations in backward (ViT-L/H memory)
    init: str | None = None  # optional backbone checkpoint to start the encoder from


@dataclass
class DecoderConfig:
    """MAE decoder predicting the pixels of every patch."""

    embed_dim: int = 128  # recipe: 512
    depth: int = 2  # recipe: 8
    num_heads: int = 4  # recipe: 16


@dataclass
class TeacherConfig:
    """Frozen teacher whose block features are MCF's reconstruction target.

    ``checkpoint`` is a path readable by ``facerep.load_backbone``, or ``mae_stage`` (pre-train a
    teacher with MAE for ``stage_steps`` steps in ``output_dir/teacher_mae`` first), or ``random``
    (a randomly initialised teacher of ``arch``: only for tests and ablations).
    """

    checkpoint: str | None = "mae_stage"
    arch: str | None = None  # only for checkpoint=random / mae_stage (default: model.arch)
    blocks: list[int] | None = None  # default [2,5,8,11] for 12 blocks, spread evenly otherwise
    stage_steps: int = 150  # mae_stage: steps of the first (MAE) stage
    norm_axis: str = "token"  # token (reference code, dim=1) | feature (per-token L2 normalisation)


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False


@dataclass
class MCFConfig:
    mask_ratio: float = 0.75
    feature_weight: float = 1000.0
    contrastive_weight: float = 1.0
    temperature: float = 0.2
    symmetric: bool = False  # MoCo v3 symmetric loss (both views as queries)
    proj_hidden_dim: int = 1024  # recipe: 4096
    proj_dim: int = 128  # recipe: 256
    momentum: float = 0.99
    momentum_schedule: str = "constant"  # constant | cosine (momentum -> momentum_end)
    momentum_end: float = 1.0


@dataclass
class TrainConfig:
    batch_size: int = 32  # per process, per micro-batch
    accum_steps: int = 1  # micro-batches per optimizer step
    global_batch: int = 0  # if > 0: accum_steps = global_batch / (batch_size * processes)
    max_steps: int = 150  # optimizer steps; 0: derive from epochs
    epochs: float = 0.0  # passes over the dataset (when max_steps == 0)
    blr: float = 1e-2  # lr = blr * effective batch / 256
    lr: float | None = None  # absolute lr (overrides blr)
    min_lr: float = 0.0
    warmup_steps: int = 15  # -1: one epoch (or 5 % of max_steps when epochs are not set)
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 0.0  # max grad norm; 0: off
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the model (falls back to eager if compilation fails)
    log_every: int = 10
    ckpt_every: int = 100
    progress: str = "auto"  # auto (bar on a terminal) | bar | log


@dataclass
class PretrainConfig:
    """``facerep pretrain`` configuration.

    The defaults are the CPU-sized demo (``configs/mcf_cpu_tiny.yaml``): MCF on synthetic faces with a
    ViT-Tiny/16 at 96 px whose teacher is pre-trained by MAE in a first stage of the same command. The
    paper recipe is ``configs/mcf_vit_base_patch16.yaml``.
    """

    method: str = "mcf"
    output_dir: str = "runs/mcf_tiny_synthetic"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    mcf: MCFConfig = field(default_factory=MCFConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_config(
    schema: type, config_file: str | Path | None = None, overrides: list[str] | None = None
) -> Any:
    """Merge ``schema`` defaults <- YAML file <- ``key=value`` overrides and return a typed object."""
    base = OmegaConf.structured(schema)
    layers: list[DictConfig] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as err:
            raise ConfigError(f"{path}: not valid YAML ({_one_line(err)})") from err
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        key = item.split("=", 1)[0]
        try:
            layers.append(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad override for {key!r}: {_one_line(err)}") from err
    try:
        merged = OmegaConf.merge(base, *layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"config key {key!r}: " if key else ""
        raise ConfigError(f"{where}{_one_line(err)}") from err


def to_yaml(cfg: Any) -> str:
    """Render a config dataclass as YAML (what ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    """Plain-dict form of a config dataclass (stored in checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


@dataclass
class FinetuneDataConfig:
    """A downstream dataset (``facerep.data.downstream``) and how it is loaded."""

    root: str | None = None  # dataset root in its official layout (none for synthetic_* sets)
    train_split: str = "train"
    test_split: str = "test"
    image_size: int = 448  # FaRL: 448 alignment, 512 parsing
    num_workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific kwargs (e.g. size)
    train_options: dict[str, Any] = field(default_factory=dict)  # ... for the train split only (e.g. length)
    test_options: dict[str, Any] = field(default_factory=dict)  # ... for the test split only


@dataclass
class HeadConfig:
    blocks: list[int] = field(default_factory=lambda: [3, 5, 7, 11])  # ViT blocks feeding the FPN
    channels: int = 768  # UPerNet width
    heatmap_sigma: float = 1.25  # alignment: Gaussian target width in heatmap pixels
    heatmap_weight: float = 1.0  # alignment: weight of the heatmap BCE next to the coordinate loss


@dataclass
class FinetuneTrainConfig:
    epochs: int = 150
    batch_size: int = 5  # per process
    lr_backbone: float = 1e-4
    lr_head: float = 1e-2
    weight_decay: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 0.0
    ema: float = 0.999  # EMA of the weights used for evaluation (0: off)
    probe: bool = False  # classification: linear probe on cached features of a frozen backbone
    precision: str = "auto"
    eval_every: int = 1
    progress: str = "auto"


@dataclass
class FinetuneConfig:
    """``facerep finetune`` configuration (FaRL's protocol; recipes in ``configs/finetune_*.yaml``)."""

    task: str = "alignment"  # alignment | parsing | classification
    dataset: str = "synthetic_alignment"
    backbone: str = "random"  # a file for facerep.load_backbone, or random
    backbone_arch: str = "vit_base_patch16_224"  # for backbone=random
    output_dir: str = "runs/finetune"
    seed: int = 0
    device: str = "auto"
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: dict[str, Any] = field(default_factory=dict)  # overrides of the task's AugmentConfig
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)


@dataclass
class EvaluateConfig:
    """``facerep evaluate``: score a fine-tuned checkpoint, optionally on another dataset/split."""

    checkpoint: str = "???"
    dataset: str | None = None  # default: the dataset it was fine-tuned on
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    split: str | None = None  # default: the checkpoint's data.test_split
    overlays: int = 0  # save this many prediction overlays (PNG) to output_dir/overlays
    output_dir: str | None = None  # default: <checkpoint dir>/eval
    device: str = "auto"
