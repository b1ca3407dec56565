"""What a downstream task provides to the fine-tuning engine and to predict/export, and the ``task=``
registry.

A new task is one module with a :func:`register_task` class (plus one import line in
``facerep/tasks/__init__.py``): it builds its model on any backbone (``forward_pyramid`` for dense
heads, ``pooled`` for vectors), its transforms, its loss and its evaluation; and it says what its outputs
mean (:class:`Layout`), what an export returns (:class:`Output`), how a detected face is cropped for it and
how one face's output is read, combined per photo and drawn. Those last methods default to a classifier of
the pooled feature (logits ``[N, C]``), so a task written outside facerep overrides only what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from facerep.backbones import Backbone
from facerep.config import ConfigError, FinetuneConfig
from facerep.data.crop import apply_transform
from facerep.data.detect import Detection
from facerep.data.downstream.base import DatasetInfo, FaceDataset
from facerep.data.downstream.transforms import AugmentConfig
from facerep.models.dense import DenseHead, resolve_levels
from facerep.runtime.registry import Registry

DENSE_HEAD_WEIGHT = "dense.head.classifier.weight"  # the dense tasks' last layer ([outputs, channels, 1, 1])


@dataclass(frozen=True)
class Layout:
    """What a model's outputs mean: ``num_points`` K (alignment), ``class_names`` (parsing, background at
    0; single-label classes) or ``attribute_names`` (multi-label). Read by :meth:`Task.build_model` as the
    dataset's fields of the same names."""

    num_points: int | None = None
    class_names: tuple[str, ...] | None = None
    attribute_names: tuple[str, ...] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Layout:
        """From a dict with these keys (``finetune.pt``'s ``"outputs"``, an export spec); empty name lists
        are None."""
        names = [tuple(record.get(k) or ()) or None for k in ("class_names", "attribute_names")]
        return cls(record.get("num_points"), *names)

    def to_record(self) -> dict[str, Any]:
        """The ``"outputs"`` entry of ``finetune.pt`` (names as lists, ``[]`` for none)."""
        return {
            "num_points": self.num_points,
            "class_names": list(self.class_names or []),
            "attribute_names": list(self.attribute_names or []),
        }


@dataclass(frozen=True)
class Output:
    """The one tensor an exported model returns: its name in the graph and its shape (``"N"``: the batch)."""

    name: str
    shape: tuple[str | int, ...]


@dataclass
class FaceCrop:
    """One detected face made ready for the model: its input and how its output maps back to the photo."""

    detection: Detection
    input: Tensor  # [3, S, S]
    to_fed: np.ndarray  # 3x3: photo pixels -> pixels of the image the transform was given
    back: Tensor  # [2, 3]: the transform's map the task reads its output through (Task.crop_map)
    warp_factor: float
    crop_box: np.ndarray | None = None  # crop rule "box": the box the crop was made around (photo pixels)

    def fed_to_photo(self, points: np.ndarray) -> np.ndarray:
        """``[K, 2]`` pixels of the image the transform was given -> ``[K, 2]`` photo pixels (float64)."""
        return apply_transform(np.linalg.inv(self.to_fed), points)


def head_rows(weights: dict[str, Tensor], key: str) -> int | None:
    """The number of outputs of the layer whose weight is ``weights[key]``; None without that key."""
    return int(weights[key].shape[0]) if key in weights else None


def numbered_classes(count: int) -> tuple[str, ...]:
    """``("class_0", ..., "class_<count - 1>")``: names for outputs nothing names."""
    return tuple(f"class_{i}" for i in range(count))


