"""Run configuration: dataclass defaults, merged with a YAML file and ``key=value`` overrides.

The schema is the dataclasses below (OmegaConf structured config), so an unknown key, a value of the
wrong type or a value out of range is a one-line :class:`ConfigError` naming the key. Ranges are checked
twice over: :data:`VALUE_RULES` by key name in every config :func:`load_config` reads (a key such as
``num_workers``, ``image_size``, ``lr`` or ``std`` means the same everywhere, the command configs
included), and each dataclass's ``__post_init__`` for its own keys and their combinations (an image size
that is a multiple of the ViT's patch size). The resolved config is saved as ``output_dir/config.yaml``
beside every run.

:class:`PretrainConfig` holds what every method shares; each method registers its own sections
(``mcf.*``, ``teacher.*``, ``mae.*``, ``decoder.*``) with :func:`register_section`, and
:func:`load_config` adds every registered section to the schema it loads (importing the built-in methods,
and so torch, only then: the rest of this module is light).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import facerep
from facerep.runtime.errors import FacerepError, one_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PROGRESS_MODES = ("auto", "bar", "log")
RANDOM_ARCH = "vit_base_patch16_224"  # what finetune backbone=random builds without backbone_arch
_VIT_PATCH = re.compile(r"^vit_[a-z]+_patch(\d+)")


class ConfigError(FacerepError):
    """A bad config file, key or value; the message is one line naming what is wrong."""


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_range(key: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``low <= value <= high`` (``< high`` if ``high_open``)."""
    if not (low <= value < high if high_open else low <= value <= high):
        raise ConfigError(f"{key} must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


def check_at_least(key: str, value: int, low: int) -> None:
    """A :class:`ConfigError` naming ``key`` unless the count ``value >= low``."""
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def check_finite(key: str, value: float) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` (a rate, a decay, a count of epochs) is a finite
    number >= 0: nan and inf pass every comparison the optimizer or the schedule would make of them."""
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key} must be a finite number >= 0, got {value}")


def check_rgb(key: str, values: Any, positive: bool = False) -> None:
    """A :class:`ConfigError` naming ``key`` unless it is three finite numbers [r, g, b] (each > 0 if
    ``positive``: a normalisation std divides)."""
    numbers = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 3
    if not numbers or not all(
        isinstance(v, int | float) and math.isfinite(v) and (v > 0 or not positive) for v in values
    ):
        kind = "finite numbers > 0" if positive else "finite numbers"
        raise ConfigError(f"{key} must be three {kind} [r, g, b], got {values!r}")


def check_patch_multiple(key: str, size: int, arch: str | None, source: str) -> None:
    """A :class:`ConfigError` unless the image side ``size`` (the value of ``key``) is a multiple of the patch
    size the ViT name ``arch`` spells (``source``: the setting it comes from); other names pass."""
    match = _VIT_PATCH.match(arch or "")
    if match and size % int(match[1]):
        raise ConfigError(f"{key}={size} is not a multiple of the patch size {match[1]} of {arch} ({source})")


# load_config's checks by key name, in every schema it reads (command configs and method sections included):
# each name below means the same kind of value wherever it appears; None ("unset") always passes
_COUNTS = ("image_size", "backbone_size", "depth", "embed_dim", "num_heads", "batch_size", "log_every",
           "ckpt_every", "eval_every")  # fmt: skip
_RATES = ("lr", "blr", "min_lr", "lr_backbone", "lr_head", "weight_decay", "clip_grad", "epochs",
          "warmup_epochs")  # fmt: skip
VALUE_RULES: dict[str, Callable[[str, Any], None]] = {
    **dict.fromkeys(_COUNTS, lambda key, value: check_at_least(key, value, 1)),
    "num_workers": lambda key, value: check_at_least(key, value, 0),  # 0: load in the main process
    **dict.fromkeys(_RATES, check_finite),
    "mean": check_rgb,
    "std": lambda key, value: check_rgb(key, value, positive=True),
}


def check_values(tree: Mapping[str, Any], prefix: str = "") -> None:
    """Apply :data:`VALUE_RULES` to every key of a config tree (nested mappings, free-form ones such as
    ``augment`` included) that they name."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            check_values(value, f"{key}.")
        elif value is not None and name in VALUE_RULES:
            try:
                VALUE_RULES[name](key, value)
            except TypeError as err:  # a free-form section's value of another type
                raise ConfigError(f"{key} must be a number, got {value!r}") from err


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
    missing_caption: str = "skip"  # image-text methods, image without a caption: skip | empty (caption "")
    # webdataset shards in object storage (s3://): fsspec/s3fs options, e.g. {endpoint_url: ..., anon: true};
    # credentials belong in the AWS_* environment, not here (config.yaml is saved beside the run)
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("data.missing_caption", self.missing_caption, ("skip", "empty"))
        check_range("data.hflip", self.hflip, 0.0, 1.0)


@dataclass
class ModelConfig:
    """The backbone being pre-trained (``arch``: ``vit_{tiny,small,base,large,huge}_patch{14,16}[_SIZE]``
    or ``resnet{18,34,50,101,152}``)."""

    arch: str = "vit_tiny_patch16_224"
    depth: int | None = None  # overrides of the arch table (small test/ablation models)
    embed_dim: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.0
    # ResNets only: 16 or 8 dilates layer4 (and layer3) instead of striding them, for a finer last map
    output_stride: int | None = None
    grad_checkpointing: bool = False  # recompute block activations in backward (ViT-L/H memory)
    init: str | None = None  # optional backbone checkpoint to start the encoder from
    # or a wider ViT (any file or name facerep.load_backbone reads) whose weights model.arch starts as a
    # selection of (facerep.backbones.select: evenly spaced channels, the first heads and blocks)
    select_from: str | None = None


@dataclass
class TrainConfig:
    batch_size: int = 32  # per process, per micro-batch
    accum_steps: int = 1  # micro-batches per optimizer step
    global_batch: int = 0  # if > 0: accum_steps = global_batch / (batch_size * processes)
    max_steps: int = 150  # optimizer steps; 0: derive from epochs
    epochs: float = 0.0  # passes over the dataset (when max_steps == 0)
    # optimizer, blr, weight_decay, betas: null takes the method's published recipe (its ``recipe``: MAE and
    # MCF AdamW blr 1.5e-4, BYOL LARS 0.2, FRA LARS 0.45, ...; the README's "Recipes" table)
    blr: float | None = None  # lr = blr * effective batch / 256
    lr: float | None = None  # absolute lr (overrides blr)
    min_lr: float = 0.0
    warmup_steps: int = 15  # -1: one epoch (or 5 % of max_steps when epochs are not set)
    weight_decay: float | None = None
    optimizer: str | None = None  # adamw | lars (BYOL, FRA)
    betas: list[float] | None = None  # adamw
    momentum: float = 0.9  # lars
    clip_grad: float = 0.0  # max grad norm; 0: off
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the model (falls back to eager if compilation fails)
    # torch.compile's mode: default | reduce-overhead (CUDA graphs: replays each step's kernel launches) |
    # max-autotune (tuned kernels and CUDA graphs) | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # ddp (a whole model per process) | fsdp (FSDP2: weights, gradients, optimizer state sharded)
    parallel: str = "ddp"
    log_every: int = 10
    ckpt_every: int = 100
    progress: str = "auto"  # auto (bar on a terminal) | bar | log
    # seconds a collective waits for the other processes before the run fails in one line (a frozen or
    # unreachable node); torch's own default for gloo is 30 minutes
    dist_timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.accum_steps < 1:
            raise ConfigError("train.batch_size and train.accum_steps must be >= 1")
        check_at_least("train.max_steps", self.max_steps, 0)
        check_at_least("train.warmup_steps", self.warmup_steps, -1)
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("train.parallel", self.parallel, ("ddp", "fsdp"))
        check_choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
        check_at_least("train.dist_timeout_s", self.dist_timeout_s, 1)
        check_choice("train.progress", self.progress, PROGRESS_MODES)
        if self.optimizer is not None:
            from facerep.runtime.optim import OPTIMIZERS  # torch: only once an optimizer is named

            check_choice("train.optimizer", self.optimizer, OPTIMIZERS)


@dataclass
class PretrainConfig:
    """``facerep pretrain`` configuration: what every method shares.

    The defaults are the CPU-sized demo (``configs/mcf_cpu_tiny.yaml``): MCF on synthetic faces with a
    ViT-Tiny/16 at 96 px whose teacher is pre-trained by MAE in a first stage of the same command. The
    paper recipe is ``configs/mcf_vit_base_patch16.yaml``. Method sections (``mcf``, ``teacher``,
    ``mae``, ``decoder``) are added by :func:`load_config` from :func:`register_section`.
    """

    method: str = "mcf"
    output_dir: str = "runs/mcf_tiny_synthetic"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not self.model.init:  # a file's own patch size is checked when it is read
            check_patch_multiple("data.image_size", self.data.image_size, self.model.arch, "model.arch")


_SECTIONS: dict[str, type] = {}  # method config sections: name -> dataclass
_EXTENDED: dict[tuple, type] = {}  # (schema, sections) -> schema with the sections as fields


def register_section(name: str, schema: type) -> None:
    """Add the config section ``name`` (a dataclass) to every pre-training config.

    Methods call this for their own keys (MCF: ``mcf``, ``teacher``, ``decoder``); two methods may share a
    section by registering the same dataclass.
    """
    if name in {f.name for f in fields(PretrainConfig)} or _SECTIONS.get(name, schema) is not schema:
        raise ValueError(f"config section {name!r} is already taken")
    _SECTIONS[name] = schema


def with_sections(schema: type) -> type:
    """``schema`` plus a field for every registered method section, for subclasses of
    :class:`PretrainConfig` (built once per set of sections); any other schema as it is.

    The built-in methods are imported first, so their sections come first, as they register them.
    """
    if not (isinstance(schema, type) and issubclass(schema, PretrainConfig)):
        return schema
    facerep.register_methods()

    key = (schema, tuple(_SECTIONS.items()))
    if key not in _EXTENDED:
        extra = [(name, cls, field(default_factory=cls)) for name, cls in _SECTIONS.items()]
        namespace = {"__module__": schema.__module__, "__doc__": schema.__doc__}
        _EXTENDED[key] = make_dataclass(schema.__name__, extra, bases=(schema,), namespace=namespace)
    return _EXTENDED[key]


def load_config(
    schema: type, config_file: str | Path | None = None, overrides: list[str] | None = None
) -> Any:
    """Merge ``schema`` defaults <- YAML file <- ``key=value`` overrides and return a typed object.

    A subclass of :class:`PretrainConfig` gets the registered method sections (:func:`with_sections`).
    """
    base = OmegaConf.structured(with_sections(schema))
    layers: list[DictConfig] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:
            raise ConfigError(f"{path}: not valid YAML ({one_line(err)})") from err
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of keys (KEY: VALUE), got a list")
        layers.append(loaded)
    parsed: list[tuple[str, DictConfig]] = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        key = item.split("=", 1)[0]
        try:
            parsed.append((key, OmegaConf.from_dotlist([item])))
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad override for {key!r}: {one_line(err)}") from err
    try:
        merged = OmegaConf.merge(base, *layers)
        for key, layer in parsed:
            # KEY={...} on a plain mapping (not a section) replaces it, so KEY={} empties it; sections merge
            value, node = OmegaConf.select(layer, key), OmegaConf.select(merged, key)
            if (
                isinstance(value, DictConfig)
                and isinstance(node, DictConfig)
                and OmegaConf.get_type(node) is dict
            ):
                OmegaConf.update(merged, key, value, merge=False)
            else:
                merged = OmegaConf.merge(merged, layer)
        check_values(OmegaConf.to_container(merged, resolve=True))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"config key {key!r}: " if key else ""
        raise ConfigError(f"{where}{one_line(err)}") from err


def to_yaml(cfg: Any) -> str:
    """Render a config dataclass as YAML (what ``config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    """Plain-dict form of a config dataclass (stored in checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_run(saved: Mapping[str, Any] | None, current: Any, path: Path, free: Collection[str]) -> None:
    """Refuse to resume the checkpoint ``path`` under a config other than the one it was written with.

    ``saved``: the checkpoint's ``config`` (older checkpoints have none: nothing to check); ``current``: the
    run's config dataclass; ``free``: dotted keys (and the keys under them) that may change on resume (where
    and how a run is shown or run, not what it computes: ``output_dir``, ``device``, logging, storage
    credentials). Keys only one side knows (a field added
    since) are skipped. A difference is a one-line ConfigError naming the first differing key and both
    values: resuming would silently mix two recipes (a changed ``train.max_steps`` changes the schedule).
    """
    if not isinstance(saved, Mapping):
        return
    old, new = _flat(saved), _flat(to_dict(current))
    for key in sorted(old.keys() & new.keys()):
        if old[key] != new[key] and not any(key == f or key.startswith(f + ".") for f in free):
            raise ConfigError(
                f"{path}: written by a run with {key}={old[key]!r}, this one has {key}={new[key]!r}; resume "
                f"it with its own config, or {fresh_run(path)}"
            )


def fresh_run(checkpoint: Path) -> str:
    """How to start over instead of resuming ``checkpoint`` (the end of the one-line resume errors)."""
    return f"start fresh in another output_dir (or delete {checkpoint.parent})"


FINETUNE_SCHEDULES = ("step", "cosine")
SYNC_BN_MODES = ("auto", "true", "false")
FINETUNE_SAMPLERS = ("uniform", "balanced")


@dataclass
class FinetuneDataConfig:
    """A downstream dataset (``facerep.data.downstream``) and how it is loaded."""

    root: str | None = None  # dataset root in its official layout (none for synthetic_* sets)
    train_split: str = "train"
    test_split: str = "test"
    image_size: int = 448  # crop side: FaRL 448 alignment, 512 parsing
    backbone_size: int | None = None  # dense tasks: image resized to this for the backbone (None: image_size)
    num_workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific kwargs (e.g. size)
    train_options: dict[str, Any] = field(default_factory=dict)  # ... for the train split only (e.g. length)
    test_options: dict[str, Any] = field(default_factory=dict)  # ... for the test split only
    # training order: uniform (a shuffle of the train split each epoch) | balanced (single-label
    # classification: len(train) draws with replacement, each sample with probability ~ 1 / its class count)
    sampler: str = "uniform"

    def __post_init__(self) -> None:
        check_at_least("data.image_size", self.image_size, 1)
        if self.backbone_size is not None:
            check_at_least("data.backbone_size", self.backbone_size, 1)
        check_choice("data.sampler", self.sampler, FINETUNE_SAMPLERS)

    @property
    def backbone_input(self) -> int:
        """The side of the images the backbone sees (FaRL parsing: 512 crops resized to 448)."""
        return self.backbone_size if self.backbone_size is not None else self.image_size


@dataclass
class HeadConfig:
    """The dense head (FPN adapters + UPerNet) of alignment and parsing."""

    levels: list[int] | None = None  # backbone levels feeding the FPN (default: the backbone's)
    blocks: list[int] | None = None  # ViT spelling of levels: block indices (FaRL: [3, 5, 7, 11])
    channels: int = 768  # UPerNet width
    dropout: float = 0.1  # Dropout2d before the UPerNet classifier (mmseg's dropout_ratio, FaRL)
    # UPerNet classifier init: null = torch's Conv2d default (FaRL never calls mmseg's init_weights);
    # a value = normal(0, std), bias 0 (mmseg's init_weights: 0.01)
    classifier_std: float | None = None
    heatmap_size: int = 128  # alignment: side of the heatmap targets; logits are upsampled to it (FaRL)
    heatmap_sigma: float = 1.25  # alignment: Gaussian target width in heatmap pixels (FaRL: radius 5 / 4)
    heatmap_weight: float = 1.0  # alignment: weight of the heatmap BCE next to the coordinate loss

    def __post_init__(self) -> None:
        check_range("head.dropout", self.dropout, 0.0, 1.0, high_open=True)
        if self.channels < 1 or self.heatmap_size < 1 or self.heatmap_sigma <= 0:
            raise ConfigError("head.channels and head.heatmap_size must be >= 1, head.heatmap_sigma > 0")
        if self.classifier_std is not None and self.classifier_std <= 0:
            raise ConfigError(f"head.classifier_std must be > 0 or null, got {self.classifier_std}")


@dataclass
class FinetuneTrainConfig:
    epochs: int = 150
    batch_size: int = 5  # per process
    lr_backbone: float = 1e-4
    lr_head: float = 1e-2
    weight_decay: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 0.0
    schedule: str = "step"  # step (FaRL: MultiStepLR, epoch-wise) | cosine (per-iteration, after the warm-up)
    milestones: list[int] = field(default_factory=lambda: [200])  # step: epochs where lr *= gamma
    gamma: float = 0.1  # step: factor at each milestone
    ema: float = 0.999  # EMA of the weights used for evaluation (0: off)
    sync_bn: str = "auto"  # auto | true (BatchNorm over every process under DDP, on any device) | false
    probe: bool = False  # classification: linear probe on cached features of a frozen backbone
    precision: str = "auto"
    eval_every: int = 1
    progress: str = "auto"
    # seconds a collective waits for the other processes before the run fails in one line (a frozen or
    # unreachable node); torch's own default for gloo is 30 minutes
    dist_timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        self.sync_bn = str(self.sync_bn).lower()  # YAML true/false arrive as "True"/"False"
        check_choice("train.schedule", self.schedule, FINETUNE_SCHEDULES)
        check_choice("train.sync_bn", self.sync_bn, SYNC_BN_MODES)
        check_at_least("train.dist_timeout_s", self.dist_timeout_s, 1)
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("train.progress", self.progress, PROGRESS_MODES)
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"train.milestones must be sorted epochs >= 1, got {list(self.milestones)}")
        check_range("train.gamma", self.gamma, 0.0, 1.0)
        check_range("train.ema", self.ema, 0.0, 1.0, high_open=True)


@dataclass
class FinetuneConfig:
    """``facerep finetune`` configuration (FaRL's protocol; recipes in ``configs/finetune_*.yaml``)."""

    task: str = "alignment"  # alignment | parsing | classification | antispoof
    dataset: str = "synthetic_alignment"
    backbone: str = "random"  # a file for facerep.load_backbone, or random
    # vit_* or resnet{18,34,50,101,152}: what backbone=random builds (null: RANDOM_ARCH), or what
    # a backbone file must hold (null: whatever it holds)
    backbone_arch: str | None = None
    output_dir: str = "runs/finetune"
    seed: int = 0
    device: str = "auto"
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: dict[str, Any] = field(default_factory=dict)  # overrides of the task's AugmentConfig
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)

    def __post_init__(self) -> None:
        arch = self.backbone_arch or (RANDOM_ARCH if self.backbone == "random" else None)
        size_key = "data.image_size" if self.data.backbone_size is None else "data.backbone_size"
        source = "backbone_arch" if self.backbone_arch else "backbone=random"
        check_patch_multiple(size_key, self.data.backbone_input, arch, source)
        # the task's flags (importing the tasks, and torch, only for a config that needs them)
        resized = self.data.backbone_input != self.data.image_size
        task = facerep.find_task(self.task) if resized or self.data.sampler == "balanced" else None
        if resized and task is not None and task.pooled:
            raise ConfigError("data.backbone_size is for the dense tasks (alignment, parsing)")
        if self.data.sampler == "balanced" and not (task is not None and task.balanced_sampling):
            raise ConfigError(
                f"data.sampler=balanced needs one class label per training sample; task={self.task} has none "
                "(it is for single-label classification and anti-spoofing)"
            )


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
