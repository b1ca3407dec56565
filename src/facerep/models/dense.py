"""Dense prediction trunk for face alignment and parsing (FaRL's protocol).

ViT block outputs at several depths are reshaped to feature maps, brought to four scales by FPN-style
adapters (4x up, 2x up, identity, 2x down) and fused by a UPerNet head (pyramid pooling + top-down
FPN) into one map at 1/4 of the input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerep.models.vit import MaskedViT


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(True),
    )


class MultiLevelViT(nn.Module):
    """Feature maps ``[N, D, G, G]`` from the outputs of chosen ViT blocks (CLS token dropped).

    The output of the last block gets the final norm, the others are taken as they leave their block.
    """

    def __init__(self, backbone: MaskedViT, blocks: list[int]) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"need 4 block indices for the 4 FPN levels, got {blocks}")
        self.backbone = backbone
        self.blocks = list(blocks)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.backbone.forward_block_tokens(images, self.blocks)
        grid = images.shape[-1] // self.backbone.arch.patch_size
        maps = []
        for index, t in zip(self.blocks, tokens, strict=True):
            if index == len(self.backbone.blocks) - 1:
                t = self.backbone.norm(t)
            n, _, d = t.shape
            maps.append(t[:, 1:].transpose(1, 2).reshape(n, d, grid, grid))
        return maps


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

    Input: 4 maps, finest first, each ``[N, in_dim, H_i, W_i]``; output ``[N, out_channels, H_0, W_0]``.
    """

    def __init__(
        self, in_dim: int, channels: int, out_channels: int, pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    ) -> None:
        super().__init__()
        self.pools = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_dim, channels, 1)) for s in pool_scales
        )
        self.psp_fuse = conv_bn_relu(in_dim + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(conv_bn_relu(in_dim, channels, 1) for _ in range(3))
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

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
        return self.classifier(fused)


class DenseHead(nn.Module):
    """Backbone -> multi-level maps -> adapters -> UPerNet: ``[N, 3, S, S]`` -> ``[N, out, S/4, S/4]``."""

    def __init__(self, backbone: MaskedViT, blocks: list[int], channels: int, out_channels: int) -> None:
        super().__init__()
        self.trunk = MultiLevelViT(backbone, blocks)
        self.adapters = FPNAdapters(backbone.embed_dim)
        self.head = UPerHead(backbone.embed_dim, channels, out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.adapters(self.trunk(images)))