class Task:
    """A task builds its model and transforms, computes its loss and scores a test set; for predict and
    export it declares its outputs and reads, combines and draws them (defaults: a classifier's).

    ``primary`` names the metric used to pick the best epoch; ``higher_is_better`` its direction.
    """

    name: ClassVar[str]
    primary: str  # set by subclasses; may depend on the dataset (see build_model)
    higher_is_better: bool
    probe: ClassVar[bool] = False  # a linear head on the pooled feature that train.probe can train alone
    # the head reads the pooled feature, so the backbone sees the crop as it is (no data.backbone_size)
    pooled: ClassVar[bool] = False
    # one class label per sample (the dataset's labels()), so data.sampler=balanced can draw by class
    balanced_sampling: ClassVar[bool] = False

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg

    def build_model(self, backbone: Backbone, dataset: FaceDataset) -> nn.Module:
        raise NotImplementedError

    def transform(self, train: bool) -> Callable[[dict], dict]:
        raise NotImplementedError

    def dense_head(self, backbone: Backbone, outputs: int) -> DenseHead:
        """The dense tasks' head (UPerNet over the config's ``head.levels``/``head.blocks``) with ``outputs``
        channels, on the backbone's input size (``data.backbone_input``, resized from ``data.image_size``)."""
        head = self.cfg.head
        levels = resolve_levels(backbone, head.levels, head.blocks)
        return DenseHead(backbone, levels, head.channels, outputs, input_size=self.cfg.data.backbone_input,
                         dropout=head.dropout, classifier_std=head.classifier_std)  # fmt: skip

    def augment_config(self) -> Any:
        """FaRL's augmentation preset for this task with the config's ``augment.*`` overrides applied."""
        return AugmentConfig.for_task(self.name, **self.cfg.augment)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Any, dataset: FaceDataset, device: torch.device) -> dict:
        """Metrics for every subset of ``dataset``: ``{"full": {...}, "frontal": {...}}``."""
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """Predictions in original image coordinates for one batch (used by overlays)."""
        raise NotImplementedError

    def originals(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Ground truth in original image coordinates, kept beside the transformed sample for scoring."""
        return {}

    def draw(self, sample: dict[str, Any], prediction: dict[str, Any], dataset: FaceDataset) -> Image.Image:
        """An overlay of the first prediction of a :meth:`predict` result on ``sample``'s image."""
        raise ConfigError(f"overlays are not available for task={self.name}")

    # -- predict and export: the defaults are a classifier's (logits [N, C] of the pooled feature) ----------
    def layout(self, dataset: Any) -> Layout:
        """What the head trained on ``dataset`` outputs (saved with the run): the dataset's names."""
        return Layout.from_record({f.name: getattr(dataset, f.name, None) for f in fields(Layout)})

    def layout_complete(self, layout: Layout) -> bool:
        """Whether ``layout`` names every output (else predict looks further: the dataset, the weights)."""
        return layout.class_names is not None or layout.attribute_names is not None

    def layout_from_weights(self, weights: dict[str, Tensor]) -> Layout | None:
        """The layout the head's weights alone tell (``class_<i>`` names, single-label); None without them."""
        count = head_rows(weights, "head.weight")
        return None if count is None else Layout(class_names=numbered_classes(count))

    def export_output(self, layout: Layout) -> Output:
        """What an export returns: ``logits`` ``[N, C]`` (C classes or attributes)."""
        return Output("logits", ("N", len(layout.attribute_names or layout.class_names or ())))

    def export_forward(self, out: Any) -> Tensor:
        """The model's output for ``[N, 3, S, S]`` -> the tensor of :meth:`export_output` (default: as is)."""
        return out

    def crop_rule(self, info: DatasetInfo, augment: AugmentConfig) -> str:
        """How predict crops a detected face of dataset ``info``'s kind for the eval transform: ``box``
        (around a box estimated from the five points), ``five_point`` (aligned by the five points) or
        ``canvas`` (framed on a canvas as the dataset frames its faces, which the transform takes whole;
        the default)."""
        return "canvas"

    def blank_target(self, image: np.ndarray) -> dict[str, Any]:
        """Placeholder ground truth for the eval transform of a face image ``[H, W, 3]`` (here label 0)."""
        return {"label": 0}

    def crop_map(self, out: dict[str, Any]) -> Tensor:
        """The ``[2, 3]`` map :meth:`read_face` maps outputs back through, from the eval transform's output
        ``out`` (default: ``warp``, fed image -> crop; zeros for a transform without one)."""
        return out.get("warp", torch.zeros(2, 3))

    def read_face(
        self, output: np.ndarray, face: FaceCrop, layout: Layout, hw: tuple[int, int]
    ) -> dict[str, Any]:
        """One face's finite output (the export's shape without N; here logits ``[C]``) in a photo of
        ``hw`` = (H, W) -> JSON-ready keys in photo pixels: ``probabilities`` by name, then ``labels``
        (multi-label: those >= 0.5) or ``label`` (the most probable)."""
        names = layout.attribute_names or layout.class_names or ()
        logits = torch.from_numpy(np.asarray(output, dtype=np.float32))
        multilabel = bool(layout.attribute_names)
        probs = (logits.sigmoid() if multilabel else logits.softmax(-1)).numpy()
        result: dict[str, Any] = {
            "probabilities": {n: round(float(p), 4) for n, p in zip(names, probs, strict=True)}
        }
        if multilabel:
            result["labels"] = [n for n, p in zip(names, probs, strict=True) if p >= 0.5]
        else:
            result["label"] = names[int(probs.argmax())]
        return result

    def null_face(self, face: FaceCrop, layout: Layout) -> dict[str, Any]:
        """:meth:`read_face`'s keys for a non-finite output: the predictions None."""
        return dict.fromkeys(["probabilities", "labels" if layout.attribute_names else "label"])

    def combine(self, faces: list[dict[str, Any]], hw: tuple[int, int]) -> dict[str, Any]:
        """Keys of the whole photo (``hw`` = (H, W)) from its faces' readings, highest score first
        (default: none)."""
        return {}

    def draw_photo(self, image: np.ndarray, result: dict[str, Any], layout: Layout) -> Image.Image:
        """The photo ``[H, W, 3]`` uint8 with ``result``'s predictions drawn (under the boxes and captions;
        default: the photo as it is)."""
        return Image.fromarray(image).convert("RGB")

    def caption(self, face: dict[str, Any]) -> str:
        """The text beside a face's box after its score: the label and its probability, or each label
        with its probability."""
        if "label" in face:
            return f"{face['label']} {face['probabilities'][face['label']]:.2f}"
        return ", ".join(f"{n} {face['probabilities'][n]:.2f}" for n in face.get("labels", []))


class TaskDataset(torch.utils.data.Dataset):
    """A :class:`FaceDataset` seen through a task's transform (plus the originals needed for scoring)."""

    def __init__(self, dataset: FaceDataset, task: Task, train: bool) -> None:
        self.dataset = dataset
        self.task = task
        self.transform = task.transform(train)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        return {**self.transform(sample), **self.task.originals(sample), "index": index}


TASKS: Registry[type[Task]] = Registry("task", ConfigError)


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task buildable as ``task=<cls.name>``."""
    return TASKS.add(cls.name, cls)


def build_task(cfg: FinetuneConfig) -> Task:
    """The task ``cfg.task`` names; unknown names are a one-line error listing the known ones."""
    return TASKS.get(cfg.task)(cfg)


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, numbers and arrays of equal shape; keep the rest (e.g. originals, names) as lists."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if all(isinstance(v, int | float | np.ndarray | np.generic) for v in values):
            values = [torch.as_tensor(v) for v in values]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
