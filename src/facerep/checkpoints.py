"""Read ViT backbones from the common self-supervised checkpoint formats, and export facerep's own.

:func:`load_backbone` accepts, and tells apart by their keys (:func:`detect_format`):

* ``mocov3`` -- MoCo v3: ``{"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*", ...}}``;
* ``mae`` -- MAE pre-training (encoder at top level plus ``mask_token`` / ``decoder_*``) or fine-tuning
  (encoder plus ``head.*``) checkpoints: ``{"model": sd}``;
* ``mcf`` -- official MCF: ``{"model": {"online_encoder.*", "target_encoder.*", "decoder_*", ...}}``;
* ``timm`` -- a timm ViT state dict (``.pth`` / ``.pt`` / ``.bin`` or ``.safetensors``), bare or wrapped
  in ``{"state_dict": sd}`` / ``{"model": sd}``;
* ``facerep-backbone`` -- ``backbone.safetensors`` written by :func:`export_backbone`;
* ``facerep-checkpoint`` -- a facerep training checkpoint (``"format": "facerep-checkpoint"``).

The architecture is inferred from the weights (see :func:`infer_arch`); only the number of heads cannot
be, so it comes from the file when recorded there, else from the standard ViT table, else ``num_heads=``.
Files are read with ``torch.load(weights_only=True)``: pickles that need arbitrary code are refused.
Every failure is a :class:`CheckpointError` whose one-line message starts with the file path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

from facerep.engine.atomic import atomic_write_bytes
from facerep.models.vit import VIT_SIZES, MaskedViT, ViTArch, build_vit, check_arch, heads_for_dim

__all__ = [
    "FORMATS",
    "CheckpointError",
    "detect_format",
    "export_backbone",
    "infer_arch",
    "load_backbone",
    "read_backbone_state",
    "timm_model_name",
]

FORMATS = ("mocov3", "mae", "mcf", "timm", "facerep-backbone", "facerep-checkpoint")
BACKBONE_FORMAT = "facerep-backbone"
CHECKPOINT_FORMAT = "facerep-checkpoint"
BACKBONE_FILE = "backbone.safetensors"
_REQUIRED = ("cls_token", "pos_embed", "patch_embed.proj.weight")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_MAE_DECODER = ("mask_token", "decoder_")
_EXPECTED_LAYOUTS = (
    "expected one of MoCo v3 ('state_dict' with 'module.base_encoder.*'), MAE/MCF ('model'), "
    "timm state dict, facerep backbone/checkpoint"
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of an unknown layout, or does not fit a ViT encoder."""


@dataclass
class _Encoder:
    """An encoder state dict in timm names, its source format and the recorded ``ViTArch`` fields (if any)."""

    state: dict[str, Tensor]
    fmt: str
    arch: dict[str, Any] | None = None


