"""FaRL's masked-image-modelling head and its pluggable targets.

FaRL (like BEiT) swaps the embeddings of masked patches for a learned ``mask_token``, runs the image tower
on the full-length sequence, then a small transformer ("lm_transformer"), a LayerNorm and a linear head
predict a target for every masked patch. The paper's target is the patch's token from DALL-E's dVAE
(vocabulary 8192, cross-entropy); those weights cannot be downloaded here, so the target is pluggable:

* ``pixels`` (default, runs anywhere): the patch's pixels, mean squared error (SimMIM / MAE style, optionally
  per-patch normalised as MAE's ``norm_pix_loss``);
* ``dvae``: the dVAE tokens of the image resized to ``8 x`` the patch grid (112 px for a 224 px ViT/16, as
  BEiT), from user-supplied encoder weights (:func:`facerep.models.dvae.load_dvae`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from facerep.losses.pixel import masked_pixel_loss
from facerep.models.dvae import DVAEEncoder
from facerep.models.patches import patchify


class MIMHead(nn.Module):
    """``mask_token`` ``[D]`` plus ``depth`` transformer blocks, LayerNorm and Linear: ``[N, 1 + L, D]`` raw
    image-tower tokens of a masked image -> ``[N, L, P]`` predictions (CLS dropped after the blocks)."""

    def __init__(self, dim: int, num_heads: int, depth: int, out_dim: int) -> None:
        super().__init__()
        norm = partial(LayerNorm, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        self.norm = norm(dim)
        self.head = nn.Linear(dim, out_dim)
        trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(tokens)[:, 1:]))


class PixelTarget(nn.Module):
    """Pixels of each masked patch of the (normalised) input view; MSE over masked patches."""

    name = "pixels"

    def __init__(self, patch_size: int, norm_pix: bool) -> None:
        super().__init__()
        self.patch_size, self.norm_pix = patch_size, norm_pix
        self.out_dim = 3 * patch_size**2

    def forward(self, pred: Tensor, images: Tensor, masked: Tensor) -> Tensor:
        """``pred`` ``[N, L, P]``, ``images`` ``[N, 3, H, W]``, ``masked`` ``[N, L]`` bool -> scalar loss."""
        return masked_pixel_loss(pred, patchify(images, self.patch_size), masked.float(), self.norm_pix)


class DVAETarget(nn.Module):
    """dVAE token of each masked patch (the paper's target); cross-entropy over masked patches.

    The view is un-normalised with the data pipeline's ``mean``/``std`` to ``[0, 1]`` and resized (bilinear,
    antialiased) so that the dVAE's ``8 x`` downsampling gives exactly the ViT's ``G x G`` patch grid.
    """

    name = "dvae"

    def __init__(self, dvae: DVAEEncoder, grid: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.dvae, self.grid = dvae, grid
        self.out_dim = dvae.vocab_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def tokens(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` normalised views -> dVAE token ids ``[N, G*G]``."""
        x01 = (images.float() * self.std + self.mean).clamp(0.0, 1.0)
        size = self.grid * self.dvae.downsample
        x01 = F.interpolate(x01, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.dvae.tokens(x01)

    def forward(self, pred: Tensor, images: Tensor, masked: Tensor) -> Tensor:
        """``pred`` ``[N, L, V]`` logits, ``images`` ``[N, 3, H, W]``, ``masked`` ``[N, L]`` bool -> loss."""
        target = self.tokens(images)
        return F.cross_entropy(pred[masked].float(), target[masked])
