"""BYOL, Bootstrap Your Own Latent (Grill et al., NeurIPS 2020): FRA's global-only baseline.

An online network (backbone -> projector -> predictor) regresses the momentum network's projection of
another augmented view of the same image; both views go both ways (``loss = L(1->2) + L(2->1)``, each
``2 - 2 cos``). The momentum network follows the online one by EMA once per optimizer step, with the
momentum rising ``byol.momentum -> 1`` on a cosine. The two views come from BYOL's asymmetric
augmentation (:class:`facerep.data.transforms.BYOLAugment`), drawn by the data pipeline.

As FRA's code trains it: the MLP heads start from FRA's ``MLP1D`` initialisation (kaiming-normal, fan_out),
every BatchNorm normalises over all processes (FRA's ``--norm SyncBN``, BYOL's cross-replica BatchNorm), and
biases and BatchNorm parameters get neither weight decay nor LARS's trust ratio (BYOL's rule; every other
tensor gets both).

Subclasses (FRA) replace the projector by a richer head through :meth:`BYOL.represent` and add terms in
:meth:`BYOL.loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from facerep.config import DataConfig, PretrainConfig, check_range
from facerep.data.transforms import BYOLAugment
from facerep.data.views import BatchSpec
from facerep.losses.byol import byol_loss
from facerep.methods.base import MomentumMethod, Recipe, build_encoder, register_method
from facerep.models.heads import mlp_head
from facerep.runtime.schedules import Schedule

Embeddings = dict[str, Tensor]


@dataclass
class BYOLConfig:
    """``byol.*``: heads, momentum and the two views' augmentation (FRA's values by default).

    ``blur`` and ``solarize`` are the probabilities for view 1 and view 2 (BYOL's asymmetry);
    ``crop_scale`` is the random-resized-crop area range (FRA: 0.2-1; BYOL's paper: 0.08-1);
    ``blur_sigma`` is in pixels (FRA: 0.1-2 at 224 px); ``color_jitter`` and ``grayscale`` are the
    probabilities of BYOL's colour jitter and grayscale, both views.
    """

    proj_dim: int = 256
    hidden_dim: int = 4096
    momentum: float = 0.996  # -> 1 on a cosine over the run
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    blur: list[float] = field(default_factory=lambda: [1.0, 0.1])
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    solarize: list[float] = field(default_factory=lambda: [0.0, 0.2])
    color_jitter: float = 0.8
    grayscale: float = 0.2

    def __post_init__(self) -> None:
        check_range("byol.momentum", self.momentum, 0.0, 1.0)
        for key in ("crop_scale", "blur", "blur_sigma", "solarize"):
            if len(getattr(self, key)) != 2:
                raise ValueError(f"byol.{key} needs two values, got {getattr(self, key)}")
        for p in (*self.blur, *self.solarize):
            check_range("byol.blur/solarize probability", p, 0.0, 1.0)
        check_range("byol.color_jitter", self.color_jitter, 0.0, 1.0)
        check_range("byol.grayscale", self.grayscale, 0.0, 1.0)


def byol_views(data: DataConfig, cfg: BYOLConfig) -> BatchSpec:
    """The two asymmetric views of :class:`BYOLConfig`, at ``data.image_size`` with ``data``'s mean/std."""
    views = tuple(
        BYOLAugment(
            data.image_size, list(data.mean), list(data.std), crop_scale=tuple(cfg.crop_scale),
            hflip=data.hflip, blur=cfg.blur[i], blur_sigma=tuple(cfg.blur_sigma), solarize=cfg.solarize[i],
            color_jitter=cfg.color_jitter, grayscale=cfg.grayscale,
        )
        for i in range(2)
    )  # fmt: skip
    return BatchSpec(views)


@register_method("byol", sections={"byol": BYOLConfig})
class BYOL(MomentumMethod):
    """Online ``encoder`` + ``head`` + ``predictor``; momentum ``target_encoder`` + ``target_head``."""

    sync_batchnorm = True
    batch_statistics = "BatchNorm"
    recipe = Recipe("lars", blr=0.2, weight_decay=1.5e-6)  # BYOL's: lr 0.2 x batch / 256

    def __init__(self, encoder: nn.Module, head: nn.Module, cfg: BYOLConfig) -> None:
        super().__init__(Schedule(cfg.momentum, 1.0))
        self.cfg = cfg
        self.encoder = encoder
        self.head = head
        self.predictor = mlp_head(cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim, last_bn=False, init="kaiming")
        self.target_encoder = self.momentum_copy(encoder)
        self.target_head = self.momentum_copy(head)

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> BYOL:
        encoder = build_encoder(cfg)
        b = cfg.byol
        head = mlp_head(encoder.feature_dim, b.hidden_dim, b.proj_dim, last_bn=False, init="kaiming")
        return cls(encoder, head, b)

    def batch_spec(self, data: DataConfig) -> BatchSpec:
        return byol_views(data, self.cfg)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.head, self.target_head)]

    def represent(self, encoder: nn.Module, head: nn.Module, images: Tensor) -> Embeddings:
        """``images [B, 3, S, S]`` -> ``{"global": [B, D]}`` (projected pooled features)."""
        return {"global": head(encoder.pooled(images))}

    def global_loss(self, online: list[Embeddings], target: list[Embeddings]) -> Tensor:
        """``L(1->2) + L(2->1)``: each view's prediction against the other view's momentum projection."""
        return sum(
            byol_loss(self.predictor(o["global"]), t["global"])
            for o, t in zip(online, reversed(target), strict=True)
        )

    def loss(self, online: list[Embeddings], target: list[Embeddings]) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.global_loss(online, target)
        return loss, {"byol": loss.detach()}

    def embed(self, views: list[Tensor]) -> tuple[list[Embeddings], list[Embeddings]]:
        """Each view's online embeddings (with gradient) and momentum embeddings (without)."""
        online = [self.represent(self.encoder, self.head, v) for v in views]
        with torch.no_grad():
            target = [self.represent(self.target_encoder, self.target_head, v) for v in views]
        return online, target

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss(*self.embed(batch["views"]))
