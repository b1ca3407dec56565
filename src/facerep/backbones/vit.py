"""ViT backbone: timm's ``VisionTransformer`` plus MAE-style random masking, and the ViT family.

The encoder *is* a timm model, so its ``state_dict`` uses timm key names and anything facerep trains
loads into ``timm.create_model(..., num_classes=0)`` with strict key matching. What facerep adds:

* a fixed (non-trainable) 2-D sin-cos position embedding, as in MAE / MoCo v3 / MCF, or (``ViTArch.pos_embed =
  "learned"``) a trainable one with FaRL's initialisation, for CLIP-layout towers (:data:`CLIP_TOWER`);
* :meth:`MaskedViT.forward_masked`, which keeps a subset of patch tokens per sample, in the order the
  data pipeline drew (or a random one);
* :meth:`MaskedViT.forward_block_tokens`, the token outputs of chosen blocks (teacher features);
* the backbone protocol of :mod:`facerep.backbones.base` (pyramid of block outputs, CLS pooling).

Optional :class:`ViTArch` fields reproduce other ViT families with the same timm modules: layer scale
(DINOv2), a norm before the blocks without patch bias (CLIP), QuickGELU (OpenAI CLIP) and the
LayerNorm epsilon (Hugging Face ViT 1e-12, CLIP 1e-5, timm and DINOv2 1e-6).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar

import timm
import torch
from timm.layers import LayerNorm, QuickGELU, resample_abs_pos_embed, trunc_normal_
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import Tensor, nn

from facerep.backbones.base import FAMILIES, BackboneFamily, LoadOptions, check_record, load_strict
from facerep.config import ConfigError
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line

# name -> (embed_dim, depth, num_heads): the standard ViT table (Dosovitskiy et al., timm).
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
_ARCH_RE = re.compile(r"^vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)(?:_(?P<img>\d+))?$")
_ARCH_NAMES = f"vit_{{{'|'.join(VIT_SIZES)}}}_patch{{14|16}}[_SIZE]"
_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
# A record key a reader sets to False when its source resamples position grids without antialiasing
# (Hugging Face, ONNX graphs); facerep's own files resample like timm (bicubic, antialiased).
POS_ANTIALIAS = "pos_embed_antialias"
# (layer scale, pre_norm, act, norm_eps) -> the timm model name suffix building exactly that variant
_TIMM_VARIANTS: dict[tuple[bool, bool, str, float], str] = {
    (False, False, "gelu", 1e-6): "",
    (True, False, "gelu", 1e-6): "_dinov2",
    (False, True, "gelu", 1e-5): "_clip",
    (False, True, "quick_gelu", 1e-5): "_clip_quickgelu",
}
POS_EMBEDS = ("sincos", "learned")
# the ViTArch fields of an OpenAI-CLIP / FaRL image tower (farl/network/farl/model.py VisualTransformer):
# ln_pre without a patch bias, QuickGELU, LayerNorm epsilon 1e-5, a learned position embedding
CLIP_TOWER: dict[str, Any] = {"pre_norm": True, "act": "quick_gelu", "norm_eps": 1e-5, "pos_embed": "learned"}


@dataclass(frozen=True)
class ViTArch:
    """Everything needed to rebuild a ViT encoder; saved beside exported weights."""

    family: ClassVar[str] = "vit"

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    img_size: int
    mlp_ratio: float = 4.0
    layer_scale: float | None = None  # LayerScale init value (timm init_values); DINOv2: 1.0
    pre_norm: bool = False  # LayerNorm before the blocks, patch projection without bias (CLIP ln_pre)
    act: str = "gelu"  # MLP activation: gelu | quick_gelu (OpenAI CLIP)
    norm_eps: float = 1e-6  # LayerNorm epsilon
    # sincos: fixed 2-D sin-cos, MAE's initialisation (MAE, MCF) | learned: trainable, FaRL's (CLIP towers)
    pos_embed: str = "sincos"

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
        raise ConfigError(
            f"embed_dim={embed_dim} is not in the ViT table and not a multiple of 64; pass num_heads"
        )
    return embed_dim // 64


def parse_arch(name: str, img_size: int | None = None) -> ViTArch:
    """``vit_base_patch16_224`` -> :class:`ViTArch`; ``img_size`` overrides the size in the name."""
    match = _ARCH_RE.match(name)
    if match is None or match["size"] not in VIT_SIZES:
        raise ConfigError(f"unknown ViT architecture {name!r}: expected {_ARCH_NAMES}")
    dim, depth, heads = VIT_SIZES[match["size"]]
    size = img_size or int(match["img"] or 224)
    return check_arch(ViTArch(dim, depth, heads, int(match["patch"]), size))


def check_arch(arch: ViTArch) -> ViTArch:
    """Raise a one-line error when the image size is not a multiple of the patch size (or another field
    is out of range)."""
    if arch.act not in ACTIVATIONS:
        raise ConfigError(f"unknown ViT activation {arch.act!r}: expected {' or '.join(ACTIVATIONS)}")
    if arch.pos_embed not in POS_EMBEDS:
        raise ConfigError(
            f"unknown ViT position embedding {arch.pos_embed!r}: expected {' or '.join(POS_EMBEDS)}"
        )
    if arch.img_size % arch.patch_size:
        raise ConfigError(f"image size {arch.img_size} is not divisible by patch size {arch.patch_size}")
    if arch.embed_dim % arch.num_heads:
        raise ConfigError(f"embed_dim {arch.embed_dim} is not divisible by num_heads {arch.num_heads}")
    return arch


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, MAE layout: ``[1 + G*G, D]`` (a zero row for CLS first).

    Half of the channels encode the column (x) coordinate and half the row (y); each half is
    ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 1 / 10000^(k / (D/4))``.
    """
    if embed_dim % 4:
        raise ConfigError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
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


