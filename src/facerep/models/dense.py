"""Dense prediction trunk for face alignment and parsing (FaRL's protocol), fed by any backbone's pyramid.

The backbone's ``forward_pyramid`` gives four maps. A ViT's are four raw block outputs on one patch grid;
FPN-style adapters (4x up, 2x up, identity, 2x down) bring them to four scales. A CNN's stages already
form a pyramid (strides 4, 8, 16, 32) and pass unchanged. A UPerNet head (pyramid pooling + top-down
FPN) fuses the four into one map at the resolution of the finest.

As FaRL (``farl/network/transformers.py`` ``_make_fpns`` / ``FaRLVisualFeatures.forward``,
``farl/network/mmseg.py`` = mmseg 0.18 ``UPerHead``): images of another size are resized (bilinear) to the
backbone's input size first (parsing: 512 -> 448); every conv-BN-ReLU is mmcv's ``ConvModule`` (conv
without bias, Kaiming-normal fan-out init at construction, BN weight 1 / bias 0); the classifier is
``Dropout2d(0.1)`` then a 1x1 conv (mmseg ``BaseDecodeHead.conv_seg``) with torch's default ``Conv2d``
initialisation: mmseg 0.18 declares normal(0, 0.01) for it in ``init_cfg``, but that is applied only by
``init_weights()``, which FaRL's ``MMSEG_UPerHead`` wrapper and its networks never call
(``classifier_std=0.01`` applies it). Its BatchNorms are plain here; the fine-tuning engine makes them span
every process under DDP, as FaRL's ``SyncBN``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from facerep.backbones import Backbone
from facerep.config import ConfigError

PYRAMID_LEVELS = 4


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    """mmcv's ``ConvModule`` with BN and ReLU: ``[N, in_ch, H, W]`` -> ``[N, out_ch, H, W]``."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(True))


class FPNAdapters(nn.Module):
    """Four same-size ViT maps -> strides 4, 8, 16, 32 (patch 16): 4x up, 2x up, identity, 2x down."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
        )  # fmt: skip
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.down2 = nn.MaxPool2d(2)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class UPerHead(nn.Module):
    """UPerNet fusion (Xiao et al., 2018): pyramid pooling on the coarsest map, top-down FPN, concat, fuse.

    Input: 4 maps, finest first, ``[N, in_dims[i], H_i, W_i]``; output ``[N, out_channels, H_0, W_0]``.
    ``dropout``: ``Dropout2d`` rate before the 1x1 classifier (mmseg's ``dropout_ratio``; FaRL 0.1).
    ``classifier_std``: ``None`` keeps torch's default init of the classifier (FaRL's); a value initialises
    it normal(0, std), bias 0 (mmseg's ``init_weights()``: 0.01).
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        channels: int,
        out_channels: int,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
        classifier_std: float | None = None,
    ) -> None:
        super().__init__()
        *fine, top = in_dims
        self.pools = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(top, channels, 1)) for s in pool_scales
        )
        self.psp_fuse = conv_bn_relu(top + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(conv_bn_relu(dim, channels, 1) for dim in fine)
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels) for _ in fine)
        self.fuse = conv_bn_relu(len(in_dims) * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, out_channels, 1)
        if classifier_std is not None:
            nn.init.normal_(self.classifier.weight, std=classifier_std)
            nn.init.zeros_(self.classifier.bias)

    @staticmethod
    def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        top = maps[-1]
        pooled = [self._resize(pool(top), top) for pool in self.pools]
        laterals = [lat(m) for lat, m in zip(self.lateral, maps[:-1], strict=True)]
        laterals.append(self.psp_fuse(torch.cat([top, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1], strict=True)] + [laterals[-1]]
        fused = self.fuse(torch.cat([outs[0]] + [self._resize(o, outs[0]) for o in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class DenseHead(nn.Module):
    """(Resize) -> backbone pyramid -> (FPN adapters) -> UPerNet: ``[N, 3, S, S]`` -> ``[N, out, B/4, B/4]``.

    ``levels`` are the backbone's pyramid levels (ViT block indices, ResNet stages); exactly four.
    ``input_size`` ``B``: the side images are resized to (bilinear) before the backbone, as FaRL's
    ``FaRLVisualFeatures.forward`` (``None``: as they come, ``B = S``). ``dropout``, ``classifier_std``: see
    :class:`UPerHead`.
    """

    def __init__(
        self,
        backbone: Backbone,
        levels: Sequence[int],
        channels: int,
        out_channels: int,
        input_size: int | None = None,
        dropout: float = 0.1,
        classifier_std: float | None = None,
    ) -> None:
        super().__init__()
        if len(levels) != PYRAMID_LEVELS:
            raise ConfigError(f"need {PYRAMID_LEVELS} pyramid levels for the FPN, got {list(levels)}")
        self.backbone = backbone
        self.levels = list(levels)
        dims = backbone.pyramid_channels(self.levels)
        one_grid = len(set(backbone.pyramid_strides(self.levels))) == 1
        if one_grid and len(set(dims)) != 1:
            raise ConfigError(f"same-stride pyramid levels {self.levels} must share one width, got {dims}")
        self.input_size = input_size
        self.adapters = FPNAdapters(dims[0]) if one_grid else nn.Identity()
        self.head = UPerHead(dims, channels, out_channels, dropout=dropout, classifier_std=classifier_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is not None and images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return self.head(self.adapters(self.backbone.forward_pyramid(images, self.levels)))


def resolve_levels(
    backbone: Backbone, levels: Sequence[int] | None, blocks: Sequence[int] | None
) -> list[int]:
    """The pyramid levels a head config names: ``head.levels``, or its ViT spelling ``head.blocks``, or
    the backbone's defaults (FaRL's blocks ``[3, 5, 7, 11]``; ResNet stages ``[1, 2, 3, 4]``)."""
    if blocks is not None and levels is not None and list(blocks) != list(levels):
        raise ConfigError(f"head.blocks={list(blocks)} and head.levels={list(levels)} disagree; set one")
    if blocks is not None and backbone.arch.family != "vit":
        raise ConfigError(
            f"head.blocks names ViT blocks; for a {backbone.arch.family} backbone set head.levels"
        )
    chosen = levels if levels is not None else blocks
    return list(chosen if chosen is not None else backbone.default_levels)
