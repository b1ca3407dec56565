"""FaRL, Facial Representation Learning (Zheng et al., CVPR 2022, arXiv 2112.03109): image-text contrast plus
masked image modelling, in one CLIP-style model whose image tower is facerep's ViT.

The image tower is built as FaRL's released ``VisualTransformer`` (``farl/network/farl/model.py``): ``ln_pre``
without a patch bias, QuickGELU, LayerNorm epsilon 1e-5, a learned position embedding and FaRL's
initialisation, so its exported ``visual.*`` keys are the ones FaRL's ``load_farl`` and facer expect. Per
batch of image-caption pairs, the image tower runs once on the clean images and once on the same images with
about ``farl.mask_ratio`` of their patch embeddings replaced by a mask token, in BEiT's blocks drawn by the
data pipeline (:mod:`facerep.data.masking`; ``farl.masking=random``: uniform patches), in one concatenated
pass as FaRL's code does:

* **image-text contrast** (``farl.itc_weight``): ``ln_post(CLS) @ proj`` of the clean pass against the text
  tower's EOT feature, CLIP's symmetric InfoNCE over the global batch with a learned, clamped logit scale
  (:func:`facerep.losses.clip.clip_contrastive_loss`, gathered with gradients across ranks);
* **masked image modelling** (``farl.mim_weight``): the masked pass's raw tokens through FaRL's small MIM
  transformer and head (:class:`facerep.models.mim.MIMHead`) predict the target of every masked patch:
  pixels by default, DALL-E dVAE tokens (the paper's) with ``farl.mim_target=dvae farl.dvae_weights=FILE``.

Captions come with the data (:mod:`facerep.data.captions`, sidecar ``.txt`` files, webdataset ``txt``). The
exported ``backbone.safetensors`` is the image tower; ``clip.safetensors`` holds both towers in OpenAI-CLIP
layout for :func:`facerep.load_clip` and ``facerep zeroshot``, plus the MIM head under FaRL's ``visual.``
names (``mask_token``, ``lm_transformer``, ``ln_lm``, ``lm_head``), as FaRL's released files do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from facerep.backbones import MaskedViT
from facerep.backbones.clip_layout import mim_to_clip
from facerep.backbones.vit import CLIP_TOWER
from facerep.config import ConfigError, DataConfig, PretrainConfig, check_choice, check_range
from facerep.data.masking import MASKINGS, BlockMasking, RandomMasking, masked_count
from facerep.data.transforms import build_pretrain_transform
from facerep.data.views import BatchSpec, MaskDrawer
from facerep.losses.clip import clip_contrastive_loss
from facerep.methods.base import PretrainMethod, Recipe, build_masked_encoder, register_method
from facerep.models.clip import CLIP_FILE, LOGIT_SCALE_MAX, CLIPModel, save_clip
from facerep.models.dvae import load_dvae
from facerep.models.mim import DVAETarget, MIMHead, PixelTarget
from facerep.models.text import TextArch

MIM_TARGETS = ("pixels", "dvae")


@dataclass
class TextConfig:
    """``text.*``: the text tower (CLIP layout, causal, BPE vocabulary of 49,408 tokens)."""

    width: int = 128  # recipe: 512
    layers: int = 3  # recipe: 12
    heads: int = 2  # recipe: 8
    context_length: int = 32  # recipe: 77
    embed_dim: int = 128  # joint image-text space; recipe: 512


@dataclass
class FaRLConfig:
    """``farl.*``: FaRL's two losses."""

    itc_weight: float = 1.0
    mim_weight: float = 1.0
    mask_ratio: float = 0.4  # round(mask_ratio * L) patches replaced by the mask token (BEiT: at most that)
    masking: str = "block"  # block (BEiT's blockwise masks, FaRL's) | random (uniform patches)
    mask_min_block: int = 16  # block: smallest block area in patches (BEiT; capped at (G-1)^2 on small grids)
    mask_min_aspect: float = 0.3  # block: block aspect ratios in [0.3, 1/0.3] (BEiT)
    mim_target: str = "pixels"  # pixels | dvae (the paper's; needs farl.dvae_weights)
    dvae_weights: str | None = None  # DALL-E dVAE encoder state dict (see facerep.models.dvae)
    mim_depth: int = 1  # blocks of the MIM transformer on top of the image tower
    norm_pix_loss: bool = True  # pixel target: per-patch normalised pixels (MAE's norm_pix_loss)
    local_loss: bool = False  # contrast only this rank's rows against the gathered batch (same gradient)
    init_logit_scale: float = 1 / 0.07  # CLIP's initial 1 / temperature

    def __post_init__(self) -> None:
        check_choice("farl.mim_target", self.mim_target, MIM_TARGETS)
        check_choice("farl.masking", self.masking, MASKINGS)
        check_range("farl.mask_ratio", self.mask_ratio, 0.0, 1.0, high_open=True)
        if self.mask_min_block < 1 or not 0 < self.mask_min_aspect <= 1:
            raise ConfigError(
                f"farl.mask_min_block must be >= 1 and farl.mask_min_aspect in (0, 1], "
                f"got {self.mask_min_block} and {self.mask_min_aspect}"
            )
        if self.itc_weight < 0 or self.mim_weight < 0 or self.itc_weight + self.mim_weight == 0:
            raise ConfigError(
                f"farl.itc_weight and farl.mim_weight must be >= 0 and not both 0, "
                f"got {self.itc_weight} and {self.mim_weight}"
            )
        if self.mim_target == "dvae" and not self.dvae_weights:
            raise ConfigError(
                "farl.mim_target=dvae needs farl.dvae_weights=FILE (DALL-E's dVAE encoder state dict); "
                "use farl.mim_target=pixels without it"
            )
        if not 1.0 <= self.init_logit_scale <= 100.0:
            raise ConfigError(f"farl.init_logit_scale must be in [1, 100], got {self.init_logit_scale}")


