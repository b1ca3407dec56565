"""Face parsing: per-pixel classes from the UPerNet trunk, scored at the original image resolution."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerep.backbones import Backbone
from facerep.data.downstream.transforms import ParsingTransform, logits_to_image
from facerep.metrics.parsing import ConfusionAccumulator, parsing_scores
from facerep.models.dense import DenseHead, resolve_levels
from facerep.tasks.base import Task, register_task
from facerep.viz import draw_parsing


class ParsingModel(nn.Module):
    """Backbone + UPerNet -> class logits at the input size: ``[N, 3, S, S]`` -> ``[N, C, S, S]``.

    As FaRL's ``FaceParsingTransformer`` (``farl/experiments/face_parsing/network.py``): the crop (512) is
    resized to the backbone's input (``dense["input_size"]``, 448) and the logits are upsampled back to
    the crop size (bilinear, ``align_corners=False``) for the loss and the metrics.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, levels: list[int], channels: int, **dense: Any
    ) -> None:
        super().__init__()
        self.dense = DenseHead(backbone, levels, channels, num_classes, **dense)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.dense(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


@register_task
class Parsing(Task):
    name = "parsing"
    primary = "mean_f1"
    higher_is_better = True

    def build_model(self, backbone, dataset) -> nn.Module:
        head = self.cfg.head
        levels = resolve_levels(backbone, head.levels, head.blocks)
        return ParsingModel(backbone, len(dataset.class_names), levels, head.channels, **self.dense_options())

    def transform(self, train: bool):
        return ParsingTransform(self.cfg.data.image_size, train, self.augment_config())

    def originals(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {"orig_mask": torch.tensor(sample["mask"])}  # a copy: dataset arrays may be read-only

    def loss(self, model, batch):
        ce = F.cross_entropy(model(batch["image"]).float(), batch["mask"])
        return ce, {"cross_entropy": ce.detach()}

    @torch.no_grad()
    def predict(self, model, batch):
        logits = model(batch["image"]).float().cpu()
        masks = []
        for i in range(logits.shape[0]):  # original sizes differ: one image at a time
            original = logits_to_image(
                logits[i : i + 1],
                batch["warp"][i : i + 1].cpu(),
                batch["warp_factor"][i : i + 1].cpu(),
                batch["orig_size"][i],
                image_size=self.cfg.data.image_size,
            )
            masks.append(original[0].argmax(0))
        return {"masks": masks}

    def draw(self, sample, prediction, dataset):
        """The predicted mask, coloured, with a legend of the classes present."""
        mask = prediction["masks"][0].numpy().astype(np.uint8)
        return draw_parsing(sample["image"], mask, dataset.class_names)

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device) -> dict:
        names = dataset.class_names
        subsets = dataset.subsets()
        member_of = {subset: set(members.tolist()) for subset, members in subsets.items()}
        accumulators = {subset: ConfusionAccumulator(len(names)) for subset in subsets}
        for batch in loader:
            batch["image"] = batch["image"].to(device, non_blocking=True)
            for index, pred, target in zip(batch["index"].tolist(), self.predict(model, batch)["masks"],
                                           batch["orig_mask"], strict=True):  # fmt: skip
                for subset, acc in accumulators.items():
                    if index in member_of[subset]:
                        acc.update(pred.numpy(), target.numpy())
        results = {}
        for subset, acc in accumulators.items():
            scores = parsing_scores(acc.matrix, names, background=0)
            results[subset] = {"mean_f1": scores["mean_f1"], "miou": scores["miou"], **{
                f"f1_{name}": value for name, value in scores["f1"].items()}}  # fmt: skip
        return results
