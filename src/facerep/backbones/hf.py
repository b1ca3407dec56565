"""Hugging Face transformers ViT layouts, converted to facerep's (timm) ViT key names.

Three vision towers are read, each as a :class:`HFLayout`:

* ``vit``: ``ViTModel`` (also ``ViTMAEModel`` and ``*ForImageClassification``, prefix ``vit.``); LayerNorm
  epsilon 1e-12, GELU;
* ``dinov2``: ``Dinov2Model`` (prefix ``dinov2.`` inside classification models) with layer scale
  (``layer_scale1/2.lambda1``); the plain MLP only (SwiGLU and register tokens are refused); 1e-6, GELU;
* ``clip``: ``CLIPVisionModel`` / ``CLIPModel`` (prefix ``vision_model.`` in ``CLIPModel`` and in files of
  transformers 4): class embedding ``[D]``, patch projection without bias, ``pre_layrnorm`` before the
  blocks, ``post_layernorm`` as the final norm (Hugging Face applies it to the pooled CLS only,
  facerep's ``forward_features`` to every token); 1e-5, QuickGELU.

Separate query/key/value Linears become timm's fused ``attn.qkv`` (a missing q/k/v bias is zero);
poolers, classifiers, text towers and mask tokens are dropped. A ``config.json`` beside the weights
gives heads, epsilon, activation and image size; without one they are inferred (heads from the ViT
table) or take the layout's defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from facerep.backbones.base import short_list
from facerep.backbones.vit import ACTIVATIONS, POS_ANTIALIAS
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line

HF_CONFIG = "config.json"


def _params(mapping: dict[str, str]) -> dict[str, str]:
    """``{hf module: timm module}`` -> the same for their ``.weight`` and ``.bias``."""
    return {f"{hf}.{p}": f"{timm}.{p}" for hf, timm in mapping.items() for p in ("weight", "bias")}


@dataclass(frozen=True)
class HFLayout:
    """Where one transformers vision tower keeps each ViT weight."""

    name: str
    reads: str  # for messages and the format table
    prefixes: tuple[str, ...]  # where the tower's keys start, tried in order
    marker: str  # a key (after the prefix) that only this layout has
    layers: str  # block keys: f"{layers}{N}.{param}"
    outer: dict[str, str]  # non-block keys -> timm keys
    block: dict[str, str]  # block params -> timm block params (q/k/v excluded)
    qkv: tuple[str, str, str]  # the query, key and value Linears of a block
    ignored: tuple[str, ...]  # key prefixes (after the tower prefix) that are not part of the backbone
    norm_eps: float
    act: str


_EMBED = _params({"embeddings.patch_embeddings.projection": "patch_embed.proj", "layernorm": "norm"}) | {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
}
_HF_ATTENTION = ("attention.attention.query", "attention.attention.key", "attention.attention.value")

HF_LAYOUTS: dict[str, HFLayout] = {
    layout.name: layout
    for layout in (
        HFLayout(
            "vit", "Hugging Face ViTModel ('embeddings.*', 'encoder.layer.N.layernorm_before')",
            ("vit.", ""), "encoder.layer.0.layernorm_before.weight", "encoder.layer.", _EMBED,
            _params({
                "layernorm_before": "norm1", "layernorm_after": "norm2",
                "attention.output.dense": "attn.proj",
                "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
            }),
            _HF_ATTENTION, ("embeddings.mask_token", "pooler."), 1e-12, "gelu",
        ),
        HFLayout(
            "dinov2", "Hugging Face Dinov2Model ('embeddings.*', 'encoder.layer.N.norm1', layer scale)",
            ("dinov2.", ""), "encoder.layer.0.norm1.weight", "encoder.layer.", _EMBED,
            _params({
                "norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
                "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
            }) | {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"},
            _HF_ATTENTION, ("embeddings.mask_token",), 1e-6, "gelu",
        ),
        HFLayout(
            "clip", "Hugging Face CLIPVisionModel ('vision_model.embeddings.class_embedding', ...)",
            ("vision_model.", ""), "embeddings.class_embedding", "encoder.layers.",
            _params({"pre_layrnorm": "norm_pre", "post_layernorm": "norm"}) | {
                "embeddings.class_embedding": "cls_token",
                "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
                "embeddings.position_embedding.weight": "pos_embed",
            },
            _params({
                "layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
                "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
            }),
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("embeddings.position_ids",),
            1e-5, "quick_gelu",
        ),
    )
}  # fmt: skip


def tower_prefix(layout: HFLayout, keys: Mapping[str, Any]) -> str | None:
    """The prefix under which ``keys`` hold ``layout``'s vision tower, or ``None``."""
    return next((p for p in layout.prefixes if f"{p}{layout.marker}" in keys), None)


