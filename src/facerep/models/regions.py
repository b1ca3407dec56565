"""FRA's facial-region neck: learned mask queries -> heatmaps over a CNN feature map -> region embeddings.

Given a backbone feature map ``x [B, C, h, w]`` (ResNet-50: ``C = 2048``, ``h = w = 7`` at 224 px):

1. ``Q`` learned queries attend to ``x`` through a small DETR-style transformer decoder
   (:class:`MaskQueryDecoder`: 1x1 input projection to ``D``, sine position encoding of the grid,
   post-norm layers of self-attention, cross-attention and FFN, a final LayerNorm, then a 3-layer MLP)
   -> mask embeddings ``[B, Q, D]``;
2. a per-pixel projection (an MLP on every position) -> ``[B, D, h, w]``;
3. heatmaps = softmax over the ``Q`` queries of the cosine between every pixel projection and every mask
   embedding (``dots [B, Q, h, w]``); in training the mask embeddings are first averaged over the global
   batch (every image is scored against the same ``Q`` embeddings), at inference an EMA of that average
   (``proto``, momentum 0.9) is used, as in FRA's code;
4. region embeddings = the heatmap-weighted average of ``x`` over positions, through an MLP ->
   ``[B, Q, D]``; the global embedding is the average-pooled ``x`` through another MLP -> ``[B, D]``.

Initialisation as FRA's code: the three MLPs as its ``MLP1D`` (kaiming-normal, fan_out), the decoder
layers as DETR's ``Transformer._reset_parameters`` (xavier-uniform for every tensor of two or more
dimensions), the input projection as Detectron2's ``c2_xavier_fill`` (kaiming-uniform with ``a = 1``, bias
0), the query embeddings standard normal (``nn.Embedding``) and the mask-embedding MLP with torch's Linear
default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerep.models.heads import mlp_head
from facerep.runtime.distributed import all_gather_with_grad

HEATMAP_EPS = 1e-7  # added to the softmax before region pooling (FRA's ``eps``)


def sine_position_encoding(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """DETR's normalised sine encoding of an ``h x w`` grid: ``[h * w, dim]`` (``dim / 2`` per axis)."""
    if dim % 4:
        raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
    half = dim // 2
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    freq = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)

    def encode(v: Tensor) -> Tensor:  # [n] -> [n, half]: interleaved sin/cos
        angles = v[:, None] / freq
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None].expand(h, w, half)
    pos_x = encode(x)[None].expand(h, w, half)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(h * w, dim)


class DecoderLayer(nn.Module):
    """DETR decoder layer (post-norm): query positions added to queries and keys, grid positions to keys."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor) -> Tensor:
        """``tgt [B, Q, D]``, ``memory [B, L, D]``, ``query_pos [1, Q, D]``, ``pos [1, L, D]``."""
        q = tgt + query_pos
        tgt = self.norms[0](tgt + self.dropout(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norms[1](tgt + self.dropout(attended))
        return self.norms[2](tgt + self.dropout(self.ffn(tgt)))


QUERY_INITS = ("zeros", "learned")


class MaskQueryDecoder(nn.Module):
    """``Q`` learned queries read a feature map ``[B, C, h, w]`` -> mask embeddings ``[B, Q, D]``.

    ``query_init`` is what the decoder's residual stream starts from: ``zeros`` (DETR, FRA's code: the
    queries differ only through their positional embeddings in the attention weights, so on a feature map
    whose positions look alike all queries give nearly one embedding) or ``learned`` (Mask2Former's
    learned query features ``query_feat``: each query also carries its own content).
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_queries: int,
        layers: int,
        heads: int,
        ffn_dim: int,
        dropout: float,
        query_init: str = "zeros",
    ) -> None:
        super().__init__()
        if query_init not in QUERY_INITS:
            raise ValueError(f"query_init must be one of {', '.join(QUERY_INITS)}, got {query_init!r}")
        self.input_proj = nn.Conv2d(in_dim, dim, kernel_size=1) if in_dim != dim else nn.Identity()
        self.query_embed = nn.Parameter(torch.randn(num_queries, dim))
        self.query_feat = nn.Parameter(torch.randn(num_queries, dim)) if query_init == "learned" else None
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
        )  # fmt: skip
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """DETR's xavier-uniform for the decoder layers' matrices, ``c2_xavier_fill`` for the input projection
        (see the module docstring)."""
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if isinstance(self.input_proj, nn.Conv2d):
            nn.init.kaiming_uniform_(self.input_proj.weight, a=1)
            nn.init.zeros_(self.input_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        memory = self.input_proj(x).flatten(2).transpose(1, 2)  # [B, L, D]
        pos = sine_position_encoding(h, w, memory.shape[-1], x.device)[None].to(memory.dtype)
        query_pos = self.query_embed[None].to(memory.dtype)
        if self.query_feat is None:
            tgt = torch.zeros(b, *self.query_embed.shape, device=x.device, dtype=memory.dtype)
        else:
            tgt = self.query_feat[None].expand(b, -1, -1).to(memory.dtype)
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, pos)
        return self.mask_embed(self.norm(tgt))


