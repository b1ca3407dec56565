"""MAE (He et al., 2022): reconstruct the pixels of masked patches. facerep's baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from facerep.losses.pixel import masked_pixel_loss
from facerep.methods.base import PretrainMethod, build_encoder, register_method
from facerep.models.decoder import MAEDecoder
from facerep.models.patches import patchify
from facerep.models.vit import MaskedViT

if TYPE_CHECKING:
    from facerep.config import PretrainConfig


@register_method("mae")
class MAE(PretrainMethod):
    """Masked encoder + MAE decoder + masked pixel MSE."""

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
        encoder = build_encoder(cfg)
        return cls(encoder, build_decoder(cfg, encoder), cfg.mae.mask_ratio, cfg.mae.norm_pix_loss)

    def forward(
        self, images: torch.Tensor, ids_shuffle: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for ``images [N, 3, H, W]``; ``ids_shuffle [N, L]`` optionally fixes the mask."""
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