def _fuse_qkv(parts: dict[int, dict[str, Tensor]], source: str) -> dict[str, Tensor]:
    """Per block ``{"q.weight", "k.bias", ...}`` -> timm's ``blocks.N.attn.qkv.{weight,bias}``."""
    fused = {}
    for index, block in parts.items():
        weights = [block.get(f"{name}.weight") for name in "qkv"]
        if any(w is None for w in weights):
            raise CheckpointError(f"{source}: block {index} lacks one of its query/key/value weights")
        biases = [block.get(f"{n}.bias", torch.zeros(len(w))) for n, w in zip("qkv", weights, strict=True)]
        fused[f"blocks.{index}.attn.qkv.weight"] = torch.cat(weights)
        fused[f"blocks.{index}.attn.qkv.bias"] = torch.cat(biases)
    return fused


def hf_to_timm(state: Mapping[str, Tensor], layout: HFLayout, source: str) -> dict[str, Tensor]:
    """The vision tower of a transformers state dict in timm ViT key names (see the module docstring)."""
    prefix = tower_prefix(layout, state)
    if prefix is None:
        raise CheckpointError(f"{source}: no {layout.marker!r} key: not a {layout.reads}")
    out: dict[str, Tensor] = {}
    qkv: dict[int, dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        index, _, param = key.removeprefix(layout.layers).partition(".")
        module, _, kind = param.rpartition(".")
        if key in layout.outer:
            out[layout.outer[key]] = value
        elif key.startswith(layout.ignored):
            continue
        elif key.startswith(layout.layers) and index.isdigit() and param in layout.block:
            out[f"blocks.{index}.{layout.block[param]}"] = value
        elif key.startswith(layout.layers) and index.isdigit() and module in layout.qkv:
            qkv.setdefault(int(index), {})[f"{'qkv'[layout.qkv.index(module)]}.{kind}"] = value
        else:
            unknown.append(key)
    if any(".mlp.weights_in." in k for k in unknown):
        raise CheckpointError(f"{source}: a SwiGLU MLP (mlp.weights_in/out) is not supported; plain MLP only")
    if unknown:
        raise CheckpointError(f"{source}: {layout.name} keys facerep cannot place: {short_list(unknown)}")
    out |= _fuse_qkv(qkv, source)
    dim = out["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in out else -1
    for key in ("cls_token", "pos_embed"):
        if key in out:
            out[key] = out[key].reshape(1, -1, dim)
    return out


def _image_size(value: Any, source: str) -> int | None:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{source}: config.json image_size {value} is not square")
        value = value[0]
    return int(value) if isinstance(value, int) else None


def hf_record(layout: HFLayout, weights: Path, source: str) -> dict[str, Any]:
    """The arch fields weights cannot tell, from ``config.json`` beside ``weights`` (the layout's defaults
    where it is absent), plus the note that transformers resamples position grids without antialiasing."""
    record: dict[str, Any] = {"norm_eps": layout.norm_eps, "act": layout.act, POS_ANTIALIAS: False}
    path = weights.parent / HF_CONFIG
    if not path.is_file():
        return record
    try:
        config = json.loads(path.read_text())
        config = config.get("vision_config") or config  # CLIPModel nests its vision tower's settings
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{source}: unreadable {path}: {one_line(err)}") from err
    if config.get("use_swiglu_ffn"):
        raise CheckpointError(f"{source}: {path} sets use_swiglu_ffn; only the plain MLP is supported")
    act = config.get("hidden_act", layout.act)
    if act not in ACTIVATIONS:
        raise CheckpointError(
            f"{source}: {path} hidden_act {act!r} is not supported (expected {' or '.join(ACTIVATIONS)})"
        )
    found = {
        "num_heads": config.get("num_attention_heads"),
        "norm_eps": config.get("layer_norm_eps"),
        "act": act,
        "img_size": _image_size(config.get("image_size"), source),
        "layer_scale": config.get("layerscale_value"),
    }
    return record | {k: v for k, v in found.items() if v is not None}
