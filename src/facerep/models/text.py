"""CLIP's text tower (OpenAI CLIP, open_clip, FaRL) under the OpenAI key names.

``TextTransformer(arch).state_dict()`` has exactly the text keys of an OpenAI-layout CLIP state dict
(``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.N.{attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}``, ``ln_final``, ``text_projection``),
so such a file's text weights load with strict keys. Pre-norm blocks with causal self-attention,
QuickGELU MLPs (4x) and LayerNorm epsilon 1e-5; a caption's feature is the final-norm token at its
end-of-text id (the largest id in the row) times ``text_projection``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import QuickGELU
from torch import Tensor, nn

from facerep.backbones.clip_layout import HEAD_WIDTH, TEXT_BLOCKS, block_indices
from facerep.runtime.checkpoint import CheckpointError

__all__ = ["TEXT_KEYS", "TextArch", "TextTransformer", "infer_text_arch", "text_state"]

NORM_EPS = 1e-5
# top-level keys of an OpenAI-layout state dict that belong to the text tower (exact keys, then prefixes)
TEXT_KEYS = ("positional_embedding", "text_projection")
_TEXT_PREFIXES = ("token_embedding.", TEXT_BLOCKS, "ln_final.")


@dataclass(frozen=True)
class TextArch:
    """Everything needed to rebuild a :class:`TextTransformer` (OpenAI CLIP ViT-B's text tower by default)."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    embed_dim: int = 512


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with ``nn.MultiheadAttention``'s parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, T, W]`` -> ``[N, T, W]``; token ``t`` attends to tokens ``0..t``."""
        n, t, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, w))


class _Block(nn.Module):
    """OpenAI CLIP's ``ResidualAttentionBlock``: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=NORM_EPS)
        self.attn = _CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=NORM_EPS)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, arch: TextArch) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(arch.width, arch.heads) for _ in range(arch.layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class TextTransformer(nn.Module):
    """CLIP's text encoder: token ids ``[N, T]`` (``T <= context_length``) -> projected features
    ``[N, E]``."""

    def __init__(self, arch: TextArch) -> None:
        super().__init__()
        if arch.width % arch.heads:
            raise ValueError(f"text width {arch.width} is not divisible by heads {arch.heads}")
        self.arch = arch
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.width)
        self.positional_embedding = nn.Parameter(torch.empty(arch.context_length, arch.width))
        self.transformer = _Transformer(arch)
        self.ln_final = nn.LayerNorm(arch.width, eps=NORM_EPS)
        self.text_projection = nn.Parameter(torch.empty(arch.width, arch.embed_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """CLIP's ``initialize_parameters`` for the text tower (normal inits; biases of the MLP keep
        ``nn.Linear``'s default, attention biases are zero)."""
        width, layers = self.arch.width, self.arch.layers
        attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward_tokens(self, ids: Tensor) -> Tensor:
        """Final-norm token features ``[N, T, W]`` of ids ``[N, T]``."""
        if ids.ndim != 2 or ids.shape[1] > self.arch.context_length:
            limit = self.arch.context_length
            raise ValueError(f"ids must be [N, T] with T <= {limit}, got {list(ids.shape)}")
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        return self.ln_final(self.transformer(x))

    def forward(self, ids: Tensor) -> Tensor:
        """Ids ``[N, T]`` (int64) -> features ``[N, E]`` at each row's end-of-text token (its largest id),
        projected, not normalised."""
        tokens = self.forward_tokens(ids)
        pooled = tokens[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)]
        return pooled @ self.text_projection


def text_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The text tower's entries of an OpenAI-layout state dict (keys unchanged)."""
    return {k: v for k, v in state.items() if k in TEXT_KEYS or k.startswith(_TEXT_PREFIXES)}


def infer_text_arch(state: Mapping[str, Tensor], source: str) -> TextArch:
    """The :class:`TextArch` of an OpenAI-layout state dict: vocabulary and width from
    ``token_embedding.weight``, context from ``positional_embedding``, layers from keys starting with
    ``transformer.resblocks.N.``, ``heads = width // 64``, ``embed_dim`` from ``text_projection``."""
    shapes = {
        "token_embedding.weight": "[V, W]", "positional_embedding": "[T, W]", "text_projection": "[W, E]",
    }  # fmt: skip
    for key, expected in shapes.items():
        value = state.get(key)
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: CLIP text tower lacks the tensor {key}")
        if value.ndim != 2:
            raise CheckpointError(
                f"{source}: CLIP key {key} has shape {list(value.shape)}; expected {expected}"
            )
    vocab, width = state["token_embedding.weight"].shape
    context, pos_width = state["positional_embedding"].shape
    proj_width, embed_dim = state["text_projection"].shape
    if pos_width != width or proj_width != width:
        bad = "positional_embedding" if pos_width != width else "text_projection"
        raise CheckpointError(
            f"{source}: CLIP key {bad} has shape {list(state[bad].shape)}; its width should be {width}"
        )
    layers = block_indices(state, TEXT_BLOCKS)
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"{source}: expected CLIP text blocks {TEXT_BLOCKS}0..N-1, found {layers}")
    if width % HEAD_WIDTH:
        raise CheckpointError(f"{source}: CLIP text width {width} is not a multiple of {HEAD_WIDTH}")
    heads = int(width) // HEAD_WIDTH
    return TextArch(int(vocab), int(context), int(width), len(layers), heads, int(embed_dim))
