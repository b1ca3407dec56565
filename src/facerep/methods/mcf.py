"""MCF, Mask Contrastive Face (Wang et al., ACM MM 2023, arXiv 2309.03575).

Two signals train one masked ViT encoder:

* **feature reconstruction**: the MAE decoder's output, un-patchified into an image, and the input
  image both go through a frozen pre-trained teacher ViT; the loss matches their L2-normalised token
  features at a few blocks (the whole image, not only the masked patches; no pixel loss);
* **contrast**: a momentum copy of the encoder sees the same image under an *independent* random
  mask; the online CLS token, through projector and predictor, must identify its momentum key among
  all keys of the global batch (InfoNCE, MoCo v3 heads).

``loss = feature_weight * feature_loss + contrastive_weight * infonce``.

Unlike the reference code, the momentum update runs once per optimizer step (not per micro-batch),
its schedule is configurable, and one process runs without ``torch.distributed``.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from facerep.losses.feature_distill import feature_distill_loss
from facerep.losses.infonce import infonce_loss
from facerep.methods.base import PretrainMethod, arch_overrides, build_encoder, register_method
from facerep.methods.mae import build_decoder
from facerep.models.decoder import MAEDecoder
from facerep.models.ema import ema_update_
from facerep.models.heads import mlp_head
from facerep.models.patches import unpatchify
from facerep.models.vit import MaskedViT, build_vit, random_keep_order

if TYPE_CHECKING:
    from facerep.config import MCFConfig, PretrainConfig


def default_teacher_blocks(depth: int, count: int = 4) -> list[int]:
    """``count`` block indices spread evenly and ending at the last block: ``[2, 5, 8, 11]`` for 12."""
    return sorted({max(0, round((i + 1) * depth / count) - 1) for i in range(count)})


def momentum_at(step: int, total_steps: int, base: float, end: float, schedule: str) -> float:
    """EMA momentum after ``step`` optimizer steps: constant ``base``, or cosine from ``base`` to ``end``."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        return end - (end - base) * (math.cos(math.pi * progress) + 1) / 2
    raise ValueError(f"mcf.momentum_schedule must be 'constant' or 'cosine', got {schedule!r}")


class FrozenTeacher(nn.Module):
    """A pre-trained ViT that is never trained: eval mode, no parameter gradients.

    Gradients still flow *through* it to its input (the reconstruction).
    """

    def __init__(self, backbone: MaskedViT, blocks: list[int], norm_axis: str) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.blocks = blocks
        self.norm_axis = norm_axis
        self.img_size = backbone.arch.img_size

    def train(self, mode: bool = True) -> FrozenTeacher:  # stays in eval mode
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[N, 3, H, W]`` -> per block ``[N, 1 + L, D]`` (images resized to the teacher's size first)."""
        if images.shape[-1] != self.img_size or images.shape[-2] != self.img_size:
            images = F.interpolate(
                images, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
            )
        return self.backbone.forward_block_tokens(images, self.blocks)

    def loss(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Feature loss between the teacher's view of the reconstruction and of the input."""
        with torch.no_grad():
            target = self.features(images)
        return feature_distill_loss(self.features(reconstruction), target, self.norm_axis)


@register_method("mcf")
class MCF(PretrainMethod):
    """Masked encoder + MAE decoder + frozen teacher feature loss + momentum contrast."""

    def __init__(
        self, encoder: MaskedViT, decoder: MAEDecoder, teacher: FrozenTeacher, cfg: MCFConfig
    ) -> None:
        super().__init__()
        if not 0.0 <= cfg.momentum <= 1.0:
            raise ValueError(f"mcf.momentum must be in [0, 1], got {cfg.momentum}")
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = decoder
        self.teacher = teacher
        self.projector = mlp_head(encoder.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = mlp_head(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim, last_bn=False)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = cfg.momentum

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> MCF:
        encoder = build_encoder(cfg)
        return cls(encoder, build_decoder(cfg, encoder), build_teacher(cfg), cfg.mcf)

    def fixed_masks(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return super().fixed_masks(images, generator), super().fixed_masks(images, generator)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs updated by EMA."""
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def _query(self, images: torch.Tensor, ids_shuffle: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latent, _, ids_restore = self.encoder.forward_masked(images, self.cfg.mask_ratio, ids_shuffle)
        return latent, ids_restore, self.predictor(self.projector(latent[:, 0]))

    @torch.no_grad()
    def _key(self, images: torch.Tensor, ids_shuffle: torch.Tensor) -> torch.Tensor:
        latent = self.target_encoder.forward_masked(images, self.cfg.mask_ratio, ids_shuffle)[0]
        return self.target_projector(latent[:, 0])

    def forward(
        self, images: torch.Tensor, ids_shuffle: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss for ``images [N, 3, H, W]``.

        ``ids_shuffle`` optionally fixes the (online, momentum) patch permutations ``[N, L]`` each;
        by default both are drawn independently.
        """
        n, length = images.shape[0], self.encoder.num_patches
        if ids_shuffle is None:
            ids_shuffle = (
                random_keep_order(n, length, images.device),
                random_keep_order(n, length, images.device),
            )
        online_ids, target_ids = ids_shuffle
        latent, ids_restore, query = self._query(images, online_ids)

        reconstruction = unpatchify(self.decoder(latent, ids_restore), self.encoder.arch.patch_size)
        feature = self.teacher.loss(reconstruction, images)

        contrast = infonce_loss(query, self._key(images, target_ids), self.cfg.temperature)
        if self.cfg.symmetric:
            query_2 = self._query(images, target_ids)[2]
            contrast = contrast + infonce_loss(query_2, self._key(images, online_ids), self.cfg.temperature)
        loss = self.cfg.feature_weight * feature + self.cfg.contrastive_weight * contrast
        return loss, {"feature": feature.detach(), "contrastive": contrast.detach()}

    @torch.no_grad()
    def on_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """EMA update ``target = m * target + (1 - m) * online`` with ``m`` at this step."""
        cfg = self.cfg
        self.momentum = momentum_at(step, total_steps, cfg.momentum, cfg.momentum_end, cfg.momentum_schedule)
        for online, target in self.momentum_pairs():
            ema_update_(target, online, self.momentum)
        return {"momentum": self.momentum}


def build_teacher(cfg: PretrainConfig) -> FrozenTeacher:
    """The frozen teacher named by ``cfg.teacher.checkpoint`` (a file, or ``random`` for tests)."""
    tcfg = cfg.teacher
    if not tcfg.checkpoint:
        raise ValueError("method=mcf needs teacher.checkpoint: a pre-trained ViT file, or mae_stage")
    if tcfg.checkpoint == "mae_stage":
        raise ValueError(
            "teacher.checkpoint=mae_stage is resolved by facerep.engine.pretrain before building MCF"
        )
    if tcfg.checkpoint == "random":
        overrides = {} if tcfg.arch else arch_overrides(cfg.model)
        backbone = build_vit(tcfg.arch or cfg.model.arch, img_size=cfg.data.image_size, **overrides)
    else:
        from facerep.checkpoints import load_backbone

        backbone = load_backbone(tcfg.checkpoint)
    blocks = tcfg.blocks if tcfg.blocks is not None else default_teacher_blocks(len(backbone.blocks))
    return FrozenTeacher(backbone, list(blocks), tcfg.norm_axis)
