"""FRA, Facial Region Awareness (Gao & Patras, CVPR 2024, arXiv 2403.02138; zaczgao/Facial_Region_Awareness).

BYOL (:mod:`facerep.methods.byol`) on a CNN plus consistency of *facial regions*: a region neck
(:class:`facerep.models.regions.RegionNeck`) turns the last feature map into ``Q`` (8) heatmaps and
heatmap-pooled region embeddings, on the online and the momentum network alike. Per optimizer step,
with views 1 and 2 (every term in the reference code's ``FRAB.forward``):

* **global**: BYOL between the views' pooled embeddings, ``L_g = byol(1->2) + byol(2->1)``;
* **regions**: for each direction, each region's online prediction (an MLP per region) against the same
  query's momentum embedding of the other view, plus ``decorrelation_weight`` (0.02) times the squared
  cosine to the *other* queries (:func:`facerep.losses.byol.region_consistency_loss`); ``L_r`` sums the
  two directions;
* **cluster**: the deep-clustering term that learns the mask embeddings: every pixel's online scores
  over the ``Q`` embeddings predict the momentum network's Sinkhorn-balanced, sharpened scores of the
  SAME view (temperatures 0.1 / 0.04, 3 iterations), plus a mean-entropy term
  (:func:`facerep.losses.clustering.cluster_assignment_loss`); ``L_c`` averages the two views.

``loss = global_weight * L_g + (1 - global_weight) * L_r + cluster_weight * L_c`` with
``global_weight = 0.5`` and ``cluster_weight = 0.1`` (the paper's command line).

The optimizer groups follow FRA's ``collect_params``: only parameters whose name contains ``bn``,
``downsample.1`` or ``bias`` (the backbone's BatchNorms, every bias) escape weight decay and LARS's trust
ratio; the neck's BatchNorm and LayerNorm weights and the query embeddings are decayed and adapted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerep.backbones.resnet import ResNet
from facerep.config import ConfigError, PretrainConfig, check_choice, check_range
from facerep.losses.byol import region_consistency_loss
from facerep.losses.clustering import cluster_assignment_loss
from facerep.methods.base import Recipe, build_encoder, register_method
from facerep.methods.byol import BYOL, BYOLConfig, Embeddings
from facerep.models.heads import mlp_head
from facerep.models.regions import QUERY_INITS, RegionNeck, pointwise
from facerep.runtime.optim import ExclusionRule, fra_excluded


@dataclass
class FRAConfig:
    """``fra.*``: the region branch (FRA's code defaults; its paper command sets ``num_regions=8``,
    ``teacher_temp=0.04``, ``cluster_weight=0.1``, ``global_weight=0.5``)."""

    num_regions: int = 8  # learned mask queries (heatmaps)
    global_weight: float = 0.5  # global BYOL term; the region term gets 1 - global_weight
    decorrelation_weight: float = 0.02
    cluster_weight: float = 0.1
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    sinkhorn_iterations: int = 3
    mean_entropy_weight: float = 1.0
    decoder_layers: int = 2
    decoder_heads: int = 8
    decoder_dropout: float = 0.1
    # zeros: FRA's DETR decoder; learned: Mask2Former's learned query features (docs/methods/fra.md)
    query_init: str = "zeros"
    proto_momentum: float = 0.9  # EMA of the batch mask embeddings, used at inference
    heatmap_scale: float = 1.0  # softmax temperature of the heatmaps
    # side of the square crop of each view that the momentum network scores for the clustering term, a
    # fraction drawn uniformly from [min, max]; [1, 1] is FRA's (the view itself). Below 1 a split of the
    # frame by position no longer predicts the target (docs/methods/fra.md#a-zoomed-clustering-target)
    cluster_zoom: list[float] = field(default_factory=lambda: [1.0, 1.0])

    def __post_init__(self) -> None:
        if self.num_regions < 2:
            raise ConfigError(f"fra.num_regions must be >= 2, got {self.num_regions}")
        check_range("fra.global_weight", self.global_weight, 0.0, 1.0)
        check_range("fra.proto_momentum", self.proto_momentum, 0.0, 1.0)
        check_choice("fra.query_init", self.query_init, QUERY_INITS)
        if min(self.student_temp, self.teacher_temp, self.heatmap_scale) <= 0:
            raise ConfigError("fra.student_temp, fra.teacher_temp and fra.heatmap_scale must be > 0")
        if len(self.cluster_zoom) != 2 or not 0 < self.cluster_zoom[0] <= self.cluster_zoom[1] <= 1:
            raise ConfigError(f"fra.cluster_zoom must be [min, max] in (0, 1], got {self.cluster_zoom}")


def _pixels(dots: Tensor) -> Tensor:
    """``[B, Q, h, w]`` scores -> ``[B * h * w, Q]`` rows, one per pixel."""
    return dots.permute(0, 2, 3, 1).flatten(0, 2)


def zoom_transforms(batch: int, zoom: list[float], device: torch.device) -> Tensor:
    """Affine maps ``[B, 2, 3]`` (``F.affine_grid``'s, normalised coordinates) of one random square crop per
    image: side ``s ~ U(zoom)`` of the frame, placed uniformly inside it (``x_in = s * x_out + t``)."""
    side = torch.empty(batch, device=device).uniform_(*zoom)
    shift = (torch.rand(batch, 2, device=device) * 2 - 1) * (1 - side)[:, None]
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    return theta


def sample_crops(x: Tensor, theta: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """``x [B, C, H, W]`` sampled bilinearly (with gradient) at the pixel centres of a ``size`` grid over
    the crops ``theta`` (:func:`zoom_transforms`): the zoomed views (``size`` = the view's) and the online
    scores where the zoomed target's pixels lie (``size`` = the target's map)."""
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", align_corners=False)


@register_method("fra", sections={"byol": BYOLConfig, "fra": FRAConfig})
class FRA(BYOL):
    """BYOL whose head is a :class:`RegionNeck`; adds the region predictor and terms (module docstring)."""

    batch_statistics = (
        "BatchNorm, the batch mean of the mask embeddings, Sinkhorn's balancing and the mean-entropy term"
    )
    recipe = Recipe("lars", blr=0.45, weight_decay=1e-6)  # FRA's: lr 0.9 at batch 512

    def __init__(self, encoder: nn.Module, cfg: BYOLConfig, fra: FRAConfig) -> None:
        neck = RegionNeck(
            encoder.feature_dim, cfg.hidden_dim, cfg.proj_dim, fra.num_regions,
            decoder_layers=fra.decoder_layers, decoder_heads=fra.decoder_heads,
            decoder_dropout=fra.decoder_dropout, query_init=fra.query_init, proto_momentum=fra.proto_momentum,
            scale=fra.heatmap_scale,
        )  # fmt: skip
        super().__init__(encoder, neck, cfg)
        self.fra = fra
        self.region_predictor = mlp_head(
            cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim, last_bn=False, init="kaiming"
        )

    def decay_exclusion(self) -> ExclusionRule:
        return fra_excluded

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> FRA:
        encoder = build_encoder(cfg)
        if not isinstance(encoder, ResNet):
            raise ConfigError(
                f"method=fra pools regions from a CNN feature map and needs a ResNet backbone "
                f"(model.arch=resnet*), got {type(encoder).__name__} ({cfg.model.init or cfg.model.arch})"
            )
        return cls(encoder, cfg.byol, cfg.fra)

    def represent(self, encoder: nn.Module, head: nn.Module, images: Tensor) -> Embeddings:
        """``images`` -> global ``[B, D]``, regions ``[B, Q, D]``, dots and heatmaps ``[B, Q, h, w]``."""
        return head(encoder.forward_features(images))

    @torch.no_grad()
    def heatmaps(self, images: Tensor) -> Tensor:
        """The online network's heatmaps ``[B, Q, h, w]`` (softmax over ``Q``), scored against the EMA
        mask embeddings as at inference; call in eval mode."""
        return self.head(self.encoder.forward_features(images), use_batch=False)["heatmaps"]

    @torch.no_grad()
    def mask_embeddings(self, images: Tensor) -> Tensor:
        """The online decoder's mask embeddings ``[B, Q, D]`` of ``images`` (what training averages over the
        batch and scores the pixels against); call in eval mode."""
        return self.head.decoder(self.encoder.forward_features(images))

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """BYOL's forward; with ``fra.cluster_zoom`` below 1, each view's clustering pair is the momentum
        network's scores of a random crop of that view (``cluster_dots``) and the online scores sampled at
        that crop's pixels, instead of both networks' scores of the view itself."""
        views = batch["views"]
        online, target = self.embed(views)
        if min(self.fra.cluster_zoom) < 1:
            for view, o, t in zip(views, online, target, strict=True):
                theta = zoom_transforms(view.shape[0], self.fra.cluster_zoom, view.device)
                with torch.no_grad():
                    zoomed = sample_crops(view, theta, view.shape[-2:])
                    dots = self.represent(self.target_encoder, self.target_head, zoomed)["dots"]
                t["cluster_dots"] = dots
                o["cluster_dots"] = sample_crops(o["dots"], theta, dots.shape[-2:])
        return self.loss(online, target)

    def loss(self, online: list[Embeddings], target: list[Embeddings]) -> tuple[Tensor, dict[str, Tensor]]:
        f = self.fra
        global_term = self.global_loss(online, target)
        region_term = decorrelation = 0
        for o, t in zip(online, reversed(target), strict=True):
            predicted = pointwise(self.region_predictor, o["regions"].transpose(1, 2)).transpose(1, 2)
            total, _, decor = region_consistency_loss(predicted, t["regions"], f.decorrelation_weight)
            region_term, decorrelation = region_term + total, decorrelation + decor
        cluster = sum(
            cluster_assignment_loss(
                _pixels(o.get("cluster_dots", o["dots"])), _pixels(t.get("cluster_dots", t["dots"])),
                f.student_temp, f.teacher_temp,
                f.sinkhorn_iterations, f.mean_entropy_weight,
            )[0]
            for o, t in zip(online, target, strict=True)
        ) / len(online)  # fmt: skip
        weighted_global = f.global_weight * global_term
        weighted_region = (1 - f.global_weight) * region_term
        loss = weighted_global + weighted_region + f.cluster_weight * cluster
        terms = {
            "global": weighted_global.detach(),
            "region": weighted_region.detach(),
            "decorrelation": decorrelation.detach(),
            "cluster": cluster.detach(),
        }
        return loss, terms