@torch.no_grad()
def farl_init_(module: nn.Module) -> None:
    """FaRL's initialisation of the transformer layers in ``module`` (``farl/network/farl/model.py``
    ``_init_weights``): truncated normal (std 0.02) for every Linear and Conv2d, zero biases. The fused
    ``qkv`` of each timm ``Attention`` gets xavier-uniform over its ``[3D, D]`` weight instead: FaRL's
    blocks hold ``nn.MultiheadAttention``, whose bare ``in_proj_weight`` its ``apply`` never reaches, so it
    keeps that module's own initialisation (xavier-uniform, zero bias)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, Attention):
            nn.init.xavier_uniform_(m.qkv.weight)


class MaskedViT(VisionTransformer):
    """timm ``VisionTransformer`` (CLS token, final norm, no head) with masking support.

    Pyramid levels are block indices (0-based); FaRL feeds its dense heads blocks ``[3, 5, 7, 11]``.
    """

    default_levels = (3, 5, 7, 11)

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
            init_values=arch.layer_scale,
            pre_norm=arch.pre_norm,
            act_layer=ACTIVATIONS[arch.act],
            norm_layer=partial(LayerNorm, eps=arch.norm_eps),
        )
        self.arch = arch
        if arch.pos_embed == "learned":
            self.reset_farl_parameters()
        else:
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

    @torch.no_grad()
    def reset_farl_parameters(self) -> None:
        """FaRL's ``VisualTransformer`` initialisation: :func:`farl_init_` on the layers, and ``width**-0.5``
        times a standard normal for the class and position embeddings."""
        farl_init_(self)
        for token in (self.cls_token, self.pos_embed):
            token.normal_(std=self.embed_dim**-0.5)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def feature_dim(self) -> int:
        return self.embed_dim

    def pooled(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> the final-norm CLS token ``[N, D]``."""
        return self.forward_features(x)[:, 0]

    def forward_pyramid(self, x: Tensor, levels: Sequence[int]) -> list[Tensor]:
        """Raw block outputs ``[N, D, G, G]`` (CLS dropped, no final norm, the last block's included) for
        the block indices ``levels``, as FaRL feeds its FPN (``farl/network/transformers.py``
        ``FaRLVisualFeatures.forward`` never applies ``ln_post``)."""
        return self._token_maps(self.forward_block_tokens(x, list(levels)), x)

    def pyramid_pooled(self, x: Tensor, levels: Sequence[int]) -> tuple[list[Tensor], Tensor]:
        """``(forward_pyramid(x, levels), pooled(x))`` from one pass through the blocks."""
        *tokens, last = self.forward_block_tokens(x, [*levels, len(self.blocks) - 1])
        return self._token_maps(tokens, x), self.norm(last)[:, 0]

    def _token_maps(self, tokens: list[Tensor], x: Tensor) -> list[Tensor]:
        """Block outputs ``[N, 1 + L, D]`` of images ``x`` -> patch-grid maps ``[N, D, G, G]``."""
        grid_h, grid_w = x.shape[-2] // self.arch.patch_size, x.shape[-1] // self.arch.patch_size
        return [t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], grid_h, grid_w) for t in tokens]

    def pyramid_channels(self, levels: Sequence[int]) -> list[int]:
        return [self.embed_dim] * len(levels)

    def pyramid_strides(self, levels: Sequence[int]) -> list[int]:
        return [self.arch.patch_size] * len(levels)

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

    def forward_replaced(self, x: Tensor, replace: Tensor, mask_token: Tensor) -> Tensor:
        """Encode every patch, with the embeddings of the ``replace`` ones swapped for ``mask_token``.

        BEiT-style masked image modelling (FaRL): the sequence keeps its length, so the blocks see where
        patches are missing. Args: images ``[N, 3, H, W]``, ``replace`` ``[N, L]`` bool, ``mask_token``
        ``[D]``. Returns the last block's raw tokens ``[N, 1 + L, D]`` (CLS first, no final norm).
        """
        tokens = self.patch_embed(x)
        if replace.shape != tokens.shape[:2]:
            raise ValueError(f"replace must be {list(tokens.shape[:2])}, got {list(replace.shape)}")
        tokens = torch.where(replace[..., None], mask_token.to(tokens.dtype), tokens)
        return self._run_blocks(self.norm_pre(self._pos_embed(tokens)))

    def _run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """All blocks, with activation checkpointing when enabled (``set_grad_checkpointing``)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, h)
        return self.blocks(h)

    def forward_block_tokens(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Token outputs ``[N, 1 + L, D]`` of the blocks in ``indices`` (0-based, before the final norm)."""
        wanted = set(indices)
        if max(wanted) >= len(self.blocks) or min(wanted) < 0:
            raise ConfigError(f"block indices {indices} out of range for a {len(self.blocks)}-block ViT")
        h = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            h = block(h)
            if i in wanted:
                outputs[i] = h
        return [outputs[i] for i in indices]


