"""Face classification: single-label (expression) or multi-label (attributes) from the pooled feature."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerep.backbones import Backbone
from facerep.data.downstream.transforms import ClassificationTransform
from facerep.metrics.classification import accuracy, attribute_accuracy, mean_class_accuracy
from facerep.tasks.base import Task, register_task


class ClassificationModel(nn.Module):
    """Backbone pooled feature (ViT CLS token, CNN average pool) -> linear layer: ``[N, 3, S, S]`` ->
    ``[N, outputs]``."""

    def __init__(self, backbone: Backbone, num_outputs: int, frozen: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen = frozen
        if frozen:
            backbone.requires_grad_(False)
        self.head = nn.Linear(backbone.feature_dim, num_outputs)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            return self.backbone.pooled(images)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, S, S]``, or cached pooled features ``[N, D]`` (linear probe) -> logits."""
        return self.head(inputs if inputs.ndim == 2 else self.features(inputs))


def model_input(batch: dict[str, Any]) -> torch.Tensor:
    """Cached features when the batch has them (linear probe), else images."""
    return batch["features"] if "features" in batch else batch["image"]


def is_multilabel(dataset) -> bool:
    return bool(getattr(dataset, "attribute_names", None))


def classification_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """BCE over attributes (multi-label, ``target [N, A]`` 0/1) or cross-entropy (``target [N]``)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target.long())


def classification_scores(logits: np.ndarray, target: np.ndarray, dataset) -> dict[str, float]:
    """Accuracy and mean per-class accuracy, or per-attribute and mean attribute accuracy."""
    if is_multilabel(dataset):
        per_attribute, mean = attribute_accuracy(logits, target, threshold=0.0)
        names = dataset.attribute_names
        return {
            "mean_accuracy": float(mean),
            **{f"acc_{n}": float(v) for n, v in zip(names, per_attribute, strict=True)},
        }
    pred = logits.argmax(axis=1)
    return {
        "accuracy": float(accuracy(pred, target)),
        "mean_class_accuracy": float(mean_class_accuracy(pred, target, len(dataset.class_names))),
    }


@register_task
class Classification(Task):
    name = "classification"
    probe = True
    pooled = True
    balanced_sampling = True  # single-label datasets (multi-label ones are refused by their labels)
    primary = "accuracy"
    higher_is_better = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.multilabel = False

    def build_model(self, backbone, dataset) -> nn.Module:
        self.multilabel = is_multilabel(dataset)
        self.primary = "mean_accuracy" if self.multilabel else "accuracy"
        outputs = len(dataset.attribute_names) if self.multilabel else len(dataset.class_names)
        return ClassificationModel(backbone, outputs, frozen=self.cfg.train.probe)

    def transform(self, train: bool):
        return ClassificationTransform(self.cfg.data.image_size, train, self.augment_config())

    def loss(self, model, batch):
        loss = classification_loss(model(model_input(batch)), batch["label"], self.multilabel)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, model, batch) -> dict[str, Any]:
        return {"logits": model(model_input(batch)).float().cpu()}

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device) -> dict:
        logits, targets, order = [], [], []
        for batch in loader:
            batch = {k: v.to(device) if k in ("image", "features") else v for k, v in batch.items()}
            logits.append(self.predict(model, batch)["logits"].numpy())
            targets.append(np.asarray(batch["label"]))
            order.append(batch["index"].numpy())
        index = np.concatenate(order)
        all_logits, all_targets = (
            np.empty_like(np.concatenate(logits)),
            np.empty_like(np.concatenate(targets)),
        )
        all_logits[index], all_targets[index] = np.concatenate(logits), np.concatenate(targets)
        return {
            subset: classification_scores(all_logits[members], all_targets[members], dataset)
            for subset, members in dataset.subsets().items()
        }