def pointwise(mlp: nn.Module, x: Tensor) -> Tensor:
    """Apply ``mlp`` (``[N, C] -> [N, D]``) at every position of ``x [B, C, L]`` -> ``[B, D, L]``.

    The same as FRA's 1x1-Conv1d MLP: BatchNorm statistics are taken over batch and positions alike.
    """
    b, c, length = x.shape
    return mlp(x.transpose(1, 2).reshape(b * length, c)).reshape(b, length, -1).transpose(1, 2)


class RegionNeck(nn.Module):
    """Global projection, per-pixel projection, mask-query decoder and region projection (see the module
    docstring). :meth:`forward` returns the global embedding ``[B, D]``, region embeddings ``[B, Q, D]``,
    the cosine scores ``dots [B, Q, h, w]`` and the ``heatmaps`` (softmax over ``Q``) ``[B, Q, h, w]``."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        dim: int,
        num_queries: int,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        decoder_ffn_dim: int | None = None,
        decoder_dropout: float = 0.1,
        query_init: str = "zeros",
        proto_momentum: float = 0.9,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.project = mlp_head(in_dim, hidden_dim, dim, last_bn=False, init="kaiming")
        self.project_pixel = mlp_head(in_dim, hidden_dim, dim, last_bn=False, init="kaiming")
        self.project_region = mlp_head(in_dim, hidden_dim, dim, last_bn=False, init="kaiming")
        self.decoder = MaskQueryDecoder(
            in_dim, dim, num_queries, decoder_layers, decoder_heads, decoder_ffn_dim or dim, decoder_dropout,
            query_init,
        )  # fmt: skip
        self.proto_momentum = proto_momentum
        self.scale = scale
        self.register_buffer("proto", torch.randn(num_queries, dim))

    @property
    def num_queries(self) -> int:
        return self.proto.shape[0]

    def scores(self, pixels: Tensor, mask_embed: Tensor | None) -> Tensor:
        """Cosines ``[B, Q, h, w]`` of pixel projections ``[B, D, h, w]`` with the batch-averaged mask
        embeddings ``[B, Q, D]`` (training; the average also refreshes ``proto``) or with ``proto``."""
        if mask_embed is None:
            return torch.einsum("qc,bchw->bqhw", F.normalize(self.proto, dim=1), F.normalize(pixels, dim=1))
        mean = all_gather_with_grad(mask_embed.mean(0, keepdim=True)).mean(0)  # [Q, D], global batch
        with torch.no_grad():
            self.proto.lerp_(mean.detach().to(self.proto), 1 - self.proto_momentum)
        return torch.einsum("qc,bchw->bqhw", F.normalize(mean, dim=1), F.normalize(pixels, dim=1))

    def pixel_embeddings(self, x: Tensor) -> Tensor:
        """The per-pixel projections ``[B, D, h, w]`` of ``x [B, C, h, w]`` (what the heatmaps score)."""
        b, _, h, w = x.shape
        return pointwise(self.project_pixel, x.flatten(2)).reshape(b, -1, h, w)

    def forward(self, x: Tensor, use_batch: bool = True) -> dict[str, Tensor]:
        """``x [B, C, h, w]``; ``use_batch`` scores against the batch's mask embeddings (training)."""
        flat = x.flatten(2)  # [B, C, L]
        global_embedding = self.project(flat.mean(2))
        pixels = self.pixel_embeddings(x)
        dots = self.scores(pixels, self.decoder(x) if use_batch else None)
        heatmaps = (dots / self.scale).softmax(dim=1)
        weights = heatmaps + HEATMAP_EPS
        weights = weights / weights.sum(dim=(2, 3), keepdim=True)
        pooled = torch.einsum("bcl,bql->bcq", flat, weights.flatten(2))  # [B, C, Q]
        regions = pointwise(self.project_region, pooled).transpose(1, 2)  # [B, Q, D]
        return {"global": global_embedding, "regions": regions, "dots": dots, "heatmaps": heatmaps}