@register_method("farl", sections={"farl": FaRLConfig, "text": TextConfig})
class FaRL(PretrainMethod):
    """CLIP model + MIM head + MIM target (see the module docstring)."""

    # CLIP ViT-B/16's lr 5e-4 and betas, at batch 64 (blr 2e-3): FaRL's pre-norm tower is lr-sensitive
    # (docs/methods/farl.md)
    recipe = Recipe("adamw", blr=2e-3, weight_decay=0.05, betas=(0.9, 0.98))

    def __init__(
        self,
        clip: CLIPModel,
        mim_head: MIMHead | None,
        mim_target: nn.Module | None,
        farl: FaRLConfig,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        self.clip = clip
        self.encoder = clip.visual  # the exported backbone (the same module, registered under both names)
        self.mim_head, self.mim_target = mim_head, mim_target
        self.cfg, self.mean, self.std = farl, mean, std

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> FaRL:
        encoder = build_tower(cfg)
        clip = CLIPModel(encoder, TextArch(**asdict(cfg.text)))  # text.* are TextArch's fields
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(cfg.farl.init_logit_scale))
        head = target = None
        if cfg.farl.mim_weight > 0:
            target = build_mim_target(cfg, encoder)
            head = MIMHead(encoder.embed_dim, encoder.arch.num_heads, cfg.farl.mim_depth, target.out_dim)
        return cls(clip, head, target, cfg.farl, list(cfg.data.mean), list(cfg.data.std))

    def batch_spec(self, data: DataConfig) -> BatchSpec:
        """One view, one boolean patch mask (when MIM is on) and the tokenized caption per image."""
        return BatchSpec(
            (build_pretrain_transform(data),),
            masks=1 if self.mim_head is not None else 0,
            num_patches=self.encoder.num_patches,
            text=self.clip.tokenizer.encode,
            draw_mask=build_masking(self.cfg, self.encoder.arch.grid_size),
        )

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """``views[0]`` ``[N, 3, H, W]``, ``masks[0]`` ``[N, L]`` bool (True masked), ``texts`` ``[N, T]``."""
        (images,) = batch["views"]
        n = images.shape[0]
        itc_on = self.cfg.itc_weight > 0
        terms: dict[str, Tensor] = {}
        loss = images.new_zeros(())
        if self.mim_head is None:
            cls = self.encoder.forward_features(images)[:, :1]
        else:
            (masked,) = batch["masks"]
            # the clean images ride along in the same pass when the contrast needs them
            replace = torch.cat([torch.zeros_like(masked), masked]) if itc_on else masked
            tokens = self.encoder.forward_replaced(
                torch.cat([images, images]) if itc_on else images, replace, self.mim_head.mask_token
            )
            mim = self.mim_target(self.mim_head(tokens[-n:]), images, masked)
            loss = loss + self.cfg.mim_weight * mim
            terms["mim"] = mim.detach()
            cls = self.encoder.norm(tokens[:n, :1])
        if itc_on:
            scale = self.clip.logit_scale_value()
            image_emb = self.clip.project_image(cls)
            text_emb = self.clip.encode_text(batch["texts"])
            itc = clip_contrastive_loss(image_emb, text_emb, scale, local_loss=self.cfg.local_loss)
            loss = loss + self.cfg.itc_weight * itc
            terms["itc"] = itc.detach()
            terms["logit_scale"] = scale.detach()
        return loss, terms

    @torch.no_grad()
    def on_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """CLIP's clamp of the learned logit scale to ``[0, ln 100]`` after every update."""
        self.clip.logit_scale.clamp_(0.0, math.log(LOGIT_SCALE_MAX))
        return {}

    def export(self, output_dir: Path) -> Path:
        """Write both towers and the MIM head to ``output_dir/clip.safetensors`` (with the normalisation the
        run used)."""
        mim = None if self.mim_head is None else mim_to_clip(self.mim_head.state_dict())
        extra = {"mean": self.mean, "std": self.std}
        return save_clip(self.clip, output_dir / CLIP_FILE, extra=extra, mim_head=mim)


def build_tower(cfg: PretrainConfig) -> MaskedViT:
    """FaRL's image tower: ``model.arch`` in the layout of FaRL's ``VisualTransformer`` (:data:`CLIP_TOWER`,
    FaRL's initialisation), or ``model.init``'s tower as stored; a non-ViT arch gets the masked methods'
    one-line error."""
    return build_masked_encoder(cfg, CLIP_TOWER if cfg.model.arch.startswith("vit_") else None)


def build_masking(farl: FaRLConfig, grid: int) -> MaskDrawer:
    """The drawer of ``farl.masking`` masks on a ``grid x grid`` patch grid."""
    count = masked_count(grid * grid, farl.mask_ratio)
    if farl.masking == "random":
        return RandomMasking(grid * grid, count)
    return BlockMasking(grid, count, farl.mask_min_block, farl.mask_min_aspect)


def build_mim_target(cfg: PretrainConfig, encoder: MaskedViT) -> nn.Module:
    """The MIM target ``cfg.farl.mim_target`` names, for ``encoder``'s patch grid."""
    if cfg.farl.mim_target == "dvae":
        dvae = load_dvae(cfg.farl.dvae_weights)
        return DVAETarget(dvae, encoder.arch.grid_size, cfg.data.mean, cfg.data.std)
    return PixelTarget(encoder.arch.patch_size, cfg.farl.norm_pix_loss)
