"""FRA's expression-recognition augmentation (zaczgao/Facial_Region_Awareness ``main_fer.py``) as
torchvision v2 transforms on PIL images: for the same global seed the output equals FRA's
``torchvision.transforms`` chain bit for bit (v2 draws its parameters in v1's order and runs the same PIL
kernels).

Train: ``Resize([S, S])`` (PIL bilinear), ``RandomHorizontalFlip`` (``hflip_prob``; FRA 0.5), ``ColorJitter``
(brightness, contrast and saturation 0.5) with p 0.5, ``RandomAffine(0, translate=(0.2, 0.2))`` with p 0.5
and ``RandomRotation(10)`` with p 0.5 (both nearest-neighbour, black fill), ``ToTensor``,
``Normalize(mean, std)``, ``RandomErasing()`` (p 0.5, 2-33 % of the area, aspect 0.3-3.3, value 0: the mean
colour once normalised). Test: ``Resize``, ``ToTensor``, ``Normalize``. Nothing here moves landmarks: it is
for classification.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

FRA_JITTER = 0.5  # ColorJitter brightness, contrast and saturation (no hue)
FRA_TRANSLATE = 0.2  # RandomAffine's largest shift, a fraction of the side on each axis
FRA_ROTATE = 10.0  # RandomRotation: degrees, uniform in [-10, 10]
FRA_APPLY_PROB = 0.5  # RandomApply of each of the jitter, the translation and the rotation


def to_pil(image: np.ndarray) -> Image.Image:
    """A dataset's ``[H, W, 3]`` (or grey ``[H, W]`` / ``[H, W, 1]``) uint8 array as an RGB PIL image."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def to_unit_float(image: Image.Image) -> Tensor:
    """PIL -> float32 ``[3, H, W]`` in ``[0, 1]`` with ``ToTensor``'s arithmetic (``x / 255``;
    ``v2.ToDtype(scale=True)`` multiplies by ``1 / 255``, one ulp away)."""
    return F.pil_to_tensor(image).float().div(255)


def fra_chain(image_size: int, train: bool, cfg: Any) -> v2.Compose:
    """FRA's train (``train=True``) or test chain at ``image_size``; ``cfg`` gives ``hflip_prob``, ``mean``
    and ``std`` (an :class:`~facerep.data.downstream.transforms.AugmentConfig`)."""
    normalize = v2.Normalize(mean=[float(v) for v in cfg.mean], std=[float(v) for v in cfg.std])
    resize = v2.Resize([image_size, image_size])
    if not train:
        return v2.Compose([resize, to_unit_float, normalize])
    return v2.Compose(
        [
            resize,
            v2.RandomHorizontalFlip(float(cfg.hflip_prob)),
            v2.RandomApply(
                [v2.ColorJitter(brightness=FRA_JITTER, contrast=FRA_JITTER, saturation=FRA_JITTER)],
                p=FRA_APPLY_PROB,
            ),
            v2.RandomApply([v2.RandomAffine(0, translate=(FRA_TRANSLATE, FRA_TRANSLATE))], p=FRA_APPLY_PROB),
            v2.RandomApply([v2.RandomRotation(FRA_ROTATE)], p=FRA_APPLY_PROB),
            to_unit_float,
            normalize,
            v2.RandomErasing(),
        ]
    )


def run_seeded(chain: v2.Compose, image: Image.Image, generator: torch.Generator | None) -> Tensor:
    """``chain(image)``; torchvision draws from the global RNG, so with a ``generator`` the global RNG is
    forked and seeded from it: the draws follow the generator and the global stream is left as it was."""
    if generator is None:
        return chain(image)
    seed = int(torch.randint(2**63 - 1, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return chain(image)
