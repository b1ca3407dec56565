"""The OpenAI CLIP checkpoint layout (OpenAI CLIP, open_clip, FaRL) and facerep's (timm) ViT key names.

An OpenAI-layout state dict holds the image tower under ``visual.`` and the text tower at the top level
(``token_embedding``, ``positional_embedding``, ``transformer.resblocks.N``, ``ln_final``,
``text_projection``, ``logit_scale``). The image tower maps to timm names as:

=============================================  ================================================
OpenAI (after ``visual.``)                     timm
=============================================  ================================================
``conv1.weight`` ``[D, 3, p, p]``              ``patch_embed.proj.weight`` (no bias: pre-norm)
``class_embedding`` ``[D]``                    ``cls_token`` ``[1, 1, D]``
``positional_embedding`` ``[1 + G*G, D]``      ``pos_embed`` ``[1, 1 + G*G, D]``
``ln_pre`` / ``ln_post``                       ``norm_pre`` / ``norm`` (applied to every token)
``transformer.resblocks.N.attn.in_proj_*``     ``blocks.N.attn.qkv.*`` (same q, k, v row order)
``...attn.out_proj`` / ``ln_1`` / ``ln_2``     ``blocks.N.attn.proj`` / ``norm1`` / ``norm2``
``...mlp.c_fc`` / ``mlp.c_proj``               ``blocks.N.mlp.fc1`` / ``mlp.fc2``
``proj`` ``[D, E]``                            not part of the backbone (the CLIP image projection)
=============================================  ================================================

facerep's own CLIP files may also hold ``conv1.bias`` and ``ls_1/ls_2.gamma`` (open_clip's layer-scale
names) for image towers that are not CLIP-shaped; their metadata records the architecture. FaRL files
also keep a masked-image-modelling head under ``visual.`` (``mask_token``, ``lm_transformer.*``,
``ln_lm``, ``lm_head``; facerep's FaRL runs write theirs there too, :func:`mim_to_clip`): readers ignore
it, and depths are counted only from keys that start with ``visual.transformer.resblocks.N.`` (image) and
``transformer.resblocks.N.`` (text). CLIP ViTs use QuickGELU, LayerNorm epsilon 1e-5, a learned position
embedding and 64-wide attention heads (:func:`clip_records`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from facerep.backbones.vit import CLIP_TOWER
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line

__all__ = [
    "CLIP_FORMAT",
    "CLIP_MARKER",
    "HEAD_WIDTH",
    "MIM_PREFIXES",
    "OPENAI_EXTRAS",
    "TEXT_BLOCKS",
    "VISION",
    "VISION_BLOCKS",
    "block_indices",
    "clip_records",
    "clip_to_vit",
    "mim_to_clip",
    "vit_to_clip",
]

CLIP_FORMAT = "facerep-clip"  # the safetensors metadata "format" of files written by facerep's save_clip
CLIP_MARKER = "visual.conv1.weight"  # the key that marks an OpenAI-layout state dict
VISION = "visual."
VISION_BLOCKS = "visual.transformer.resblocks."
TEXT_BLOCKS = "transformer.resblocks."
HEAD_WIDTH = 64  # CLIP's attention head width: heads = width // 64 in both towers
# FaRL's masked-image-modelling head (after "visual."): not part of the image tower
MIM_PREFIXES = ("mask_token", "lm_transformer.", "ln_lm.", "lm_head.")
# integers OpenAI's TorchScript models keep in their state dicts (not weights)
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _params(mapping: dict[str, str]) -> dict[str, str]:
    """``{openai module: timm module}`` -> the same for their ``.weight`` and ``.bias``."""
    return {f"{a}.{p}": f"{b}.{p}" for a, b in mapping.items() for p in ("weight", "bias")}


# image tower keys after "visual." -> timm keys
_OUTER = _params({"conv1": "patch_embed.proj", "ln_pre": "norm_pre", "ln_post": "norm"}) | {
    "class_embedding": "cls_token",
    "positional_embedding": "pos_embed",
}
# block keys after "transformer.resblocks.N." -> after "blocks.N."
_BLOCK = _params({
    "attn.out_proj": "attn.proj", "ln_1": "norm1", "ln_2": "norm2",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}) | {
    "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma",
}  # fmt: skip
_OPTIONAL = ("conv1.bias", "ln_pre.weight", "ln_pre.bias")  # outer keys not every tower has
_OPTIONAL_BLOCK = ("ls_1.gamma", "ls_2.gamma")
_TIMM_OUTER = {v: k for k, v in _OUTER.items()}
_TIMM_BLOCK = {v: k for k, v in _BLOCK.items()}
_TIMM_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
# facerep's MIM head (facerep.models.mim.MIMHead) -> FaRL's names after "visual." (blocks: as the tower's)
_MIM_OUTER = {"mask_token": "mask_token"} | _params({"norm": "ln_lm", "head": "lm_head"})


def block_indices(keys: Iterable[str], prefix: str) -> list[int]:
    """Sorted block indices ``N`` of the keys that start with ``f"{prefix}N."``."""
    found = set()
    for key in keys:
        if isinstance(key, str) and key.startswith(prefix):
            index = key[len(prefix) :].partition(".")[0]
            if index.isdigit():
                found.add(int(index))
    return sorted(found)


def _expected_shapes(state: Mapping[str, Tensor], depth: int, source: str) -> dict[str, tuple[int, ...]]:
    """Every image tower key (after ``visual.``) with the shape its width ``D`` and MLP width imply."""
    conv = state["conv1.weight"]
    if conv.ndim != 4 or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise CheckpointError(f"{source}: CLIP key visual.conv1.weight has shape {list(conv.shape)}; "
                              "expected [D, 3, p, p]")  # fmt: skip
    dim = int(conv.shape[0])
    pos = state["positional_embedding"]
    tokens = int(pos.shape[0]) if pos.ndim == 2 else 0
    grid = round(max(tokens - 1, 0) ** 0.5)
    if pos.ndim != 2 or pos.shape[1] != dim or grid < 1 or grid * grid != tokens - 1:
        raise CheckpointError(f"{source}: CLIP key visual.positional_embedding has shape {list(pos.shape)}; "
                              f"expected [1 + G*G, {dim}]")  # fmt: skip
    fc = state.get("transformer.resblocks.0.mlp.c_fc.weight")
    hidden = int(fc.shape[0]) if isinstance(fc, Tensor) and fc.ndim == 2 else 4 * dim
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": tuple(conv.shape), "conv1.bias": (dim,),
        "class_embedding": (dim,), "positional_embedding": (tokens, dim),
        "ln_pre.weight": (dim,), "ln_pre.bias": (dim,), "ln_post.weight": (dim,), "ln_post.bias": (dim,),
    }  # fmt: skip
    block = {
        "attn.in_proj_weight": (3 * dim, dim), "attn.in_proj_bias": (3 * dim,),
        "attn.out_proj.weight": (dim, dim), "attn.out_proj.bias": (dim,),
        "ln_1.weight": (dim,), "ln_1.bias": (dim,), "ln_2.weight": (dim,), "ln_2.bias": (dim,),
        "mlp.c_fc.weight": (hidden, dim), "mlp.c_fc.bias": (hidden,),
        "mlp.c_proj.weight": (dim, hidden), "mlp.c_proj.bias": (dim,),
        "ls_1.gamma": (dim,), "ls_2.gamma": (dim,),
    }  # fmt: skip
    for index in range(depth):
        shapes |= {f"transformer.resblocks.{index}.{k}": v for k, v in block.items()}
    return shapes


def clip_to_vit(state: Mapping[str, Any], source: str) -> tuple[dict[str, Tensor], Tensor | None]:
    """The image tower of an OpenAI-layout state dict in timm ViT names, and ``visual.proj`` ``[D, E]``
    (``None`` when absent). The MIM head is ignored; other unknown ``visual.`` keys, missing keys, wrong
    shapes and blocks that are not ``0..N-1`` are one-line :class:`CheckpointError` s naming the key."""
    tower = {k[len(VISION) :]: v for k, v in state.items() if k.startswith(VISION)}
    tower = {k: v for k, v in tower.items() if not k.startswith(MIM_PREFIXES)}
    if "class_embedding" not in tower and any(k.startswith(("layer1.", "attnpool.")) for k in tower):
        raise CheckpointError(f"{source}: a CLIP ResNet image tower (visual.layer1, visual.attnpool) is not "
                              "supported; only ViT towers are")  # fmt: skip
    for key in ("conv1.weight", "class_embedding", "positional_embedding"):
        if not isinstance(tower.get(key), Tensor):
            raise CheckpointError(f"{source}: CLIP image tower lacks the tensor visual.{key}")
    depth = block_indices(state, VISION_BLOCKS)
    if not depth or depth != list(range(len(depth))):
        raise CheckpointError(f"{source}: expected CLIP vision blocks {VISION_BLOCKS}0..N-1, found {depth}")
    proj = tower.pop("proj", None)
    shapes = _expected_shapes(tower, len(depth), source)
    optional = {k for k in shapes if k in _OPTIONAL or k.endswith(_OPTIONAL_BLOCK)}
    missing = [k for k in shapes if k not in tower and k not in optional]
    if missing:
        raise CheckpointError(
            f"{source}: CLIP image tower lacks visual.{missing[0]} ({len(missing)} keys missing)"
        )
    unknown = [k for k in tower if k not in shapes]
    if unknown:
        raise CheckpointError(f"{source}: CLIP image tower key visual.{unknown[0]} is not understood "
                              f"({len(unknown)} unknown keys)")  # fmt: skip
    for key, value in tower.items():
        expected = shapes[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != expected:
            got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CheckpointError(
                f"{source}: CLIP key visual.{key} has shape {got}; expected {list(expected)}"
            )
    dim = int(tower["conv1.weight"].shape[0])
    if proj is not None and (not isinstance(proj, Tensor) or proj.ndim != 2 or proj.shape[0] != dim):
        got = list(proj.shape) if isinstance(proj, Tensor) else type(proj).__name__
        raise CheckpointError(f"{source}: CLIP key visual.proj has shape {got}; expected [{dim}, E]")
    out: dict[str, Tensor] = {}
    for key, value in tower.items():
        if key in _OUTER:
            out[_OUTER[key]] = value
        else:
            index, _, param = key[len("transformer.resblocks.") :].partition(".")
            out[f"blocks.{index}.{_BLOCK[param]}"] = value
    out["cls_token"] = out["cls_token"].reshape(1, 1, dim)
    out["pos_embed"] = out["pos_embed"].reshape(1, -1, dim)
    return out, proj


def _timm_to_openai(
    state: Mapping[str, Tensor], outer: Mapping[str, str], blocks: str, what: str
) -> dict[str, Tensor]:
    """timm-named tensors -> ``visual.``-prefixed OpenAI names: ``outer`` maps whole keys, ``blocks.N.*`` go
    to ``f"{blocks}N.*"`` with the block names renamed. Keys without an OpenAI name are a ``ValueError``
    (a programming error) naming ``what`` was converted."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _TIMM_BLOCK_RE.match(key)
        if key in outer:
            name = outer[key]
        elif match and match[2] in _TIMM_BLOCK:
            name = f"{blocks}{match[1]}.{_TIMM_BLOCK[match[2]]}"
        else:
            raise ValueError(f"{what}: key {key!r} has no OpenAI CLIP name")
        out[f"{VISION}{name}"] = value
    return out


