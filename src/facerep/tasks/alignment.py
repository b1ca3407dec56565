"""Face alignment: heatmap regression with soft-argmax read-out (FaRL's protocol)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerep.backbones import Backbone
from facerep.data.downstream.transforms import AlignmentTransform, landmarks_to_image
from facerep.metrics.landmarks import ced_auc_fr, nme, unit_distance
from facerep.models.dense import DenseHead, resolve_levels
from facerep.tasks.base import Task, register_task
from facerep.viz import draw_landmarks


def soft_argmax(heatmap_logits: torch.Tensor) -> torch.Tensor:
    """``[N, K, h, w]`` logits -> ``[N, K, 2]`` (x, y) in [0, 1]: sigmoid-weighted mean of pixel centres."""
    h, w = heatmap_logits.shape[-2:]
    weights = heatmap_logits.float().sigmoid()
    weights = weights / weights.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    xs = (torch.arange(w, device=weights.device, dtype=weights.dtype) + 0.5) / w
    ys = (torch.arange(h, device=weights.device, dtype=weights.dtype) + 0.5) / h
    return torch.stack([(weights.sum(dim=2) * xs).sum(-1), (weights.sum(dim=3) * ys).sum(-1)], dim=-1)


def gaussian_heatmaps(landmarks: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Targets ``[N, K, h, w]``: a Gaussian of ``sigma`` heatmap pixels at each ``[N, K, 2]`` point (0-1)."""
    h, w = size
    xs = torch.arange(w, device=landmarks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=landmarks.device, dtype=torch.float32) + 0.5
    px = landmarks[..., 0:1].float() * w  # [N, K, 1]
    py = landmarks[..., 1:2].float() * h
    gx = torch.exp(-((xs - px) ** 2) / (2 * sigma**2))  # [N, K, w]
    gy = torch.exp(-((ys - py) ** 2) / (2 * sigma**2))  # [N, K, h]
    return gy[..., :, None] * gx[..., None, :]


def alignment_loss(
    heatmap_logits: torch.Tensor,
    pred: torch.Tensor,
    target: torch.Tensor,
    sigma: float,
    heatmap_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean Euclidean distance of ``[N, K, 2]`` points in [0, 1] + ``heatmap_weight`` x heatmap BCE."""
    distance = (pred - target.float()).norm(dim=-1).mean()
    heatmaps = gaussian_heatmaps(target, heatmap_logits.shape[-2:], sigma)
    bce = F.binary_cross_entropy_with_logits(heatmap_logits.float(), heatmaps)
    return distance + heatmap_weight * bce, {"distance": distance.detach(), "heatmap_bce": bce.detach()}


class AlignmentModel(nn.Module):
    """Backbone + UPerNet -> K heatmaps at 1/4 resolution -> soft-argmax landmarks."""

    def __init__(self, backbone: Backbone, num_points: int, levels: list[int], channels: int) -> None:
        super().__init__()
        self.dense = DenseHead(backbone, levels, channels, num_points)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        heatmaps = self.dense(images)
        return {"heatmaps": heatmaps, "landmarks": soft_argmax(heatmaps)}


@register_task
class Alignment(Task):
    name = "alignment"
    primary = "nme"
    higher_is_better = False

    def build_model(self, backbone, dataset) -> nn.Module:
        head = self.cfg.head
        levels = resolve_levels(backbone, head.levels, head.blocks)
        return AlignmentModel(backbone, dataset.num_points, levels, head.channels)

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
            out["heatmaps"], out["landmarks"], batch["landmarks"], head.heatmap_sigma, head.heatmap_weight
        )

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
