"""Where a region method's queries look: its heatmaps on held-out synthetic faces, scored against the
generator's parsing masks.

Every pixel is assigned to the query with the highest heatmap value (heatmaps upsampled bilinearly from
the feature grid to the image); for each query and each LaPa class the intersection-over-union of that
query's pixels with the class's pixels is accumulated over all faces, and each query is reported with its
best-matching class. Two references stand beside a trained run: the same method at its random
initialisation, and a fixed grid of as many cells as queries (what position alone gives).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from facerep.config import ConfigError, PretrainConfig, check_choice, load_config
from facerep.data.downstream.synthetic import SPLIT_SEEDS
from facerep.data.synthetic import LAPA_CLASSES, SyntheticFace, render_face
from facerep.data.transforms import build_pretrain_transform
from facerep.methods import METHODS, PretrainMethod, build_method
from facerep.runtime.checkpoint import load_checkpoint
from facerep.train.state import PretrainState
from facerep.viz import palette


def load_run(run_dir: str | Path, trained: bool = True) -> tuple[PretrainMethod, PretrainConfig]:
    """The method of a ``facerep pretrain`` run directory (``config.yaml`` + ``checkpoint.pt``) in eval
    mode, with its trained weights or, with ``trained=False``, at its random initialisation."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file() or not PretrainState.path(run).is_file():
        raise ConfigError(
            f"{run}: not a facerep pretrain run (expected config.yaml and {PretrainState.FILE})"
        )
    cfg = load_config(PretrainConfig, run / "config.yaml")
    if not hasattr(METHODS.get(cfg.method), "heatmaps"):
        raise ConfigError(f"{run}: method={cfg.method} has no region heatmaps (method=fra has)")
    torch.manual_seed(cfg.seed)  # the run's own initial weights
    method = build_method(cfg)
    if trained:
        method.load_state_dict(load_checkpoint(PretrainState.path(run))["model"])
    return method.eval(), cfg


HELD_OUT_SPLITS = ("val", "test")


def held_out_faces(length: int, size: int, split: str = "test") -> list[SyntheticFace]:
    """Faces of a held-out synthetic split (never seen in pre-training), rendered at ``size``: ``val`` to
    choose a recipe's knobs on, ``test`` to report the chosen one."""
    check_choice("split", split, HELD_OUT_SPLITS)
    return [render_face(SPLIT_SEEDS[split], i, size) for i in range(length)]


