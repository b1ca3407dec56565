"""ViT encoder: timm's ``VisionTransformer`` plus MAE-style random masking.

The encoder *is* a timm model, so its ``state_dict`` uses timm key names and anything facerep trains
loads into ``timm.create_model(..., num_classes=0)`` with strict key matching. What facerep adds:

* a fixed (non-trainable) 2-D sin-cos position embedding, as in MAE / MoCo v3 / MCF;
* :meth:`MaskedViT.forward_masked`, which keeps a random subset of patch tokens per sample
  (the kept/masked split can be passed in for parity checks);
* :meth:`MaskedViT.forward_block_tokens`, the token outputs of chosen blocks (teacher features).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# name -> (embed_dim, depth, num_heads): the standard ViT table (Dosovitskiy et al., timm).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
_ARCH_RE = re.compile(r"^vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)(?:_(?P<img>\d+))?$")


@dataclass(frozen=True)
class ViTArch:
    """Everything needed to rebuild a ViT encoder; saved beside exported weights."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


def heads_for_dim(embed_dim: int) -> int:
    """Number of attention heads the standard ViT table uses for ``embed_dim`` (64-d heads otherwise)."""
    for dim, _, heads in VIT_SIZES.values():
        if dim == embed_dim:
            return heads
    if embed_dim % 64:
        raise ValueError(
            f"embed_dim={embed_dim} is not in the ViT table and not a multiple of 64; pass num_heads"
        )
    return embed_dim // 64


def parse_arch(name: str, img_size: int | None = None) -> ViTArch:
    """``vit_base_patch16_224`` -> :class:`ViTArch`; ``img_size`` overrides the size in the name."""
    match = _ARCH_RE.match(name)
    if match is None or match["size"] not in VIT_SIZES:
        sizes = "|".join(VIT_SIZES)
        raise ValueError(f"unknown model.arch {name!r}: expected vit_{{{sizes}}}_patch{{14|16}}[_SIZE]")
    dim, depth, heads = VIT_SIZES[match["size"]]
    size = img_size or int(match["img"] or 224)
    return check_arch(ViTArch(dim, depth, heads, int(match["patch"]), size))


def check_arch(arch: ViTArch) -> ViTArch:
    """Raise a one-line error when the image size is not a multiple of the patch size."""
    if arch.img_size % arch.patch_size:
        raise ValueError(f"image size {arch.img_size} is not divisible by patch size {arch.patch_size}")
    if arch.embed_dim % arch.num_heads:
        raise ValueError(f"embed_dim {arch.embed_dim} is not divisible by num_heads {arch.num_heads}")
    return arch


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, MAE layout: ``[1 + G*G, D]`` (a zero row for CLS first).

    Half of the channels encode the column (x) coordinate and half the row (y); each half is
    ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 1 / 10000^(k / (D/4))``.
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
    coords = torch.arange(grid_size, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([encode(xs), encode(ys)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def random_keep_order(
    batch: int, num_patches: int, device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample random permutation of patch indices ``[N, L]``: the first ``len_keep`` are kept."""
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    return noise.argsort(dim=1)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept at ``mask_ratio`` (MAE rounding: ``int(L * (1 - r))``, at least one)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1.0 - mask_ratio)))


class MaskedViT(VisionTransformer):
    """timm ``VisionTransformer`` (CLS token, final norm, no head) with masking support."""

    def __init__(self, arch: ViTArch, drop_path_rate: float = 0.0) -> None:
        super().__init__(
            img_size=arch.img_size,
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=arch.num_heads,
            mlp_ratio=arch.mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            drop_path_rate=drop_path_rate,
        )
        self.arch = arch
        self.pos_embed.requires_grad_(False)
        self.reset_mae_parameters()

    @torch.no_grad()
    def reset_mae_parameters(self) -> None:
        """MAE initialisation: sin-cos pos embed, xavier-uniform linears and patch projection."""
        self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, self.arch.grid_size)[None])
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def forward_masked(
        self, x: torch.Tensor, mask_ratio: float, ids_shuffle: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only a random subset of patches.

        Args:
            x: images ``[N, 3, H, W]``.
            mask_ratio: fraction of patches removed.
            ids_shuffle: optional ``[N, L]`` patch permutation; the first ``len_keep`` are kept.
        Returns:
            latent ``[N, 1 + len_keep, D]`` (CLS first, final norm applied),
            mask ``[N, L]`` (1 = removed, 0 = kept, in patch order),
            ids_restore ``[N, L]`` (inverse permutation, to unshuffle decoder tokens).
        """
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
        n, length, dim = tokens.shape
        len_keep = num_kept(length, mask_ratio)
        if ids_shuffle is None:
            ids_shuffle = random_keep_order(n, length, tokens.device)
        elif ids_shuffle.shape != (n, length):
            raise ValueError(f"ids_shuffle must be [{n}, {length}], got {list(ids_shuffle.shape)}")
        ids_restore = ids_shuffle.argsort(dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        kept = tokens.gather(1, ids_keep[..., None].expand(-1, -1, dim))

        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = mask.gather(1, ids_restore)

        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)
        h = self.norm_pre(torch.cat([cls, kept], dim=1))
        h = self.norm(self._run_blocks(h))
        return h, mask, ids_restore

    def _run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """All blocks, with activation checkpointing when enabled (``set_grad_checkpointing``)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, h)
        return self.blocks(h)

    def forward_block_tokens(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Token outputs ``[N, 1 + L, D]`` of the blocks in ``indices`` (0-based, before the final norm)."""
        wanted = set(indices)
        if max(wanted) >= len(self.blocks) or min(wanted) < 0:
            raise ValueError(f"block indices {indices} out of range for a {len(self.blocks)}-block ViT")
        h = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            h = block(h)
            if i in wanted:
                outputs[i] = h
        return [outputs[i] for i in indices]


def build_vit(arch: str | ViTArch, img_size: int | None = None, **overrides: float) -> MaskedViT:
    """Build a :class:`MaskedViT` from a timm-style name or a :class:`ViTArch` (fields overridable)."""
    spec = parse_arch(arch, img_size) if isinstance(arch, str) else arch
    drop_path = float(overrides.pop("drop_path_rate", 0.0))
    if img_size is not None:
        overrides["img_size"] = img_size
    return MaskedViT(check_arch(replace(spec, **overrides)), drop_path_rate=drop_path)
