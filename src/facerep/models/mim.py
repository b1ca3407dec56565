"""FaRL's masked-image-modelling head and its pluggable targets.

FaRL (like BEiT) swaps the embeddings of masked patches for a learned ``mask_token``, runs the image tower
on the full-length sequence, then a small transformer ("lm_transformer": CLIP's pre-norm blocks with
QuickGELU and LayerNorm epsilon 1e-5), a LayerNorm ("ln_lm") and a linear head ("lm_head") predict a target
for every masked patch (:func:`facerep.backbones.clip_layout.mim_to_clip` gives the weights FaRL's names).
The paper's target is the patch's token from DALL-E's dVAE (vocabulary 8192, cross-entropy); those weights
cannot be downloaded here, so the target is pluggable:

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
from timm.layers import LayerNorm, QuickGELU
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from facerep.backbones.vit import CLIP_TOWER, farl_init_
from facerep.losses.pixel import masked_pixel_loss
from facerep.models.dvae import DVAEEncoder
from facerep.models.patches import patchify


class MIMHead(nn.Module):
    """``mask_token`` ``[D]`` plus ``depth`` transformer blocks, LayerNorm and Linear: ``[N, 1 + L, D]`` raw
    image-tower tokens of a masked image -> ``[N, L, P]`` predictions (CLS dropped after the blocks).

    As FaRL's release (``farl/network/farl/model.py``: ``lm_transformer``, ``ln_lm``, ``lm_head``): the
    blocks are CLIP's (pre-norm, QuickGELU, LayerNorm epsilon 1e-5), the layers get FaRL's initialisation
    (:func:`~facerep.backbones.vit.farl_init_`) and the mask token ``width**-0.5`` times a standard normal.
    """

    def __init__(self, dim: int, num_heads: int, depth: int, out_dim: int) -> None:
        super().__init__()
        norm = partial(LayerNorm, eps=CLIP_TOWER["norm_eps"])
        self.mask_token = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.blocks = nn.Sequential(*[
            Block(dim, num_heads, qkv_bias=True, norm_layer=norm, act_layer=QuickGELU) for _ in range(depth)
        ])  # fmt: skip
        self.norm = norm(dim)
        self.head = nn.Linear(dim, out_dim)
        farl_init_(self)

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
