"""Face alignment: heatmap regression with soft-argmax read-out (FaRL's protocol).

FaRL (``farl/experiments/face_alignment/task.py``, ``trainers/*_farl.yaml``, ``farl/network/geometry.py``):
landmarks are the sigmoid-weighted mean of the head's heatmaps; loss = mean point distance in [0, 1] +
BCE between the head's logits upsampled (bilinear, ``align_corners=False``) to 128 x 128 and targets
rendered there by ``points2heatmap`` (``heatmap_radius`` 5, p2i kernel ``gaussian_awing``:
``exp(-r^2 / (2 sigma^2))`` with ``sigma = radius / 4 = 1.25`` px, zero beyond ``r > radius``, peak 1,
not normalised).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facerep.data.downstream.transforms import AlignmentTransform, landmarks_to_image
from facerep.metrics.landmarks import ced_auc_fr, nme, unit_distance
from facerep.models.dense import DenseHead
from facerep.tasks.base import (
    DENSE_HEAD_WEIGHT,
    FaceCrop,
    Layout,
    Output,
    Task,
    head_rows,
    register_task,
)
from facerep.viz import draw_landmarks


def soft_argmax(heatmap_logits: torch.Tensor) -> torch.Tensor:
    """``[N, K, h, w]`` logits -> ``[N, K, 2]`` (x, y) in [0, 1]: sigmoid-weighted mean of pixel centres."""
    return heatmap_points(heatmap_logits.float().sigmoid())


def heatmap_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """Non-negative heatmaps ``[N, K, h, w]`` -> ``[N, K, 2]`` (x, y) in [0, 1]: their weighted mean of pixel
    centres, ``(x + 0.5) / w`` (facer's ``heatmap2points`` too)."""
    h, w = heatmaps.shape[-2:]
    weights = heatmaps / heatmaps.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    xs = (torch.arange(w, device=weights.device, dtype=weights.dtype) + 0.5) / w
    ys = (torch.arange(h, device=weights.device, dtype=weights.dtype) + 0.5) / h
    return torch.stack([(weights.sum(dim=2) * xs).sum(-1), (weights.sum(dim=3) * ys).sum(-1)], dim=-1)


def gaussian_heatmaps(landmarks: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Targets ``[N, K, h, w]`` for ``[N, K, 2]`` points in [0, 1]: FaRL's ``gaussian_awing`` kernel,
    ``exp(-r^2 / (2 sigma^2))`` of the distance ``r`` (heatmap pixels) from a pixel centre to the point,
    zero beyond ``r > 4 sigma`` (FaRL's kernel radius), peak 1 (not normalised)."""
    h, w = size
    xs = torch.arange(w, device=landmarks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=landmarks.device, dtype=torch.float32) + 0.5
    dx2 = (xs - landmarks[..., 0:1].float() * w) ** 2  # [N, K, w]
    dy2 = (ys - landmarks[..., 1:2].float() * h) ** 2  # [N, K, h]
    r2 = dy2[..., :, None] + dx2[..., None, :]  # [N, K, h, w]
    return torch.exp(-r2 / (2 * sigma**2)) * (r2 <= (4 * sigma) ** 2)


def alignment_loss(
    heatmap_logits: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    sigma: float,
    heatmap_weight: float,
    heatmap_size: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean Euclidean distance of ``[N, K, 2]`` points in [0, 1] + ``heatmap_weight`` x heatmap BCE.

    The BCE compares the ``[N, K, h, w]`` logits upsampled (bilinear, ``align_corners=False``) to
    ``heatmap_size`` with :func:`gaussian_heatmaps` rendered at that size (FaRL: 112 -> 128).
    """
    distance = (pred - target.float()).norm(dim=-1).mean()
    size = (heatmap_size, heatmap_size)
    logits = F.interpolate(heatmap_logits.float(), size=size, mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, gaussian_heatmaps(target, size, sigma))
    return distance + heatmap_weight * bce, {"distance": distance.detach(), "heatmap_bce": bce.detach()}


class AlignmentModel(nn.Module):
    """Backbone + UPerNet (``dense``, K outputs) -> K heatmaps at 1/4 of the backbone's input -> soft-argmax
    landmarks."""

    def __init__(self, dense: DenseHead) -> None:
        super().__init__()
        self.dense = dense

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        heatmaps = self.dense(images)
        return {"heatmaps": heatmaps, "landmarks": soft_argmax(heatmaps)}


def landmarks_to_photo(face: FaceCrop, pred01: np.ndarray, size: int) -> np.ndarray:
    """``[K, 2]`` points in [0, 1] units of a ``size`` crop -> ``[K, 2]`` photo pixels: the transform's
    ``crop_to_image`` (``face.back``), then the inverse of the photo -> fed-image map."""
    pred = torch.from_numpy(np.asarray(pred01, dtype=np.float64)[None])
    on_fed = landmarks_to_image(pred, face.back[None].double(), size, face.warp_factor)[0].numpy()
    return face.fed_to_photo(on_fed)


@register_task
class Alignment(Task):
    name = "alignment"
    primary = "nme"
    higher_is_better = False

    def build_model(self, backbone, dataset) -> nn.Module:
        return AlignmentModel(self.dense_head(backbone, dataset.num_points))

    def transform(self, train: bool):
        return AlignmentTransform(self.cfg.data.image_size, train, self.augment_config())

    def originals(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {
            "orig_landmarks": torch.as_tensor(sample["landmarks"], dtype=torch.float32),
            "orig_box": torch.as_tensor(sample["box"], dtype=torch.float32),
        }

    def loss(self, model, batch):
        out = model(batch["image"])
        head = self.cfg.head
        return alignment_loss(
            out["heatmaps"], out["landmarks"], batch["landmarks"], sigma=head.heatmap_sigma,
            heatmap_weight=head.heatmap_weight, heatmap_size=head.heatmap_size,
        )  # fmt: skip

    @torch.no_grad()
    def predict(self, model, batch):
        pred = model(batch["image"])["landmarks"].float().cpu()
        return {"landmarks": landmarks_to_image(pred, batch["crop_to_image"].cpu(), self.cfg.data.image_size)}

    def draw(self, sample, prediction, dataset):
        """Predicted landmarks (green) and the ground truth (red)."""
        return draw_landmarks(sample["image"], prediction["landmarks"][0].numpy(), sample["landmarks"])

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device) -> dict:
        preds, targets, boxes, order = [], [], [], []
        for batch in loader:
            batch["image"] = batch["image"].to(device, non_blocking=True)
            preds.append(self.predict(model, batch)["landmarks"].numpy())
            targets.append(batch["orig_landmarks"].numpy())
            boxes.append(batch["orig_box"].numpy())
            order.append(batch["index"].numpy())
        pred, target, box = (np.concatenate(x) for x in (preds, targets, boxes))
        index = np.concatenate(order)
        # FaRL: NME in the dataset's unit; AUC/FR at 10 % of it, except box-normalised at 7 % for AFLW-19
        box_based = dataset.nme_unit in ("box", "diag")
        curve_unit, threshold = ("box", 0.07) if box_based else (dataset.nme_unit, 0.10)
        per_image, per_image_curve = np.empty(len(dataset)), np.empty(len(dataset))
        per_image[index] = nme(pred, target, unit_distance(target, dataset.nme_unit, boxes=box))
        per_image_curve[index] = nme(pred, target, unit_distance(target, curve_unit, boxes=box))
        results = {}
        for subset, members in dataset.subsets().items():
            auc, fr = ced_auc_fr(per_image_curve[members], threshold)
            results[subset] = {
                "nme": float(per_image[members].mean()),
                f"fr_{curve_unit}@{threshold}": float(fr),
                f"auc_{curve_unit}@{threshold}": float(auc),
            }
        return results

    # -- predict and export: landmarks [N, K, 2] in [0, 1] crop units, cropped around a face box ------------
    def layout_complete(self, layout: Layout) -> bool:
        return layout.num_points is not None

    def layout_from_weights(self, weights: dict[str, torch.Tensor]) -> Layout | None:
        count = head_rows(weights, DENSE_HEAD_WEIGHT)
        return None if count is None else Layout(num_points=count)

    def export_output(self, layout: Layout) -> Output:
        return Output("landmarks", ("N", layout.num_points, 2))

    def export_forward(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return out["landmarks"]

    def crop_rule(self, info: Any, augment: Any) -> str:
        return "box"

    def blank_target(self, image: np.ndarray) -> dict[str, Any]:
        return {"landmarks": np.zeros((1, 2), dtype=np.float32)}  # only the box is read

    def crop_map(self, out: dict[str, Any]) -> torch.Tensor:
        """The transform's ``crop_to_image`` ``[2, 3]`` (crop -> fed image)."""
        return out["crop_to_image"]

    def read_face(
        self, output: np.ndarray, face: FaceCrop, layout: Layout, hw: tuple[int, int]
    ) -> dict[str, Any]:
        """``[K, 2]`` -> ``landmarks`` ``[K, 2]`` photo pixels and the ``crop_box`` they were read in."""
        points = landmarks_to_photo(face, output, self.cfg.data.image_size)
        return {**self.null_face(face, layout), "landmarks": np.round(points, 2).tolist()}

    def null_face(self, face: FaceCrop, layout: Layout) -> dict[str, Any]:
        box = None if face.crop_box is None else [round(float(v), 2) for v in face.crop_box]
        return {"landmarks": None, "crop_box": box}

    def draw_photo(self, image: np.ndarray, result: dict[str, Any], layout: Layout) -> Image.Image:
        """Every face's landmarks as green dots."""
        points = [np.asarray(f["landmarks"]) for f in result["faces"] if f["landmarks"] is not None]
        return (
            draw_landmarks(image, np.concatenate(points))
            if points
            else super().draw_photo(image, result, layout)
        )