@torch.no_grad()
def face_regions(
    method: Any, faces: list[SyntheticFace], cfg: PretrainConfig, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Heatmaps ``[N, Q, S, S]`` of ``faces`` (the run's resize + normalisation, no flip), upsampled to the
    image size, and the decoder's mask embeddings ``[N, Q, D]``."""
    transform = build_pretrain_transform(replace(cfg.data, hflip=0.0))
    size = cfg.data.image_size
    maps, embeddings = [], []
    for start in range(0, len(faces), batch_size):
        images = torch.stack([transform(Image.fromarray(f.image)) for f in faces[start : start + batch_size]])
        maps.append(
            F.interpolate(method.heatmaps(images), size=(size, size), mode="bilinear", align_corners=False)
        )
        embeddings.append(method.mask_embeddings(images))
    return torch.cat(maps), torch.cat(embeddings)


def grid_assignment(num_cells: int, size: int) -> Tensor:
    """``[S, S]`` cell index of a fixed grid of ``num_cells`` cells (rows x columns as square as possible)."""
    rows = int(math.sqrt(num_cells))
    while num_cells % rows:
        rows -= 1
    cols = num_cells // rows
    r = torch.arange(size) * rows // size
    c = torch.arange(size) * cols // size
    return r[:, None] * cols + c[None, :]


def region_iou(assignment: Tensor, masks: Tensor, num_regions: int, num_classes: int) -> Tensor:
    """IoU ``[R, C]`` of every region's pixels with every class's, pooled over all images.

    Args:
        assignment: ``[N, H, W]`` region index of each pixel.
        masks: ``[N, H, W]`` class index of each pixel.
    """
    if assignment.shape != masks.shape:
        raise ValueError(
            f"assignment {tuple(assignment.shape)} and masks {tuple(masks.shape)} differ in shape"
        )
    pairs = torch.bincount(
        (assignment.long() * num_classes + masks.long()).flatten(), minlength=num_regions * num_classes
    ).reshape(num_regions, num_classes).double()  # fmt: skip
    union = pairs.sum(1, keepdim=True) + pairs.sum(0, keepdim=True) - pairs
    return torch.where(union > 0, pairs / union.clamp(min=1), torch.zeros_like(pairs))


def best_matches(iou: Tensor) -> dict[str, Any]:
    """Per region its best-matching class and IoU, and their mean."""
    best, cls = iou.max(dim=1)
    rows = [
        {"query": q, "class": LAPA_CLASSES[int(c)], "iou": float(v)}
        for q, (v, c) in enumerate(zip(best, cls, strict=True))
    ]
    return {
        "per_query": rows,
        "mean_best_iou": float(best.mean()),
        "classes_matched": len({r["class"] for r in rows}),
    }


def score_regions(heatmaps: Tensor, faces: list[SyntheticFace]) -> dict[str, Any]:
    """:func:`best_matches` of the argmax assignment of ``heatmaps [N, Q, S, S]`` against the faces' masks."""
    masks = torch.from_numpy(np.stack([f.mask for f in faces]))
    return best_matches(region_iou(heatmaps.argmax(1), masks, heatmaps.shape[1], len(LAPA_CLASSES)))


def spread(embeddings: Tensor, heatmaps: Tensor) -> dict[str, float]:
    """Whether the queries are distinct at all: the mean off-diagonal cosine between the ``Q`` mask
    embeddings ``[N, Q, D]`` averaged over the images (what training scores pixels against; 1 = all queries
    one vector) and the mean over pixels of the largest heatmap value (``1 / Q`` = uniform heatmaps, 1 =
    every pixel owned by one query); and whether they split each image or the set of images: per image, the
    share of its pixels the largest query owns (argmax) and ``exp`` of the entropy of its queries' shares
    (queries per image: ``Q`` = an even split of every image, 1 = each image owned by one query), averaged."""
    mean = F.normalize(embeddings.float().mean(0), dim=1)
    q = mean.shape[0]
    cosine = float(((mean @ mean.T).sum() - q) / (q * (q - 1)))
    owners = heatmaps.argmax(1).flatten(1)  # [N, S * S]
    shares = torch.zeros(len(owners), q).scatter_add_(1, owners, torch.ones_like(owners, dtype=torch.float))
    shares /= shares.sum(1, keepdim=True)
    per_image = (-(shares * shares.clamp(min=1e-12).log()).sum(1)).exp()
    return {
        "embedding_cosine": cosine,
        "heatmap_peak": float(heatmaps.max(1).values.mean()),
        "largest_query_share": float(shares.max(1).values.mean()),
        "queries_per_image": float(per_image.mean()),
    }


def grid_baseline(num_regions: int, faces: list[SyntheticFace]) -> dict[str, Any]:
    """The same scores for a fixed grid of ``num_regions`` cells: what position alone gives."""
    masks = torch.from_numpy(np.stack([f.mask for f in faces]))
    grid = grid_assignment(num_regions, masks.shape[-1]).expand_as(masks)
    return best_matches(region_iou(grid, masks, num_regions, len(LAPA_CLASSES)))


def overlay(face: SyntheticFace, heatmaps: Tensor) -> Image.Image:
    """One row: the face, its parsing mask, the argmax assignment, then every query's heatmap (jet,
    scaled to its own maximum) blended over the face, each captioned."""
    image = face.image.astype(np.float32)
    size = image.shape[0]
    colours = palette(max(len(LAPA_CLASSES), heatmaps.shape[0] + 1))
    argmax = heatmaps.argmax(0).numpy()
    tiles = [
        ("face", face.image),
        ("parsing", (0.4 * image + 0.6 * palette(len(LAPA_CLASSES))[face.mask]).astype(np.uint8)),
        ("argmax", (0.4 * image + 0.6 * colours[argmax + 1]).astype(np.uint8)),
    ]
    from matplotlib import colormaps  # matplotlib: only for the overlays

    jet = colormaps["jet"]
    for q, heat in enumerate(heatmaps.numpy()):
        scaled = heat / max(float(heat.max()), 1e-8)  # each query's map on its own [0, 1] scale
        tiles.append((f"query {q}", (0.5 * image + 0.5 * 255 * jet(scaled)[..., :3]).astype(np.uint8)))
    caption = 12
    canvas = Image.new("RGB", (len(tiles) * (size + 2), size + caption), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, tile) in enumerate(tiles):
        canvas.paste(Image.fromarray(tile), (i * (size + 2), caption))
        draw.text((i * (size + 2) + 2, 0), name, fill=(0, 0, 0))
    return canvas