def build_vit(arch: str | ViTArch, img_size: int | None = None, **overrides: Any) -> MaskedViT:
    """Build a :class:`MaskedViT` from a timm-style name or a :class:`ViTArch` (fields overridable)."""
    spec = parse_arch(arch, img_size) if isinstance(arch, str) else arch
    drop_path = float(overrides.pop("drop_path_rate", 0.0))
    unknown = sorted(set(overrides) - set(ViTArch.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"a ViT has no architecture field {unknown} (ResNet-only?)")
    if img_size is not None:
        overrides["img_size"] = img_size
    return MaskedViT(check_arch(replace(spec, **overrides)), drop_path_rate=drop_path)


def infer_arch(
    state: Mapping[str, Tensor],
    num_heads: int | None = None,
    source: str = "checkpoint",
    record: Mapping[str, Any] | None = None,
) -> ViTArch:
    """Infer the :class:`ViTArch` of a timm-named ViT state dict.

    Heads come from ``num_heads``, else the ViT table; layer scale and pre-norm from the keys
    (``blocks.0.ls1.gamma``, ``norm_pre.weight``); the activation, LayerNorm epsilon, layer-scale init
    value and position-embedding kind, which weights cannot tell, from ``record`` (the :class:`ViTArch`
    defaults otherwise).
    """
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{source}: missing required ViT keys {missing} after mapping to timm names")
    proj = state["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[1] != 3 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(
            f"{source}: patch_embed.proj.weight has shape {list(proj.shape)}; expected [D, 3, p, p]"
        )
    dim, patch = int(proj.shape[0]), int(proj.shape[2])
    blocks = sorted({int(m[1]) for k in state if (m := _BLOCK_RE.match(k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{source}: expected transformer blocks 0..N-1, found block indices {blocks}")
    pos = state["pos_embed"]
    tokens = int(pos.shape[1]) if pos.ndim == 3 else -1
    grid = round(max(tokens - 1, 0) ** 0.5)
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != dim or grid < 1 or grid * grid != tokens - 1:
        raise CheckpointError(
            f"{source}: pos_embed has shape {list(pos.shape)}; expected [1, 1 + G*G, {dim}] "
            "(a CLS row plus a square patch grid)"
        )
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is None or fc1.ndim != 2:
        raise CheckpointError(f"{source}: missing or malformed blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / dim
    if int(dim * mlp_ratio) != fc1.shape[0]:
        raise CheckpointError(
            f"{source}: MLP width {fc1.shape[0]} is not expressible as embed_dim * mlp_ratio"
        )
    pre_norm = "norm_pre.weight" in state
    if ("patch_embed.proj.bias" in state) == pre_norm:
        layout = "a pre-norm with a patch bias" if pre_norm else "a patch projection without bias or pre-norm"
        raise CheckpointError(f"{source}: {layout} is not supported (timm ties patch bias to no pre-norm)")
    given = record or {}
    layer_scale = float(given.get("layer_scale") or 1.0) if "blocks.0.ls1.gamma" in state else None
    act, eps = str(given.get("act", "gelu")), float(given.get("norm_eps", 1e-6))
    pos_embed = str(given.get("pos_embed", "sincos"))
    try:
        heads = num_heads if num_heads is not None else heads_for_dim(dim)
        shape = (dim, len(blocks), heads, patch, grid * patch, mlp_ratio)
        fields = {"layer_scale": layer_scale, "pre_norm": pre_norm, "act": act, "norm_eps": eps}
        return check_arch(ViTArch(*shape, **fields, pos_embed=pos_embed))
    except ConfigError as err:
        raise CheckpointError(f"{source}: {one_line(err)}") from err


def _held_by_weights(state: Mapping[str, Tensor], arch: ViTArch) -> dict[str, tuple[Any, str]]:
    """The :class:`ViTArch` fields that ``state`` (whose inferred arch is ``arch``) fixes, each with the
    tensor showing it (:func:`~facerep.backbones.base.check_record`)."""

    def shape(key: str) -> str:
        return f"{key} has shape {list(state[key].shape)}"

    grid = f"{arch.grid_size}x{arch.grid_size} patches of {arch.patch_size} px"
    return {
        "embed_dim": (arch.embed_dim, shape("patch_embed.proj.weight")),
        "patch_size": (arch.patch_size, shape("patch_embed.proj.weight")),
        "img_size": (arch.img_size, f"{shape('pos_embed')} ({grid})"),
        "depth": (arch.depth, f"the weights hold blocks 0-{arch.depth - 1}"),
        "mlp_ratio": (arch.mlp_ratio, shape("blocks.0.mlp.fc1.weight")),
        "pre_norm": (arch.pre_norm, f"norm_pre.weight is {'present' if arch.pre_norm else 'absent'}"),
    }


def timm_model_name(arch: ViTArch) -> str | None:
    """A registered timm model with this architecture, or ``None`` for a non-standard one.

    Prefers ``vit_{size}_patch{p}[_clip|_clip_quickgelu]_{img_size}``; otherwise the ``..._224`` variant
    (``..._dinov2`` for layer-scale ViTs), which timm builds at any size via
    ``timm.create_model(name, img_size=arch.img_size, num_classes=0)``.
    """
    variant = _TIMM_VARIANTS.get((arch.layer_scale is not None, arch.pre_norm, arch.act, arch.norm_eps))
    if arch.mlp_ratio != 4.0 or variant is None:
        return None
    for size, spec in VIT_SIZES.items():
        if spec == (arch.embed_dim, arch.depth, arch.num_heads):
            base = f"vit_{size}_patch{arch.patch_size}{variant}"
            names = [base] if variant == "_dinov2" else [f"{base}_{arch.img_size}", f"{base}_224"]
            return next((name for name in names if timm.is_model(name)), None)
    return None


class ViTFamily(BackboneFamily):
    """ViTs: ``vit_*`` names, timm key names (``cls_token``, ``pos_embed``, ``patch_embed``, ``blocks.N``)."""

    name = "vit"
    arch_names = _ARCH_NAMES

    def matches(self, arch: str) -> bool:
        return arch.startswith("vit_")

    def build(self, arch: str, img_size: int | None = None, **overrides: Any) -> MaskedViT:
        return build_vit(arch, img_size, **overrides)

    def from_record(self, record: Mapping[str, Any]) -> MaskedViT:
        return build_vit(ViTArch(**record))

    def owns(self, state: Mapping[str, Tensor]) -> bool:
        return any(k in _REQUIRED or k.startswith(("blocks.", "patch_embed.")) for k in state)

    def from_state(
        self, state: dict[str, Tensor], record: Mapping[str, Any] | None, source: str, options: LoadOptions
    ) -> MaskedViT:
        """Infer the architecture (heads from ``options``, else the record, else the ViT table; the fields
        weights cannot tell from the record) and load. A record field the weights contradict (``img_size``
        against the position grid, ``embed_dim``, ``depth``, ...) is a one-line :class:`CheckpointError`.
        With ``options.img_size`` the position embedding is resampled (bicubic, CLS row kept; antialiased
        unless the record's :data:`POS_ANTIALIAS` says otherwise)."""
        record = record or {}
        num_heads = options.num_heads
        if num_heads is None and isinstance(record.get("num_heads"), int):
            num_heads = record["num_heads"]
        arch = infer_arch(state, num_heads=num_heads, source=source, record=record)
        check_record(record, _held_by_weights(state, arch), source)
        img_size = options.img_size
        state = dict(state)
        if img_size is not None and img_size != arch.img_size:
            if img_size % arch.patch_size:
                raise CheckpointError(
                    f"{source}: img_size {img_size} is not a multiple of patch size {arch.patch_size}"
                )
            old, new = arch.grid_size, img_size // arch.patch_size
            pos = state["pos_embed"].float()
            antialias = bool(record.get(POS_ANTIALIAS, True))
            state["pos_embed"] = resample_abs_pos_embed(
                pos, [new, new], [old, old], num_prefix_tokens=1, antialias=antialias
            )
            arch = replace(arch, img_size=img_size)
        try:
            model = build_vit(arch, drop_path_rate=options.drop_path_rate)
        except ConfigError as err:
            raise CheckpointError(f"{source}: {one_line(err)}") from err
        what = f"ViT(embed_dim={arch.embed_dim}, depth={arch.depth}, patch={arch.patch_size})"
        return load_strict(model, state, source, what)

    def export_names(self, arch: ViTArch) -> dict[str, str | None]:
        return {"timm_model": timm_model_name(arch)}


FAMILIES.add(ViTFamily.name, ViTFamily())
