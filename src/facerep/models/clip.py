"""A CLIP model with facerep's ViT as its image tower (FaRL, OpenAI CLIP, open_clip), and its files.

:class:`CLIPModel` pairs a :class:`~facerep.backbones.vit.MaskedViT` (its final-norm CLS token times
``visual_proj``) with CLIP's :class:`~facerep.models.text.TextTransformer`. Files use the OpenAI CLIP
layout (:mod:`facerep.backbones.clip_layout`), so :func:`load_clip` reads FaRL's ``{"state_dict": sd}``
releases, OpenAI CLIP / open_clip state dicts (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``) and the
``.safetensors`` files :func:`save_clip` writes (OpenAI keys plus metadata: ``format`` =
``facerep-clip``, ``vision`` = the image tower's arch record, ``text`` = the :class:`TextArch` fields,
``embed_dim``, and JSON-encoded ``extra`` entries; a record the weights contradict is refused before a tower
is built). :func:`facerep.load_backbone` reads the same files' image towers.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerep.backbones.base import FAMILIES, LoadOptions, arch_record, check_record, load_strict, short_list
from facerep.backbones.clip_layout import (
    CLIP_FORMAT,
    CLIP_MARKER,
    MIM_PREFIXES,
    OPENAI_EXTRAS,
    TEXT_BLOCKS,
    VISION,
    block_indices,
    clip_records,
    clip_to_vit,
    vit_to_clip,
)
from facerep.backbones.io import clip_state, read_checkpoint_file
from facerep.backbones.vit import MaskedViT
from facerep.data.tokenizer import Tokenizer
from facerep.models.text import TextArch, TextTransformer, infer_text_arch, text_state
from facerep.runtime.atomic import atomic_write_bytes
from facerep.runtime.checkpoint import CheckpointError

__all__ = ["CLIP_FILE", "CLIPModel", "clip_file", "clip_state_dict", "load_clip", "save_clip"]

CLIP_FILE = "clip.safetensors"  # what image-text runs (FaRL) write beside backbone.safetensors
LOGIT_SCALE_INIT = math.log(1 / 0.07)
_RESERVED = ("format", "vision", "text", "embed_dim")  # save_clip's own metadata; the rest is ``extra``
LOGIT_SCALE_MAX = 100.0  # CLIP clamps the temperature's inverse to at most 100


class CLIPModel(nn.Module):
    """Image and text towers projected into one ``embed_dim``-wide space, and a learned logit scale."""

    def __init__(self, visual: MaskedViT, text_arch: TextArch, embed_dim: int | None = None) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim if embed_dim is not None else text_arch.embed_dim)
        if text_arch.embed_dim != self.embed_dim:
            text_arch = replace(text_arch, embed_dim=self.embed_dim)
        self.visual = visual
        width = visual.embed_dim
        self.visual_proj = nn.Parameter(torch.randn(width, self.embed_dim) * width**-0.5)
        self.text = TextTransformer(text_arch)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.tokenizer = Tokenizer(text_arch.context_length)
        # what the file recorded beside the weights (save_clip's ``extra``: a FaRL run's mean/std)
        self.recorded: dict[str, Any] = {}

    @property
    def text_arch(self) -> TextArch:
        return self.text.arch

    def project_image(self, tokens: Tensor) -> Tensor:
        """Final-norm image tokens ``[N, 1 + L, D]`` (``visual.forward_features``) -> ``[N, E]``: the CLS
        token times ``visual_proj``, so a caller that already ran the image tower reuses its output."""
        return tokens[:, 0] @ self.visual_proj

    def encode_image(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` -> image features ``[N, E]`` (not normalised)."""
        return self.project_image(self.visual.forward_features(images))

    def encode_text(self, ids: Tensor) -> Tensor:
        """Token ids ``[N, T]`` -> text features ``[N, E]`` (not normalised)."""
        return self.text(ids)

    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Captions -> ids ``[N, context_length]`` (int64) on the model's device."""
        return self.tokenizer(texts).to(self.logit_scale.device)

    def logit_scale_value(self) -> Tensor:
        """``exp(logit_scale)``, clamped to at most 100 as CLIP does."""
        return self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def forward(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(L2-normalised image features ``[N, E]``, L2-normalised text features ``[M, E]``, logit scale)."""
        image = F.normalize(self.encode_image(images), dim=-1)
        text = F.normalize(self.encode_text(ids), dim=-1)
        return image, text, self.logit_scale_value()


def _unwrap(model: nn.Module) -> CLIPModel:
    """The :class:`CLIPModel` inside DDP (``.module``) / ``torch.compile`` (``._orig_mod``) wrappers."""
    while not isinstance(model, CLIPModel):
        inner = next((getattr(model, a) for a in ("module", "_orig_mod") if hasattr(model, a)), None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"expected a CLIPModel, got {type(model).__name__}")
        model = inner
    return model


def clip_state_dict(model: CLIPModel) -> dict[str, Tensor]:
    """The model's weights in the OpenAI CLIP layout (``visual.*``, the text keys, ``logit_scale``), on the
    CPU and detached."""
    model = _unwrap(model)
    state = vit_to_clip(model.visual.state_dict(), model.visual_proj)
    state |= model.text.state_dict() | {"logit_scale": model.logit_scale}
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_clip(
    model: CLIPModel,
    path: str | Path,
    extra: dict[str, Any] | None = None,
    mim_head: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write ``path`` (safetensors, OpenAI layout) atomically, with the metadata :func:`load_clip` needs;
    each ``extra`` value is stored JSON-encoded under its key. ``mim_head``: FaRL's masked-image-modelling
    head under its ``visual.`` names (:func:`~facerep.backbones.clip_layout.mim_to_clip`), written beside the
    towers as FaRL's releases hold it (readers ignore it). Returns the path."""
    model = _unwrap(model)
    stray = [k for k in mim_head or {} if not k.startswith(tuple(VISION + p for p in MIM_PREFIXES))]
    if stray:
        raise ValueError(f"save_clip: mim_head keys must be FaRL's visual.* MIM names, got {stray[:3]}")
    metadata = {
        "format": CLIP_FORMAT,
        "vision": json.dumps(arch_record(model.visual.arch)),
        "text": json.dumps(asdict(model.text_arch)),
        "embed_dim": str(model.embed_dim),
    }
    clash = sorted(set(extra or {}) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_clip: extra may not override reserved keys {clash}")
    metadata |= {str(k): json.dumps(v) for k, v in (extra or {}).items()}
    mim = {k: v.detach().to("cpu").contiguous() for k, v in (mim_head or {}).items()}
    data = safetensors.torch.save(clip_state_dict(model) | mim, metadata=metadata)
    return atomic_write_bytes(path, data)


def _ignored(state: Mapping[str, Any], text: Mapping[str, Any]) -> list[str]:
    """Keys outside both towers and ``logit_scale`` (OpenAI's integer extras aside)."""
    known = {"logit_scale", *OPENAI_EXTRAS, *text}
    return [k for k in state if k not in known and not k.startswith(VISION)]


def clip_file(path: str | Path) -> Path:
    """``path``, or the :data:`CLIP_FILE` inside it when it is a run directory."""
    path = Path(path)
    return path / CLIP_FILE if path.is_dir() and (path / CLIP_FILE).is_file() else path


def _recorded(metadata: Mapping[str, str], source: str) -> dict[str, Any]:
    """The ``extra`` entries :func:`save_clip` stored (JSON-decoded)."""
    try:
        return {k: json.loads(v) for k, v in metadata.items() if k not in _RESERVED}
    except ValueError as err:
        raise CheckpointError(f"{source}: unreadable {CLIP_FORMAT} metadata: {err}") from err


def _text_held(state: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """The :class:`TextArch` fields the text tower's weights fix, each with the tensor showing it (for
    :func:`~facerep.backbones.base.check_record`; malformed tensors are left to the strict load)."""
    held: dict[str, tuple[Any, str]] = {}
    shaped = {
        "token_embedding.weight": ("vocab_size", "width"),
        "positional_embedding": ("context_length", "width"),
        "text_projection": ("width", "embed_dim"),
    }
    for key, names in shaped.items():
        value = state.get(key)
        if isinstance(value, Tensor) and value.ndim == 2:
            for name, size in zip(names, value.shape, strict=True):
                held.setdefault(name, (int(size), f"{key} has shape {list(value.shape)}"))
    layers = len(block_indices(state, TEXT_BLOCKS))
    held["layers"] = (layers, f"the weights hold text blocks {TEXT_BLOCKS}0-{layers - 1}")
    return held


def load_clip(path: str | Path, *, img_size: int | None = None) -> CLIPModel:
    """Read a CLIP model (see the module docstring), in eval mode; ``model.recorded`` holds what a facerep
    file recorded beside the weights (``save_clip``'s ``extra``), else ``{}``.

    Args:
        path: a facerep ``clip.safetensors`` (or the run directory holding it), a FaRL release
            (``{"state_dict": sd}``) or an OpenAI CLIP / open_clip state dict. FaRL's masked-image-modelling
            head is ignored.
        img_size: image size to build the image tower for; its position embedding is resampled (bicubic)
            as :func:`facerep.load_backbone` does. By default the size the file was stored with.
    """
    source = str(path)
    obj, metadata = read_checkpoint_file(clip_file(path))
    state = clip_state(obj) if isinstance(obj, Mapping) else None
    if state is None:
        top = short_list([str(k) for k in obj]) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{source}: not an OpenAI-layout CLIP checkpoint (no {CLIP_MARKER}); found {top}"
        )
    tower, proj = clip_to_vit(state, source)
    if proj is None:
        raise CheckpointError(f"{source}: CLIP image tower lacks the projection visual.proj")
    vision, fields = clip_records(tower, metadata, source)
    if fields is None:
        text_arch = infer_text_arch(state, source)
    else:
        check_record(fields, _text_held(state), source)
        try:
            text_arch = TextArch(**fields)
        except TypeError as err:
            raise CheckpointError(f"{source}: unreadable {CLIP_FORMAT} text record {fields}") from err
    if proj.shape[1] != text_arch.embed_dim:
        raise CheckpointError(
            f"{source}: CLIP key visual.proj has shape {list(proj.shape)}; "
            f"expected [D, {text_arch.embed_dim}] (the text_projection width)"
        )
    scale = state.get("logit_scale")
    if not isinstance(scale, Tensor) or scale.numel() != 1:
        got = list(scale.shape) if isinstance(scale, Tensor) else "none"
        raise CheckpointError(f"{source}: CLIP key logit_scale must be a scalar tensor, got {got}")
    record = {k: v for k, v in vision.items() if k != "family"}
    visual = FAMILIES.get("vit").from_state(tower, record, source, LoadOptions(img_size=img_size))
    model = CLIPModel(visual, text_arch)
    if fields is not None:
        model.recorded = _recorded(metadata, source)
    text = text_state(state)
    load_strict(model.text, text, source, f"the CLIP text tower {text_arch}")
    ignored = _ignored(state, text)
    if ignored:
        warnings.warn(f"{source}: ignored keys outside the CLIP towers: {short_list(ignored)}", stacklevel=2)
    with torch.no_grad():
        model.visual_proj.copy_(proj)
        model.logit_scale.copy_(scale.reshape(()))
    return model.eval()
