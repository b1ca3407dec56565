"""MAE (He et al., 2022): reconstruct the pixels of masked patches. facerep's baseline.

As MAE's code (timm 0.3.2's ``add_weight_decay`` with no skip list), every tensor of two or more dimensions is
weight-decayed, the encoder's ``cls_token`` and the decoder's ``mask_token`` included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from facerep.backbones import MaskedViT
from facerep.config import DataConfig, PretrainConfig, check_range
from facerep.data.transforms import build_pretrain_transform
from facerep.data.views import BatchSpec
from facerep.losses.pixel import masked_pixel_loss
from facerep.methods.base import PretrainMethod, Recipe, build_masked_encoder, register_method
from facerep.models.decoder import MAEDecoder
from facerep.models.patches import patchify
from facerep.runtime.optim import ExclusionRule, mae_excluded


@dataclass
class MAEConfig:
    """``mae.*``: MAE's masking and loss."""

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True  # MAE's recipe: per-patch normalised pixel targets

    def __post_init__(self) -> None:
        check_range("mae.mask_ratio", self.mask_ratio, 0.0, 1.0, high_open=True)


@dataclass
class DecoderConfig:
    """``decoder.*``: the MAE decoder predicting the pixels of every patch (MAE and MCF)."""

    embed_dim: int = 128  # recipe: 512
    depth: int = 2  # recipe: 8
    num_heads: int = 4  # recipe: 16


@register_method("mae", sections={"mae": MAEConfig, "decoder": DecoderConfig})
class MAE(PretrainMethod):
    """Masked encoder + MAE decoder + masked pixel MSE."""

    recipe = Recipe("adamw", blr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))  # MAE's pre-training recipe

    def __init__(
        self, encoder: MaskedViT, decoder: MAEDecoder, mask_ratio: float, norm_pix_loss: bool
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> MAE:
        encoder = build_masked_encoder(cfg)
        return cls(encoder, build_decoder(cfg, encoder), cfg.mae.mask_ratio, cfg.mae.norm_pix_loss)

    def decay_exclusion(self) -> ExclusionRule:
        return mae_excluded

    def batch_spec(self, data: DataConfig) -> BatchSpec:
        """One view and one patch order per image."""
        return BatchSpec((build_pretrain_transform(data),), masks=1, num_patches=self.encoder.num_patches)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pixel loss of ``batch["views"][0]`` ``[N, 3, H, W]`` masked by ``batch["masks"][0]`` ``[N, L]``."""
        (images,), (ids_shuffle,) = batch["views"], batch["masks"]
        latent, mask, ids_restore = self.encoder.forward_masked(images, self.mask_ratio, ids_shuffle)
        pred = self.decoder(latent, ids_restore)
        target = patchify(images, self.encoder.arch.patch_size)
        loss = masked_pixel_loss(pred, target, mask, self.norm_pix_loss)
        return loss, {"pixel": loss.detach()}


def build_decoder(cfg: PretrainConfig, encoder: MaskedViT) -> MAEDecoder:
    """The MAE decoder configured by ``cfg.decoder`` for ``encoder``'s grid and width."""
    return MAEDecoder(
        num_patches=encoder.num_patches,
        patch_size=encoder.arch.patch_size,
        encoder_dim=encoder.embed_dim,
        embed_dim=cfg.decoder.embed_dim,
        depth=cfg.decoder.depth,
        num_heads=cfg.decoder.num_heads,
    )
