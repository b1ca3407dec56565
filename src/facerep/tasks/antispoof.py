"""Face anti-spoofing (presentation attack detection): live vs spoof from the pooled feature.

The model is the backbone's pooled feature -> ``Linear(D, 2)``; softmax class 1 is **live** and its
probability is the liveness score. Evaluation follows the cross-domain OCIM code (SSDG, FSFM): frame
scores are averaged per video, HTER is taken at the EER threshold of the same test scores; see
:mod:`facerep.metrics.antispoof` for every convention.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from facerep.config import ConfigError
from facerep.data.downstream.transforms import ClassificationTransform
from facerep.metrics.antispoof import antispoof_scores
from facerep.tasks.base import FaceCrop, Layout, Task, register_task
from facerep.tasks.classification import ClassificationModel

LIVE = 1  # class index of live (bona fide) faces; 0 = spoof


def liveness(logits: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` logits -> ``[N]`` liveness probabilities (softmax of class 1)."""
    return logits.float().softmax(dim=1)[:, LIVE]


def per_video(
    scores: np.ndarray, labels: np.ndarray, videos: np.ndarray, *columns: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Frame scores ``[N]`` averaged per video: ``([V] scores, [V] labels, [V] of each column)`` in order of
    first appearance; a column (attack, domain) takes its video's first frame's value."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, video in enumerate(videos.tolist()):
        groups[video].append(i)
    members = list(groups.values())
    for idx in members:
        if len(set(labels[idx].tolist())) > 1:
            raise ConfigError(f"video {videos[idx[0]]!r} mixes live and spoof frames")
    first = np.array([idx[0] for idx in members], dtype=np.int64)
    mean = np.array([scores[idx].mean() for idx in members], dtype=np.float64)
    return (mean, labels[first], *(c[first] for c in columns))


def score_row(scores: np.ndarray, labels: np.ndarray, attacks: np.ndarray) -> dict[str, float]:
    """One table row: :func:`antispoof_scores` at the EER threshold (APCER per attack type when the
    attacks are named) plus ``hter_at_0.5`` (HTER at the fixed threshold 0.5)."""
    types = attacks if (attacks[labels == 0] != "").all() else None
    try:
        row = antispoof_scores(scores, labels, attack_types=types)
        row["hter_at_0.5"] = antispoof_scores(scores, labels, threshold=0.5)["hter"]
    except ValueError as err:
        raise ConfigError(f"task=antispoof: {err}") from None
    return row


@register_task
class Antispoof(Task):
    name = "antispoof"
    pooled = True
    balanced_sampling = True
    primary = "hter"
    higher_is_better = False

    def build_model(self, backbone, dataset) -> nn.Module:
        names = tuple(getattr(dataset, "class_names", None) or ())
        if len(names) != 2 or names[LIVE] != "live":
            raise ConfigError(f"task=antispoof needs class_names (spoof, live), got {names or 'none'}")
        return ClassificationModel(backbone, 2)

    def transform(self, train: bool):
        return ClassificationTransform(self.cfg.data.image_size, train, self.augment_config())

    def originals(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Video id, attack name and domain (strings: kept as lists by ``collate_samples``)."""
        return {
            "video": str(sample.get("video", sample.get("name", ""))),
            "attack": str(sample.get("attack", "")),
            "domain": str(sample.get("domain", "")),
        }

    def loss(self, model, batch):
        loss = F.cross_entropy(model(batch["image"]).float(), batch["label"].long())
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, model, batch) -> dict[str, Any]:
        """``{"live": [N] liveness probabilities, "logits": [N, 2]}``."""
        logits = model(batch["image"]).float().cpu()
        return {"live": liveness(logits), "logits": logits}

    @torch.no_grad()
    def evaluate(self, model, loader, dataset, device) -> dict:
        """``full`` (video level: frame scores averaged per video, the OCIM headline), ``frame`` (frame
        level), and ``video/<domain>`` + ``frame/<domain>`` when the split holds several domains."""
        scores, labels, order = [], [], []
        strings: dict[str, list[str]] = {"video": [], "attack": [], "domain": []}
        for batch in loader:
            scores.append(self.predict(model, {"image": batch["image"].to(device)})["live"].numpy())
            labels.append(np.asarray(batch["label"]))
            order.append(np.asarray(batch["index"]))
            for key, values in strings.items():
                values.extend(batch[key])
        sort = np.argsort(np.concatenate(order))  # back to dataset order
        frame_scores, frame_labels = np.concatenate(scores)[sort], np.concatenate(labels)[sort]
        videos, attacks, domains = (np.asarray(strings[k], dtype=str)[sort] for k in strings)
        v_scores, v_labels, v_attacks, v_domains = per_video(
            frame_scores, frame_labels, videos, attacks, domains
        )
        results = {
            "full": score_row(v_scores, v_labels, v_attacks),
            "frame": score_row(frame_scores, frame_labels, attacks),
        }
        names = sorted(set(domains.tolist()))
        for domain in names if len(names) > 1 else []:
            v, f = v_domains == domain, domains == domain
            if len(set(v_labels[v].tolist())) == 2:  # a domain with one class has no HTER
                results[f"video/{domain}"] = score_row(v_scores[v], v_labels[v], v_attacks[v])
                results[f"frame/{domain}"] = score_row(frame_scores[f], frame_labels[f], attacks[f])
        return results

    def draw(self, sample, prediction, dataset) -> Image.Image:
        """The face with a green (predicted live at 0.5) or red (spoof) frame, the liveness score and the
        ground truth written on it."""
        image = Image.fromarray(np.asarray(sample["image"], dtype=np.uint8)).convert("RGB")
        score = float(prediction["live"][0])
        colour = (0, 200, 0) if score >= 0.5 else (220, 0, 0)
        draw = ImageDraw.Draw(image)
        width = max(2, image.width // 64)
        draw.rectangle([0, 0, image.width - 1, image.height - 1], outline=colour, width=width)
        truth = "live" if int(sample["label"]) == LIVE else f"spoof {sample.get('attack', '')}".strip()
        draw.text((2 * width, 2 * width), f"live {score:.2f} (gt {truth})", fill=colour)
        return image

    # -- predict: the classifier's reading plus the liveness score -----------------------------------------
    def read_face(
        self, output: np.ndarray, face: FaceCrop, layout: Layout, hw: tuple[int, int]
    ) -> dict[str, Any]:
        """Logits ``[2]`` -> ``probabilities``, ``label`` and ``liveness`` (the live probability)."""
        result = super().read_face(output, face, layout, hw)
        return {**result, "liveness": result["probabilities"][layout.class_names[LIVE]]}

    def null_face(self, face: FaceCrop, layout: Layout) -> dict[str, Any]:
        return {**super().null_face(face, layout), "liveness": None}
