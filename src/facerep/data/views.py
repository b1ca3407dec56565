"""What a pre-training method asks of each batch, and how the data pipeline draws it.

A method declares a :class:`BatchSpec`: how many augmented *views* of each image it needs, each with
its own transform (MAE and MCF: one; BYOL-style methods: two, with their own augmentation), and how
many random patch orders (*masks*) to draw per image (MAE: one; MCF: two, for its online and momentum
encoders). The loader draws them, per sample, under a seed that is a pure function of the run seed and
the sample (so batches do not depend on ``data.num_workers`` and a resumed run sees the same ones), and
batches them as ``{"views": [[B, 3, S, S], ...], "masks": [[B, L], ...], "skipped": [...]}``.

A mask is a random permutation of the ``L`` patch indices (int64); a method keeps the first
``int(L * (1 - mask_ratio))`` patches, so the masking ratio stays the method's (DINOv2 and MAE draw
masks in the data pipeline the same way). A method that masks otherwise sets ``draw_mask``, a drawer of one
``[L]`` mask (FaRL: BEiT's blockwise boolean masks, :mod:`facerep.data.masking`), drawn the same way.

A method that learns from image-text pairs (FaRL) also sets ``text``: a tokenizer of one caption to
``[T]`` int64 ids (e.g. :meth:`facerep.data.tokenizer.Tokenizer.encode`). Its
batches then also carry ``"texts": [B, T]`` (each image's caption, tokenized) and ``"captions"`` (the
strings). Captions are a pure function of the item (see :mod:`facerep.data.sources`), never of the
sample's RNG, so they keep the determinism of the views. Without ``text`` no caption is even read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

ViewTransform = Callable[[Image.Image], Tensor]
TextTransform = Callable[[str], Tensor]  # one caption -> [T] int64 token ids
MaskDrawer = Callable[[torch.Generator | None], Tensor]  # one [L] mask, from the generator or torch's RNG


@dataclass(frozen=True)
class BatchSpec:
    """The views, masks and caption tokens a method needs per image (see the module docstring).

    ``text`` and ``draw_mask`` must be picklable (a class instance or ``functools.partial``, not a lambda)
    so that they can travel to DataLoader workers.
    """

    views: tuple[ViewTransform, ...]
    masks: int = 0
    num_patches: int = 0
    text: TextTransform | None = None
    draw_mask: MaskDrawer | None = None  # None: a random permutation of the num_patches indices

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("a batch spec needs at least one view")
        if self.masks and self.num_patches < 1:
            raise ValueError(f"drawing {self.masks} mask(s) needs num_patches >= 1, got {self.num_patches}")


def draw_sample(spec: BatchSpec, image: Image.Image, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    """The views and masks of one image, drawn under torch's RNG seeded with ``seed``.

    The caller's RNG state is untouched. Views are drawn first, in order, then the masks.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = [transform(image) for transform in spec.views]
        draw = spec.draw_mask or (lambda _: torch.rand(spec.num_patches).argsort())
        masks = [draw(None) for _ in range(spec.masks)]
    return views, masks


def random_masks(spec: BatchSpec, batch_size: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """``spec.masks`` masks ``[B, L]`` for a batch made outside the loader (bench, tests)."""
    if spec.draw_mask is None:
        return [
            torch.rand(batch_size, spec.num_patches, generator=generator).argsort(dim=1)
            for _ in range(spec.masks)
        ]
    return [torch.stack([spec.draw_mask(generator) for _ in range(batch_size)]) for _ in range(spec.masks)]


def stack_views(samples: Sequence[tuple[list[Tensor], list[Tensor]]]) -> tuple[list[Tensor], list[Tensor]]:
    """Per-sample ``(views, masks)`` -> batched ``([B, 3, S, S] per view], [[B, L] per mask])``."""
    views = [torch.stack(parts) for parts in zip(*(s[0] for s in samples), strict=True)]
    masks = [torch.stack(parts) for parts in zip(*(s[1] for s in samples), strict=True)]
    return views, masks
