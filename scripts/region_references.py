"""What ``facerep heatmaps``' score (mean best IoU of each region with a parsing class) gives for regions
that need no training, at the resolutions an FRA heatmap can have.

On the held-out synthetic faces ``facerep heatmaps`` scores (``--split val|test``, 96 px by default), with
``--regions`` zones (8, as FRA's queries):

* ``grid``: the fixed grid of cells ``facerep heatmaps`` prints (position alone);
* ``colour k-means @ R``: every face average-pooled to ``R x R``, the pooled pixels of all faces clustered
  by RGB into ``--regions`` clusters shared by every face (as FRA's queries are), the assignment upsampled
  (nearest) to the image: what colour alone gives at a feature map of ``R x R``;
* ``parts @ R`` (an oracle that reads the truth): the parsing masks pooled to ``R x R`` (class
  fractions), upsampled bilinearly as FRA's heatmaps are, the argmax class per pixel, the 11 classes merged
  into 8 groups (background, skin, hair, brows, eyes, nose, lips, inner mouth): the
  most a map of ``R x R`` can score when its regions are the facial parts.

With ``--run DIR`` (a ``facerep pretrain`` run of ``method=fra``), also what the run's own features give,
trained and at their random initialisation: ``run backbone`` and ``run pixel projections``, the same
k-means (on L2-normalised vectors) of the backbone's last feature map and of the region neck's per-pixel
projections (what FRA's heatmaps score against its mask embeddings) at the run's map resolution: whether
the features could carry regions that beat the grid, whatever the heatmap head learns.

A map's resolution is the image size over the backbone's output stride (ResNet at 96 px: 3 x 3 at stride
32, 6 x 6 at 16, 12 x 12 at 8). Run: ``python scripts/region_references.py [--split val] [--run DIR]``
(seconds).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facerep.apps.heatmaps import (
    HELD_OUT_SPLITS,
    best_matches,
    grid_baseline,
    held_out_faces,
    load_run,
    region_iou,
)
from facerep.data.synthetic import LAPA_CLASSES, SyntheticFace
from facerep.data.transforms import build_pretrain_transform

# LaPa's 11 classes -> 8 groups (brows together, eyes together, lips together)
PART_GROUPS = {
    "background": 0, "skin": 1, "hair": 2, "left_eyebrow": 3, "right_eyebrow": 3, "left_eye": 4,
    "right_eye": 4, "nose": 5, "upper_lip": 6, "lower_lip": 6, "inner_mouth": 7,
}  # fmt: skip


def kmeans(x: torch.Tensor, k: int, iterations: int = 30, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means on rows ``x [N, C]`` from ``k`` random rows -> the cluster of each row ``[N]``."""
    centres = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]].clone()
    for _ in range(iterations):
        assignment = torch.cdist(x, centres).argmin(1)
        for c in range(k):
            if (assignment == c).any():
                centres[c] = x[assignment == c].mean(0)
    return assignment


@torch.no_grad()
def run_features(run: str, trained: bool, faces: list[SyntheticFace]) -> dict[str, torch.Tensor]:
    """The backbone's last feature map and the neck's pixel projections of ``faces``, ``[N, C, h, w]``."""
    method, cfg = load_run(run, trained)
    transform = build_pretrain_transform(replace(cfg.data, hflip=0.0))
    images = torch.stack([transform(Image.fromarray(f.image)) for f in faces])
    maps = torch.cat([method.encoder.forward_features(images[i : i + 50]) for i in range(0, len(faces), 50)])
    return {"backbone": maps, "pixel projections": method.head.pixel_embeddings(maps)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=HELD_OUT_SPLITS, default="test")
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[3, 6, 12, 24])
    parser.add_argument("--run", help="a method=fra pre-training run: k-means of its own features too")
    args = parser.parse_args()
    faces = held_out_faces(args.faces, args.size, args.split)
    images = torch.from_numpy(np.stack([f.image for f in faces])).permute(0, 3, 1, 2).float() / 255
    masks = torch.from_numpy(np.stack([f.mask for f in faces])).long()
    classes = len(LAPA_CLASSES)
    groups = torch.tensor([PART_GROUPS[name] for name in LAPA_CLASSES])
    if args.regions != 1 + int(groups.max()):
        raise SystemExit(f"--regions must be {1 + int(groups.max())} for the part oracle's groups")
    onehot = F.one_hot(masks, classes).permute(0, 3, 1, 2).float()

    def score(assignment: torch.Tensor) -> float:
        return best_matches(region_iou(assignment, masks, args.regions, classes))["mean_best_iou"]

    print(
        f"{args.faces} synthetic {args.split} faces at {args.size} px, {args.regions} regions: mean best IoU"
    )
    print(f"grid (position alone): {grid_baseline(args.regions, faces)['mean_best_iou']:.3f}")
    for r in args.resolutions:
        pooled = F.adaptive_avg_pool2d(images, r).permute(0, 2, 3, 1).reshape(-1, 3)
        colour = kmeans(pooled, args.regions).reshape(len(faces), 1, r, r).float()
        colour = F.interpolate(colour, size=(args.size, args.size), mode="nearest")[:, 0].long()
        parts = F.interpolate(F.adaptive_avg_pool2d(onehot, r), size=(args.size, args.size), mode="bilinear")
        oracle = score(groups[parts.argmax(1)])
        print(f"{r:>3} x {r:<3} colour k-means {score(colour):.3f}   parts (oracle) {oracle:.3f}")
    if args.run:
        for trained in (True, False):
            for name, f in run_features(args.run, trained, faces).items():
                b, c, h, w = f.shape
                rows = F.normalize(f.permute(0, 2, 3, 1).reshape(-1, c), dim=1)
                cells = kmeans(rows, args.regions).reshape(b, 1, h, w).float()
                cells = F.interpolate(cells, size=(args.size, args.size), mode="nearest")[:, 0].long()
                state = "trained" if trained else "random init"
                print(f"run {name} k-means @ {h} x {w} ({state}): {score(cells):.3f}")


if __name__ == "__main__":
    main()
