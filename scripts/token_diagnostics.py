"""Why a pre-trained ViT row reads out no better than random init: what its tokens keep, measured per block.

For every ViT row of a finished ``facerep demo`` run (one seed; the rows' own run directories, nothing is
trained), on the benchmark's synthetic faces at its image size, for each read-out block (``default_levels``):

* ``patch R2``: a ridge map (:func:`facerep.metrics.tokens.ridge_r2`) from one token ``[D]`` to the pixels of
  its own patch (``[768]`` for 16 x 16), fitted on the train faces' tokens, R^2 on the test faces' (mean
  over pixels): how much of a linear copy of its patch a token keeps, which the landmark and parsing
  read-outs use directly;
* ``neighbour R2``: the same from a token to the pixels of the patch on its right (context it has read);
* ``position R2``: the same from a token to its patch's (row, column): where it sits;
* ``effective rank`` (:func:`facerep.metrics.tokens.effective_rank`): ``exp`` of the entropy of the
  normalised singular-value spectrum of the test tokens (centred): how many directions the tokens spread
  over (of ``D``); ``standardised``: the same after each channel is z-scored, as the read-outs see them.

An external teacher's rows (read out on the input resized to the teacher's size) are measured on the
resized faces, against the teacher's own patches. A first row, ``pixels``, takes each 16 x 16 patch's own
pixels as its token: what a perfect copy of the patch reads of its neighbour and position.

Run: ``python scripts/token_diagnostics.py runs/demo2 --seed 0`` (about a minute per row on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from facerep.apps.readouts import render_split
from facerep.commands.demo import DemoConfig, ResizedInput, _backbones
from facerep.methods.mcf import resize_square
from facerep.metrics.tokens import effective_rank, grid_positions, image_patches, ridge_r2, token_rows


def measure(x_train: Tensor, x_test: Tensor, train_images: Tensor, test_images: Tensor, patch: int) -> dict:
    """The module docstring's numbers for tokens ``x [N * G * G, D]`` of the images ``[N, 3, S, S]``."""
    grid = train_images.shape[-1] // patch
    y_train, y_test = image_patches(train_images, patch).double(), image_patches(test_images, patch).double()
    p_train, p_test = (grid_positions(len(images), grid).double() for images in (train_images, test_images))
    right_train, right_test = (
        p_train[:, 1] < grid - 1,
        p_test[:, 1] < grid - 1,
    )  # tokens with a right neighbour
    return {
        "patch_r2": ridge_r2(x_train, y_train, x_test, y_test),
        "neighbour_r2": ridge_r2(
            x_train[right_train],
            y_train[1:][right_train[:-1]],
            x_test[right_test],
            y_test[1:][right_test[:-1]],
        ),
        "position_r2": ridge_r2(x_train, p_train, x_test, p_test),
        "effective_rank": effective_rank(x_test),
        "standardised_rank": effective_rank(x_test / x_test.std(0).clamp_min(1e-6)),
        "dim": x_test.shape[1],
    }


@torch.no_grad()
def diagnose(backbone: torch.nn.Module, train_images: Tensor, test_images: Tensor) -> dict[str, dict]:
    """Per read-out block of ``backbone``: :func:`measure`."""
    backbone.eval()
    levels = list(backbone.default_levels)
    if isinstance(backbone, ResizedInput):  # measured on what the inner network sees
        train_images = resize_square(train_images, backbone.size, backbone.mode)
        test_images = resize_square(test_images, backbone.size, backbone.mode)
        backbone = backbone.backbone

    def tokens(images: Tensor) -> list[Tensor]:
        maps = [backbone.forward_pyramid(images[i : i + 100], levels) for i in range(0, len(images), 100)]
        return [token_rows(torch.cat([m[k] for m in maps]).double()) for k in range(len(levels))]

    patch = backbone.arch.patch_size
    return {
        f"block {level}": measure(a, b, train_images, test_images, patch)
        for level, a, b in zip(levels, tokens(train_images), tokens(test_images), strict=True)
    }


def report(name: str, result: dict[str, dict]) -> None:
    print(name, flush=True)
    for block, r in result.items():
        print(
            f"  {block:9s} patch {r['patch_r2']:.3f}  neighbour {r['neighbour_r2']:.3f}  position "
            f"{r['position_r2']:.3f}  rank {r['effective_rank']:.1f} (standardised "
            f"{r['standardised_rank']:.1f}) of {r['dim']}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="a finished facerep demo run (its default config)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", help="rows to measure (default: every ViT row)")
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()
    cfg = DemoConfig(output_dir=args.output_dir, seeds=[args.seed])
    train = render_split("train", cfg.train_length, cfg.image_size).images
    test = render_split("test", cfg.test_length, cfg.image_size).images
    # the reference: the patch's own pixels as its token (what a perfect copy reads of its neighbour)
    pixels = [image_patches(images, 16).double() for images in (train, test)]
    results = {"pixels (the patch itself)": {"16 px": measure(*pixels, train, test, 16)}}
    report("pixels (the patch itself)", results["pixels (the patch itself)"])
    for row in _backbones(cfg, args.seed, Path(args.output_dir) / f"seed{args.seed}"):
        if args.rows and row.name not in args.rows:
            continue
        backbone = row.make()
        if (backbone.backbone if isinstance(backbone, ResizedInput) else backbone).arch.family != "vit":
            continue  # no patch tokens (the ResNet rows)
        results[row.name] = diagnose(backbone, train, test)
        report(row.name, results[row.name])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
