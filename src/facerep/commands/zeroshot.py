"""``facerep zeroshot``: zero-shot classification and image-text retrieval with a CLIP-style model (FaRL).

``facerep zeroshot backbone=CLIP_FILE dataset=NAME [root=DIR] [split=test] [-c configs/zeroshot_*.yaml]``,
``NAME`` a classification set of the dataset registry (:func:`classification_sets`: celeba_attr, rafdb,
affectnet, generic, synthetic_attributes, and any plugged in), scores prompt classifiers
(:mod:`facerep.apps.zeroshot`):
single-label sets report accuracy and mean class accuracy beside the most frequent class of the split,
multi-label sets mean attribute accuracy (as fine-tuning does), balanced accuracy and ROC-AUC per
attribute and their means beside each attribute's majority value on the split.

``facerep zeroshot backbone=CLIP_FILE dataset=captions [source=synthetic|folder] [path=DIR] [length=500]``
reports image -> text and text -> image recall@1/5/10 beside the chance level of a random ranking; a hit
is a text identical to the image's caption (texts deduplicated) / an image whose caption is the query.

``backbone`` is any file :func:`facerep.load_clip` reads (facerep's ``clip.safetensors``, a FaRL release,
an OpenAI CLIP / open_clip state dict) or a run directory holding ``clip.safetensors``. Images are resized
to the image tower's size and normalised by ``normalize``: ``auto`` takes the ``mean`` / ``std`` a facerep
``clip.safetensors`` records (its FaRL run's ``data.mean`` / ``data.std``) and CLIP's constants for files
that record none (released FaRL and OpenAI weights). Results: a printed table, ``zeroshot.json`` and the
resolved ``config.yaml`` in ``output_dir`` (default ``runs/zeroshot/<dataset>``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facerep.apps.zeroshot import (
    CLIP_MEAN,
    CLIP_STD,
    RECALL_KS,
    CaptionedImages,
    evaluate_classification,
    evaluate_retrieval,
    recorded_normalization,
    resolve_prompts,
)
from facerep.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError, check_choice, to_dict, to_yaml
from facerep.data.downstream import DATASETS, build_dataset
from facerep.data.downstream.synthetic import SPLIT_SEEDS
from facerep.data.downstream.transforms import AugmentConfig, ClassificationTransform
from facerep.data.sources import FolderSource, SyntheticSource
from facerep.data.transforms import PretrainTransform
from facerep.models.clip import clip_file, load_clip
from facerep.runtime.atomic import atomic_write_json
from facerep.runtime.distributed import resolve_device
from facerep.runtime.run_log import start_run
from facerep.tasks import TASKS
from facerep.tasks.classification import Classification

CAPTIONS = "captions"  # the retrieval "dataset"
CAPTION_SOURCES = ("synthetic", "folder")
NORMALIZE = ("auto", "clip", "imagenet", "custom")
CHANCE_RULE = "chance: the expected recall of a uniformly random ranking (exact)"
HIT_RULE = (
    "image->text: a hit is one of the top k distinct texts identical to the image's caption; text->image "
    "(each distinct text one query): one of the top k images has that text as caption; ties count as misses"
)


@dataclass
class ZeroShotConfig:
    """``facerep zeroshot`` (see the module docstring)."""

    backbone: str | None = (
        None  # a CLIP file facerep.load_clip reads, or a run directory with clip.safetensors
    )
    dataset: str | None = None  # a classification set (classification_sets()) | captions
    root: str | None = None  # dataset root (the sets that are not rendered)
    split: str = "test"
    options: dict[str, Any] = field(default_factory=dict)  # dataset kwargs (generic: annotations, classes)
    templates: list[str] | None = None  # texts with a {} for each class name / phrase (None: built-in)
    prompts: dict[str, list[str]] = field(default_factory=dict)  # class or attribute -> names / phrases
    negatives: dict[str, list[str]] = field(default_factory=dict)  # attribute -> phrases for its absence
    source: str = "synthetic"  # captions: synthetic (captions from the generator) | folder (<image>.txt)
    path: str | None = None  # captions: the folder (source=folder)
    length: int = 500  # synthetic faces of the split (captions, rendered sets)
    size: int = 128  # render size of synthetic faces
    image_size: int | None = None  # image tower input (ViT positions resampled); None: the file's own
    normalize: str = "auto"  # auto (recorded mean/std, else CLIP's) | clip | imagenet | custom (mean, std)
    mean: list[float] | None = None  # normalize=custom only
    std: list[float] | None = None
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_dir: str | None = None  # default runs/zeroshot/<dataset>

    def __post_init__(self) -> None:
        if self.dataset is not None:
            check_choice("dataset", self.dataset, (*classification_sets(), CAPTIONS))
        check_choice("source", self.source, CAPTION_SOURCES)
        check_choice("normalize", self.normalize, NORMALIZE)
        if self.length < 1 or self.size < 16 or self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError("length and batch_size must be >= 1, size >= 16, num_workers >= 0")
        if (self.mean is not None or self.std is not None) and self.normalize != "custom":
            raise ConfigError("mean and std apply with normalize=custom only")


def _classifies(task: str | None) -> bool:
    """Whether data of ``task`` is scored as :class:`~facerep.tasks.classification.Classification` scores it
    (None: a set whose annotations tell its task)."""
    return task is None or (task in TASKS and issubclass(TASKS.get(task), Classification))


def classification_sets() -> tuple[str, ...]:
    """The registry's datasets zero-shot scores, in registry order: the classification sets."""
    return tuple(name for name, entry in DATASETS.items() if _classifies(entry.describe().task))


