"""Which patches masked image modelling hides: BEiT's blockwise masks (FaRL's) and uniformly random ones.

A drawer is a small picklable callable, ``drawer(generator) -> [L]`` bool (True = masked, patches in
row-major order), drawn from ``generator`` or, when it is ``None``, from torch's global RNG, which the data
pipeline seeds per sample (:func:`facerep.data.views.draw_sample`): a sample's mask is a function of its seed.

BEiT's rule (Bao et al., 2022; microsoft/unilm ``beit/masking_generator.py``), whose ``bool_masked_pos``
FaRL's MIM consumes: while fewer than ``count`` patches are masked, try up to ten times to place one
rectangle of ``area ~ U(min_block, remaining)`` patches and aspect ratio ``r = exp(U(log a, -log a))``
(``a`` = 0.3): height ``round(sqrt(area * r))``, width ``round(sqrt(area / r))``, each smaller than the grid
side, at a uniform position; it is kept when it adds between 1 and ``remaining`` new patches (it may
overlap earlier ones). A block that adds nothing in ten tries ends the mask, so a mask never holds more
than ``count`` patches and may hold fewer (on BEiT's 14 x 14 grid with 78: most draws reach 78, the mean
is about 77.5). On small grids ``min_block`` is capped at ``count`` and at ``(G - 1)^2``, the most a block
narrower than the grid holds (BEiT's 16 fits its 14 x 14 grid; the 4 x 4 grid of a 64 px ViT/16 masks 6).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor

MASKINGS = ("block", "random")
BEIT_ATTEMPTS = 10  # tries per block before BEiT's generator gives up

Rect = tuple[int, int, int, int]  # (top, left, height, width) in patches


def masked_count(num_patches: int, mask_ratio: float) -> int:
    """Patches to mask at ``mask_ratio``: ``round(mask_ratio * L)`` (FaRL's "about 40 %": 78 of 196)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return round(mask_ratio * num_patches)


def _python_rng(generator: torch.Generator | None) -> random.Random:
    """A Python RNG seeded by one draw from ``generator`` (torch's global RNG when ``None``)."""
    return random.Random(int(torch.randint(0, 2**62, (), generator=generator)))


@dataclass(frozen=True)
class BlockMasking:
    """BEiT's blockwise masks on a ``grid x grid`` patch grid (see the module docstring)."""

    grid: int
    count: int
    min_block: int = 16
    min_aspect: float = 0.3

    def __post_init__(self) -> None:
        if not 0 <= self.count <= self.grid**2 or self.min_block < 1 or not 0 < self.min_aspect <= 1:
            raise ValueError(
                f"block masking needs 0 <= count <= {self.grid**2}, min_block >= 1 and min_aspect in (0, 1], "
                f"got {self.count}, {self.min_block}, {self.min_aspect}"
            )

    @property
    def smallest_block(self) -> int:
        """``min_block`` capped at ``count`` and at ``(G - 1)^2`` (the largest block narrower than G)."""
        return max(1, min(self.min_block, self.count, (self.grid - 1) ** 2))

    def blocks(self, generator: torch.Generator | None = None) -> list[Rect]:
        """The rectangles a mask is made of, in the order they were placed."""
        rng, side = _python_rng(generator), self.grid
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        taken = torch.zeros(side, side, dtype=torch.bool)
        placed: list[Rect] = []
        masked = 0
        while masked < self.count:
            remaining = self.count - masked
            for _ in range(BEIT_ATTEMPTS):
                area = rng.uniform(self.smallest_block, remaining)
                ratio = math.exp(rng.uniform(*log_aspect))
                h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
                if h >= side or w >= side:
                    continue
                top, left = rng.randint(0, side - h), rng.randint(0, side - w)
                new = h * w - int(taken[top : top + h, left : left + w].sum())
                if 0 < new <= remaining:
                    taken[top : top + h, left : left + w] = True
                    placed.append((top, left, h, w))
                    masked += new
                    break
            else:
                break  # ten tries added nothing: BEiT ends the mask here
        return placed

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        """One mask ``[G*G]`` bool: the union of :meth:`blocks`."""
        mask = torch.zeros(self.grid, self.grid, dtype=torch.bool)
        for top, left, h, w in self.blocks(generator):
            mask[top : top + h, left : left + w] = True
        return mask.flatten()


@dataclass(frozen=True)
class RandomMasking:
    """``count`` of ``num_patches`` patches, uniformly at random (SimMIM / MAE style)."""

    num_patches: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.count <= self.num_patches:
            raise ValueError(f"random masking needs 0 <= count <= {self.num_patches}, got {self.count}")

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        """One mask ``[L]`` bool with exactly ``count`` patches set."""
        mask = torch.zeros(self.num_patches, dtype=torch.bool)
        mask[torch.rand(self.num_patches, generator=generator).argsort()[: self.count]] = True
        return mask
