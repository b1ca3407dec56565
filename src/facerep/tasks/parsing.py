"""Face parsing: per-pixel classes from the UPerNet trunk, scored at the original image resolution."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facerep.data.downstream.base import DatasetInfo
from facerep.data.downstream.transforms import AugmentConfig, ParsingTransform, logits_to_image
from facerep.geometry import to_3x3
from facerep.metrics.parsing import ConfusionAccumulator, parsing_scores
from facerep.models.dense import DenseHead
from facerep.tasks.base import (
    DENSE_HEAD_WEIGHT,
    FaceCrop,
    Layout,
    Output,
    Task,
    head_rows,
    numbered_classes,
    register_task,
)
from facerep.viz import draw_parsing

_MASK_CHUNK = 1 << 23  # logits mapped back per row chunk: at most this many values (rows x W x classes)


class ParsingModel(nn.Module):
    """Backbone + UPerNet -> class logits at the input size: ``[N, 3, S, S]`` -> ``[N, C, S, S]``.

    As FaRL's ``FaceParsingTransformer`` (``farl/experiments/face_parsing/network.py``): the crop (512) is
    resized to the backbone's input (``dense``'s ``input_size``, 448) and the logits are upsampled back to
    the crop size (bilinear, ``align_corners=False``) for the loss and the metrics.
    """

    def __init__(self, dense: DenseHead) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.dense(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def labels_to_photo(face: FaceCrop, logits: np.ndarray, hw: tuple[int, int], size: int) -> np.ndarray:
    """``[C, S, S]`` logits of a ``size`` crop -> ``[H, W]`` uint8 photo labels (``hw`` = (H, W)): the
    transform's ``warp`` (``face.back``) after the photo -> fed-image map, argmax per pixel; row chunks bound
    the memory."""
    h, w = hw
    warp = to_3x3(face.back.numpy().astype(np.float64)) @ face.to_fed  # photo -> aligned crop
    x = torch.from_numpy(np.ascontiguousarray(logits))[None].float()
    rows = max(1, _MASK_CHUNK // max(1, w * logits.shape[0]))
    mask = np.zeros((h, w), dtype=np.uint8)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        shifted = warp @ np.array([[1.0, 0, 0], [0, 1.0, y0], [0, 0, 1.0]])
        out = logits_to_image(x, torch.from_numpy(shifted[None, :2]), face.warp_factor, (y1 - y0, w),
                              image_size=size)  # fmt: skip
        mask[y0:y1] = out[0].argmax(0).numpy().astype(np.uint8)
    return mask


@register_task
class Parsing(Task):
    name = "parsing"
    primary = "mean_f1"
    higher_is_better = True

    def build_model(self, backbone, dataset) -> nn.Module:
        return ParsingModel(self.dense_head(backbone, len(dataset.class_names)))

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

    # -- predict and export: logits [N, C, S, S], one label map per face and one per photo ----------------
    def layout_complete(self, layout: Layout) -> bool:
        return layout.class_names is not None

    def layout_from_weights(self, weights: dict[str, torch.Tensor]) -> Layout | None:
        count = head_rows(weights, DENSE_HEAD_WEIGHT)
        return None if count is None else Layout(class_names=numbered_classes(count))

    def export_output(self, layout: Layout) -> Output:
        size = self.cfg.data.image_size
        return Output("logits", ("N", len(layout.class_names or ()), size, size))

    def crop_rule(self, info: DatasetInfo, augment: AugmentConfig) -> str:
        """``five_point`` (``align=five_point``, or ``auto`` on sets whose samples carry the five points),
        ``box`` (``align=box``), else ``canvas`` (the transform's whole-image crop)."""
        auto = augment.align == "auto" and info.five_points
        if augment.align == "five_point" or auto:
            return "five_point"
        return "box" if augment.align == "box" else "canvas"

    def blank_target(self, image: np.ndarray) -> dict[str, Any]:
        return {"mask": np.zeros(image.shape[:2], dtype=np.uint8)}

    def read_face(
        self, output: np.ndarray, face: FaceCrop, layout: Layout, hw: tuple[int, int]
    ) -> dict[str, Any]:
        """``[C, S, S]`` -> ``mask`` ``[H, W]`` uint8 class ids of the photo."""
        return {"mask": labels_to_photo(face, output, hw, self.cfg.data.image_size)}

    def null_face(self, face: FaceCrop, layout: Layout) -> dict[str, Any]:
        return {"mask": None}

    def combine(self, faces: list[dict[str, Any]], hw: tuple[int, int]) -> dict[str, Any]:
        """``mask`` ``[H, W]``: every face's labels, earlier (higher scored) faces keeping what they claim."""
        combined = np.zeros(hw, dtype=np.uint8)
        for mask in (f["mask"] for f in faces if f["mask"] is not None):  # None: a non-finite output
            free = combined == 0
            combined[free] = mask[free]
        return {"mask": combined}

    def draw_photo(self, image: np.ndarray, result: dict[str, Any], layout: Layout) -> Image.Image:
        """The combined mask, coloured, with a legend of the classes present."""
        return draw_parsing(image, result["mask"], layout.class_names)