def vit_to_clip(state: Mapping[str, Tensor], proj: Tensor | None = None) -> dict[str, Tensor]:
    """A facerep (timm-named) ViT state dict, and the image projection ``[D, E]``, in the OpenAI layout
    (``visual.*`` keys). Keys without an OpenAI name are a ``ValueError`` (a programming error)."""
    out = _timm_to_openai(state, _TIMM_OUTER, "transformer.resblocks.", "vit_to_clip")
    dim = out[f"{VISION}conv1.weight"].shape[0]
    out[f"{VISION}class_embedding"] = out[f"{VISION}class_embedding"].reshape(dim)
    out[f"{VISION}positional_embedding"] = out[f"{VISION}positional_embedding"].reshape(-1, dim)
    if proj is not None:
        out[f"{VISION}proj"] = proj
    return out


def mim_to_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A :class:`facerep.models.mim.MIMHead` state dict (``mask_token`` ``[D]``, ``blocks.N.*``, ``norm``,
    ``head``) under FaRL's names: ``visual.mask_token``, ``visual.lm_transformer.resblocks.N.*`` (CLIP block
    names), ``visual.ln_lm``, ``visual.lm_head``, as FaRL's ``VisualTransformer`` holds its MIM head."""
    return _timm_to_openai(state, _MIM_OUTER, "lm_transformer.resblocks.", "mim_to_clip")