def normalization(cfg: ZeroShotConfig, file: Path, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mean", "std", "from"}`` the images are normalised with (see ``normalize``)."""
    if cfg.normalize == "custom":
        if cfg.mean is None or cfg.std is None or len(cfg.mean) != 3 or len(cfg.std) != 3:
            raise ConfigError("normalize=custom needs mean=[r,g,b] and std=[r,g,b]")
        return {"mean": list(cfg.mean), "std": list(cfg.std), "from": "custom"}
    if cfg.normalize == "imagenet":
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "from": "imagenet"}
    values = recorded_normalization(recorded, str(file)) if cfg.normalize == "auto" else None
    if values is not None:
        return {"mean": values[0], "std": values[1], "from": f"recorded in {file.name}"}
    return {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "from": "clip"}


def run_zeroshot(cfg: ZeroShotConfig) -> dict:
    """Run ``facerep zeroshot``; returns what ``zeroshot.json`` holds."""
    if not cfg.backbone:
        raise ConfigError("facerep zeroshot needs backbone=PATH (a file facerep.load_clip reads)")
    if cfg.dataset is None:
        raise ConfigError(
            f"facerep zeroshot needs dataset=NAME, one of {', '.join((*classification_sets(), CAPTIONS))}"
        )
    file = clip_file(cfg.backbone)
    model = load_clip(file, img_size=cfg.image_size)
    device = resolve_device(cfg.device)
    model.to(device).eval()
    norm = normalization(cfg, file, model.recorded)
    size = int(model.visual.arch.img_size)
    # data and prompts are checked before anything is written
    run = _retrieval(cfg, size, norm) if cfg.dataset == CAPTIONS else _classification(cfg, size, norm)
    out = Path(cfg.output_dir or f"runs/zeroshot/{cfg.dataset}")
    start_run(out, to_yaml(cfg), f"zeroshot {cfg.dataset} ({cfg.split}) with {file}")
    result = {"dataset": cfg.dataset, "split": cfg.split, "backbone": str(file), "image_size": size,
              "normalize": norm, **run(model, device), "config": to_dict(cfg)}  # fmt: skip
    atomic_write_json(out / "zeroshot.json", _finite(result))
    print(format_result(result), flush=True)
    print(f"[facerep] wrote {out / 'zeroshot.json'}", flush=True)
    return result


Run = Callable[[Any, Any], dict[str, Any]]  # (model, device) -> the task's part of zeroshot.json


