"""What a downstream task provides to the fine-tuning engine, and the ``task=`` registry.

A new task is one module with a :func:`register_task` class (plus one import line in
``facerep/tasks/__init__.py``): it builds its model on any backbone (``forward_pyramid`` for dense
heads, ``pooled`` for vectors), its transforms, its loss and its evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from facerep.backbones import Backbone
from facerep.config import ConfigError, FinetuneConfig
from facerep.data.downstream.base import FaceDataset
from facerep.data.downstream.transforms import AugmentConfig
from facerep.runtime.registry import Registry


class Task:
    """A task builds its model and transforms, computes its loss and scores a test set.

    ``primary`` names the metric used to pick the best epoch; ``higher_is_better`` its direction.
    """

    name: ClassVar[str]
    primary: str  # set by subclasses; may depend on the dataset (see build_model)
    higher_is_better: bool

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg

    def build_model(self, backbone: Backbone, dataset: FaceDataset) -> nn.Module:
        raise NotImplementedError

    def transform(self, train: bool) -> Callable[[dict], dict]:
        raise NotImplementedError

    def dense_options(self) -> dict[str, Any]:
        """:class:`~facerep.models.dense.DenseHead` options from the config: the backbone's input size
        (``data.backbone_size``, resized from ``data.image_size``), the classifier's dropout and init."""
        head = self.cfg.head
        return {
            "input_size": self.cfg.data.backbone_input,
            "dropout": head.dropout,
            "classifier_std": head.classifier_std,
        }

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