def _one_line(text: object, limit: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else type(text).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... (+{len(items) - limit} more)' if len(items) > limit else ''}]"


def _strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Entries whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _drop(sd: Mapping[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Remove a DistributedDataParallel ``module.`` prefix shared by every key."""
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        return _strip_prefix(sd, "module.")
    return dict(sd)


def _looks_like_vit(keys: list[str]) -> bool:
    return any(k in _REQUIRED or k.startswith(("blocks.", "patch_embed.")) for k in keys)


def _inner_state(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper, or ``obj`` itself."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def detect_format(obj: Any, *, metadata: Mapping[str, str] | None = None, source: str = "checkpoint") -> str:
    """Name the layout of a loaded checkpoint object: one of :data:`FORMATS`.

    Args:
        obj: what ``torch.load`` / ``safetensors.torch.load_file`` returned.
        metadata: the safetensors header metadata, if any (marks ``facerep-backbone`` files).
        source: the file name, used to start error messages.
    """
    if metadata and metadata.get("format") == BACKBONE_FORMAT:
        return BACKBONE_FORMAT
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if obj.get("format") == CHECKPOINT_FORMAT:
        return CHECKPOINT_FORMAT
    keys = [k for k in _inner_state(obj) if isinstance(k, str)]
    if any(k.startswith("online_encoder.") for k in keys):
        return "mcf"
    if any(k.startswith(("module.base_encoder.", "base_encoder.")) for k in keys):
        return "mocov3"
    plain = list(_strip_module(dict.fromkeys(keys)))
    if _looks_like_vit(plain):
        wrapped_by_model = isinstance(obj.get("model"), Mapping) and "state_dict" not in obj
        return "mae" if wrapped_by_model and any(k.startswith(_MAE_DECODER) for k in plain) else "timm"
    top = [str(k) for k in obj][:12]
    raise CheckpointError(
        f"{source}: unrecognised checkpoint layout; {_EXPECTED_LAYOUTS}; top-level keys: {top}"
    )


def _extract(obj: Any, fmt: str, source: str, metadata: Mapping[str, str] | None, path: Path) -> _Encoder:
    """Map a loaded object of format ``fmt`` to a timm-named encoder state dict."""
    arch: dict[str, Any] | None = None
    inner = _inner_state(obj)
    if fmt == "mocov3":
        prefix = "module.base_encoder." if any(k.startswith("module.") for k in inner) else "base_encoder."
        state = _drop(_strip_prefix(inner, prefix), ("head.",))
    elif fmt == "mcf":
        state = _drop(_strip_prefix(inner, "online_encoder."), ("fc.", "head."))
    elif fmt in ("mae", "timm"):
        state = _drop(_strip_module(inner), ("head.", *_MAE_DECODER))
    elif fmt == CHECKPOINT_FORMAT:
        if not isinstance(obj.get("model"), Mapping):
            raise CheckpointError(f"{source}: facerep checkpoint has no 'model' state dict")
        state = _strip_prefix(_strip_module(obj["model"]), "encoder.")
        arch = obj.get("arch") if isinstance(obj.get("arch"), Mapping) else None
    elif fmt == BACKBONE_FORMAT:
        state = dict(obj)
        arch = _recorded_arch(metadata, path)
    else:
        raise CheckpointError(f"{source}: unknown format {fmt!r}; expected one of {list(FORMATS)}")

    if not state:
        prefixes = sorted({str(k).split(".")[0] for k in inner})
        raise CheckpointError(
            f"{source}: {fmt} checkpoint holds no encoder weights; key prefixes: {prefixes[:12]}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{source}: non-tensor entries in the encoder state dict: {_short_list(bad)}")
    has_norm = any(k.startswith("norm.") for k in state)
    if any(k.startswith("fc_norm.") for k in state) and not has_norm:
        raise CheckpointError(
            f"{source}: this file uses global pooling (fc_norm, no final norm); "
            "not supported as a CLS-token backbone"
        )
    return _Encoder(state, fmt, dict(arch) if arch else None)


def _recorded_arch(metadata: Mapping[str, str] | None, path: Path) -> dict[str, Any] | None:
    """``ViTArch`` fields from the safetensors metadata, or from the JSON sidecar next to the file."""
    try:
        if metadata and "arch" in metadata:
            return json.loads(metadata["arch"])
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            arch = json.loads(sidecar.read_text()).get("arch")
            return arch if isinstance(arch, dict) else None
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable backbone architecture record: {_one_line(err)}") from err
    return None


def _load_file(path: Path, source: str) -> tuple[Any, dict[str, str] | None]:
    """Load a ``.safetensors`` file (with its metadata) or a ``torch.save`` file (weights only)."""
    if path.suffix == ".safetensors":
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
            return safetensors.torch.load_file(str(path), device="cpu"), metadata
        except Exception as err:
            raise CheckpointError(f"{source}: not a readable safetensors file: {_one_line(err)}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as err:
        if "weights only load failed" in str(err).lower():
            raise CheckpointError(
                f"{source}: this checkpoint can only be read with torch.load(weights_only=False), "
                "which facerep refuses (it can run arbitrary code); re-save its state dict with plain tensors"
            ) from err
        raise CheckpointError(f"{source}: not a readable torch checkpoint: {_one_line(err)}") from err


def _resolve(path: str | Path) -> Path:
    """The file to read: ``path`` itself, or ``path/backbone.safetensors`` for an export directory."""
    file = Path(path)
    if file.is_dir() and (file / BACKBONE_FILE).is_file():
        return file / BACKBONE_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return file


def _read_encoder(path: str | Path) -> _Encoder:
    file = _resolve(path)
    source = str(path)
    obj, metadata = _load_file(file, source)
    fmt = detect_format(obj, metadata=metadata, source=source)
    return _extract(obj, fmt, source, metadata, file)


def read_backbone_state(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """Read any supported checkpoint: (encoder state dict in timm key names, format name)."""
    enc = _read_encoder(path)
    return enc.state, enc.fmt


def infer_arch(
    state: Mapping[str, Tensor], num_heads: int | None = None, source: str = "checkpoint"
) -> ViTArch:
    """Infer the :class:`ViTArch` of a timm-named ViT state dict (heads from the ViT table by default)."""
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
    try:
        heads = num_heads if num_heads is not None else heads_for_dim(dim)
        return check_arch(ViTArch(dim, len(blocks), heads, patch, grid * patch, mlp_ratio))
    except ValueError as err:
        raise CheckpointError(f"{source}: {_one_line(err)}") from err


def _check_match(expected: Mapping[str, Tensor], got: Mapping[str, Tensor], source: str, what: str) -> None:
    """Raise a one-line error listing missing / unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k} file {list(got[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    ]
    problems = [
        f"{label} {_short_list(items, 4)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {what}: {'; '.join(problems)}")


def load_backbone(
    path: str | Path,
    *,
    img_size: int | None = None,
    num_heads: int | None = None,
    drop_path_rate: float = 0.0,
) -> MaskedViT:
    """Build the ViT encoder stored in any supported checkpoint, in eval mode.

    Args:
        path: a checkpoint file (see the module docstring), or a directory holding ``backbone.safetensors``.
        img_size: input size to build for; the position embedding is resampled (bicubic) to the new grid,
            keeping the CLS row.
        num_heads: attention heads, when neither the file nor the standard ViT table gives them.
        drop_path_rate: stochastic depth for fine-tuning (0 at inference).
    """
    source = str(path)
    enc = _read_encoder(path)
    if num_heads is None and enc.arch and isinstance(enc.arch.get("num_heads"), int):
        num_heads = enc.arch["num_heads"]
    arch = infer_arch(enc.state, num_heads=num_heads, source=source)
    state = dict(enc.state)
    if img_size is not None and img_size != arch.img_size:
        if img_size % arch.patch_size:
            raise CheckpointError(
                f"{source}: img_size {img_size} is not a multiple of patch size {arch.patch_size}"
            )
        old, new = arch.grid_size, img_size // arch.patch_size
        pos = state["pos_embed"]
        state["pos_embed"] = resample_abs_pos_embed(pos.float(), [new, new], [old, old], num_prefix_tokens=1)
        arch = replace(arch, img_size=img_size)
    try:
        model = build_vit(arch, drop_path_rate=drop_path_rate)
    except ValueError as err:
        raise CheckpointError(f"{source}: {_one_line(err)}") from err
    what = f"ViT(embed_dim={arch.embed_dim}, depth={arch.depth}, patch={arch.patch_size}) from {enc.fmt} keys"
    _check_match(model.state_dict(), state, source, what)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: {_one_line(err)}") from err
    return model.eval()


def timm_model_name(arch: ViTArch) -> str | None:
    """A registered timm model with this architecture, or ``None`` for a non-standard one.

    Prefers ``vit_{size}_patch{p}_{img_size}``; otherwise the ``..._224`` variant, which timm builds at any
    size via ``timm.create_model(name, img_size=arch.img_size, num_classes=0)``.
    """
    if arch.mlp_ratio != 4.0:
        return None
    for size, spec in VIT_SIZES.items():
        if spec == (arch.embed_dim, arch.depth, arch.num_heads):
            for name in (
                f"vit_{size}_patch{arch.patch_size}_{arch.img_size}",
                f"vit_{size}_patch{arch.patch_size}_224",
            ):
                if timm.is_model(name):
                    return name
    return None


def _unwrap(model: torch.nn.Module) -> MaskedViT:
    """The :class:`MaskedViT` inside DDP (``.module``) / ``torch.compile`` (``._orig_mod``) wrappers."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, torch.nn.Module) and not isinstance(model, MaskedViT):
            return _unwrap(inner)
    if not isinstance(model, MaskedViT):
        raise TypeError(f"export_backbone expects a MaskedViT, got {type(model).__name__}")
    return model


def export_backbone(model: MaskedViT, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/backbone.safetensors`` (encoder weights, timm names) and ``out_dir/backbone.json``.

    The JSON holds ``format``, ``arch`` (the :class:`ViTArch` fields), ``timm_model`` (see
    :func:`timm_model_name`), ``img_size`` and the entries of ``extra``; the architecture is also stored in
    the safetensors metadata so the weights file alone is enough for :func:`load_backbone`. Both files are
    written atomically. Returns the safetensors path.
    """
    vit = _unwrap(model)
    arch = vit.arch
    record: dict[str, Any] = {
        "format": BACKBONE_FORMAT,
        "arch": asdict(arch),
        "timm_model": timm_model_name(arch),
        "img_size": arch.img_size,
    }
    clash = sorted(set(extra or {}) & set(record))
    if clash:
        raise ValueError(f"export_backbone: extra may not override reserved keys {clash}")
    record.update(extra or {})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in vit.state_dict().items()}
    metadata = {"format": BACKBONE_FORMAT, "arch": json.dumps(asdict(arch))}
    out = Path(out_dir)
    weights = atomic_write_bytes(out / BACKBONE_FILE, safetensors.torch.save(tensors, metadata=metadata))
    atomic_write_bytes(out / "backbone.json", (json.dumps(record, indent=2) + "\n").encode())
    return weights