def _classification(cfg: ZeroShotConfig, size: int, norm: dict) -> Run:
    options = dict(cfg.options)
    if DATASETS.get(cfg.dataset).describe(options).rendered:
        options = {"length": cfg.length, "size": cfg.size, **options}
    dataset = build_dataset(cfg.dataset, cfg.root, cfg.split, **options)
    if not _classifies(dataset.task):
        raise ConfigError(f"{cfg.dataset}: zero-shot scores classification data, this is {dataset.task}")
    if len(dataset) == 0:
        raise ConfigError(f"{cfg.dataset}: split {cfg.split!r} has no images")
    multilabel = bool(dataset.attribute_names)
    names = dataset.attribute_names if multilabel else dataset.class_names
    prompts = resolve_prompts(cfg.dataset, names or (), multilabel, cfg.templates, cfg.prompts, cfg.negatives)
    transform = ClassificationTransform(
        size, train=False, cfg=AugmentConfig(mean=norm["mean"], std=norm["std"])
    )
    rule = ("majority: each attribute's most frequent value on this split, for every image" if multilabel
            else "class prior: the most frequent class of this split, for every image")  # fmt: skip

    def run(model: Any, device: Any) -> dict[str, Any]:
        scores = evaluate_classification(model, dataset, prompts, transform, device, cfg.batch_size,
                                         cfg.num_workers)  # fmt: skip
        return {"task": "attributes" if multilabel else "classification", "num_samples": len(dataset),
                **scores, "baseline_rule": rule, "prompts": prompts.as_dict()}  # fmt: skip

    return run


def _retrieval(cfg: ZeroShotConfig, size: int, norm: dict) -> Run:
    if cfg.source == "synthetic":
        if cfg.split not in SPLIT_SEEDS:
            raise ConfigError(f"split must be one of {', '.join(SPLIT_SEEDS)} for synthetic captions")
        source: Any = SyntheticSource(cfg.length, cfg.size, seed=SPLIT_SEEDS[cfg.split])
    else:
        if not cfg.path:
            raise ConfigError(
                "source=folder needs path=DIR (images with <image stem>.txt captions beside them)"
            )
        source = FolderSource(cfg.path)
    items = CaptionedImages(source, PretrainTransform(size, 0.0, norm["mean"], norm["std"]), size)

    def run(model: Any, device: Any) -> dict[str, Any]:
        scores = evaluate_retrieval(model, items, device, cfg.batch_size, cfg.num_workers)
        return {"task": "retrieval", "source": cfg.source, **scores, "hit_rule": HIT_RULE,
                "baseline_rule": CHANCE_RULE}  # fmt: skip

    return run


def _finite(obj: Any) -> Any:
    """``obj`` with NaN floats (undefined AUCs) as ``None``, so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def _cell(value: float, base: float | None = None) -> str:
    text = "  n/a" if math.isnan(value) else f"{value:.3f}"
    return text if base is None else f"{text} ({'  n/a' if math.isnan(base) else f'{base:.3f}'})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def format_result(result: dict) -> str:
    """The printed table of a ``zeroshot.json`` result; baselines in parentheses."""
    title = f"[facerep] zero-shot {result['dataset']} ({result['split']}) with {result['backbone']}"
    ours, base = result["zeroshot"], result["baseline"]
    if result["task"] == "retrieval":
        directions = ("image_to_text", "text_to_image")
        keys = [f"recall@{k}" for k in RECALL_KS]
        rows = [[d.replace("_to_", "->"), *(_cell(ours[d][k], base[d][k]) for k in keys)] for d in directions]
        skipped = result["skipped"]
        return "\n".join([
            f"{title}: {result['num_images']} images, {result['num_texts']} distinct captions"
            f" (left out: {skipped['no_caption']} without a caption, {skipped['unreadable']} unreadable)",
            _table(["recall (chance)", *(f"R@{k}" for k in RECALL_KS)], rows),
            f"hit rule: {result['hit_rule']}",
        ])  # fmt: skip
    parts = [f"{title}: {result['num_samples']} images; baseline in parentheses = {result['baseline_rule']}"]
    for subset, scores in ours.items():
        if result["task"] == "classification":
            rows = [
                [key, _cell(scores[key], base[subset][key])] for key in ("accuracy", "mean_class_accuracy")
            ]
            parts.append(_table([subset, "zero-shot (class prior)"], rows))
            continue
        names = [key.removeprefix("acc_") for key in scores if key.startswith("acc_")]
        columns = [(f"acc_{n}", f"bacc_{n}", f"auc_{n}") for n in names]
        columns.append(("mean_accuracy", "mean_balanced_accuracy", "mean_auc"))
        rows = [[name, *(_cell(scores[k], base[subset][k]) for k in keys)]
                for name, keys in zip([*names, "mean"], columns, strict=True)]  # fmt: skip
        parts.append(_table([f"{subset}: attribute", "accuracy", "balanced acc.", "ROC-AUC"], rows))
    if result["task"] == "attributes":
        parts.append("chance is 0.5 for balanced accuracy and ROC-AUC; n/a: the attribute is constant here")
    return "\n".join(parts)
