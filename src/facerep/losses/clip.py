"""CLIP's image-text contrastive loss (symmetric InfoNCE over the global batch), as FaRL trains with it.

Both towers are trained, so features from other ranks must carry gradients back to the rank that
computed them: they are gathered with :func:`~facerep.runtime.distributed.all_gather_with_grad`, whose
backward sums every rank's gradient into the owner's slice. With DDP averaging parameter gradients over
``W`` ranks, the update equals the gradient of the loss of the whole global batch, in both modes:

* ``local_loss=False``: every rank scores the full ``[W*N, W*N]`` logit matrix (the same loss everywhere);
* ``local_loss=True`` (open_clip's option): each rank scores only its own ``N`` rows and columns against the
  ``W*N`` gathered ones, ``[N, W*N]`` twice; less compute and memory, the same gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facerep.runtime.distributed import all_gather_with_grad, rank


def clip_contrastive_loss(
    image: Tensor, text: Tensor, logit_scale: Tensor | float, *, gather: bool = True, local_loss: bool = False
) -> Tensor:
    """``(CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2`` over the global batch.

    Image ``i`` of rank ``r`` is the positive of text ``r * N + i`` and of no other; every other text (image)
    of the global batch is a negative.

    Args:
        image: ``[N, E]`` image embeddings of this rank (any scale; L2-normalised here).
        text: ``[N, E]`` text embeddings of the same pairs.
        logit_scale: the multiplier ``s`` (already exponentiated; CLIP clamps it at 100).
        gather: gather both sides from all ranks (with gradients) when running distributed.
        local_loss: score only this rank's rows (see the module docstring).
    Returns:
        scalar loss.
    """
    if image.ndim != 2 or image.shape != text.shape:
        shapes = f"{list(image.shape)} and {list(text.shape)}"
        raise ValueError(f"image and text must both be [N, E], got {shapes}")
    img = F.normalize(image.float(), dim=1)
    txt = F.normalize(text.float(), dim=1)
    n = img.shape[0]
    all_img = all_gather_with_grad(img) if gather else img
    all_txt = all_gather_with_grad(txt) if gather else txt
    if local_loss or all_img.shape[0] == n:
        per_image = logit_scale * img @ all_txt.T  # [N, W*N]
        per_text = logit_scale * txt @ all_img.T
        labels = torch.arange(n, device=img.device) + (rank() * n if all_img.shape[0] != n else 0)
    else:
        per_image = logit_scale * all_img @ all_txt.T  # [W*N, W*N]
        per_text = per_image.T
        labels = torch.arange(all_img.shape[0], device=img.device)
    return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