def _clip_vision_record(width: int, source: str) -> dict[str, Any]:
    """The :class:`~facerep.backbones.vit.ViTArch` fields a CLIP image tower's weights cannot tell:
    :data:`~facerep.backbones.vit.CLIP_TOWER` (pre-norm, QuickGELU, LayerNorm epsilon 1e-5, a learned,
    trainable position embedding) and ``width // 64`` heads."""
    if width % HEAD_WIDTH:
        raise CheckpointError(f"{source}: CLIP image width {width} is not a multiple of {HEAD_WIDTH}")
    return {**CLIP_TOWER, "num_heads": width // HEAD_WIDTH}


def _file_records(metadata: Mapping[str, str], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The image tower's arch record (with ``family``) and the text tower's fields from the metadata of a
    file :func:`facerep.models.clip.save_clip` wrote."""
    try:
        vision, text = json.loads(metadata["vision"]), json.loads(metadata["text"])
        if not isinstance(vision, dict) or not isinstance(text, dict):
            raise TypeError("the vision and text records must be JSON objects")
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: unreadable {CLIP_FORMAT} metadata: {one_line(err)}") from err
    return vision, text


def clip_records(
    tower: Mapping[str, Tensor], metadata: Mapping[str, str] | None, source: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The image tower's arch record and the text tower's recorded fields of a CLIP file: both from the
    metadata of a file :func:`facerep.models.clip.save_clip` wrote, else CLIP's conventions for the image
    tower (``tower``: its timm-named weights) and ``None`` for the text (inferred from its weights)."""
    if metadata and metadata.get("format") == CLIP_FORMAT:
        return _file_records(metadata, source)
    return _clip_vision_record(int(tower["patch_embed.proj.weight"].shape[0]), source), None
