"""MAE decoder: the encoder's visible tokens plus mask tokens -> pixels of every patch."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from facerep.backbones.vit import sincos_pos_embed_2d


class MAEDecoder(nn.Module):
    """Lightweight transformer that fills in masked patches (He et al., 2022).

    Args:
        num_patches: patches per image ``L`` (a square grid).
        patch_size: ``p``; each patch predicts ``p * p * in_chans`` values.
        encoder_dim: width of the encoder tokens it receives.
        embed_dim, depth, num_heads: decoder width, blocks and heads (512, 8, 16 in MAE/MCF).
    """

    def __init__(
        self,
        num_patches: int,
        patch_size: int,
        encoder_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        grid = round(num_patches**0.5)
        if grid * grid != num_patches:
            raise ValueError(f"{num_patches} patches do not form a square grid")
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, grid)[None], requires_grad=False)
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size * in_chans)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch.

        Args:
            latent: encoder output ``[N, 1 + K, D_enc]`` (CLS first, K kept patches in shuffled order).
            ids_restore: ``[N, L]`` inverse permutation from the encoder's masking.
        Returns:
            ``[N, L, p*p*3]`` patch pixels in patch order.
        """
        x = self.embed(latent)
        n, length = ids_restore.shape
        fill = self.mask_token.expand(n, length - (x.shape[1] - 1), -1)
        patches = torch.cat([x[:, 1:], fill], dim=1)
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.pred(x[:, 1:])
