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

A map's resolution is the image size over the backbone's output stride (ResNet at 96 px: 3 x 3 at stride
32, 6 x 6 at 16, 12 x 12 at 8). Run: ``python scripts/region_references.py [--split val]`` (seconds).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from facerep.apps.heatmaps import HELD_OUT_SPLITS, best_matches, grid_baseline, held_out_faces, region_iou
from facerep.data.synthetic import LAPA_CLASSES

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=HELD_OUT_SPLITS, default="test")
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[3, 6, 12, 24])
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


if __name__ == "__main__":
    main()
