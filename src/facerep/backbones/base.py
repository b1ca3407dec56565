"""The backbone protocol every architecture family implements, and the family registry.

A backbone is an ``nn.Module`` (ViT or CNN) that offers, in timm's spirit:

* ``forward_features(x)``: the family's native output (ViT ``[N, 1 + L, D]``, CLS first, final norm;
  ResNet ``[N, C, h, w]``);
* ``forward_pyramid(x, levels)``: a list of maps ``[N, C_i, H_i, W_i]`` for the dense heads (selected
  ViT blocks reshaped to the patch grid, or ResNet stages); ``pyramid_channels(levels)`` and
  ``pyramid_strides(levels)`` say their widths and strides before any image is seen, and
  ``default_levels`` which levels to use when the config names none;
* ``pooled(x)``: one vector per image ``[N, feature_dim]`` (CLS token, or global average pool);
* ``pyramid_pooled(x, levels)``: both of the above from one forward pass (frozen read-outs need both);
* ``arch``: a frozen dataclass with a ``family`` class attribute that rebuilds the network; its
  :func:`arch_record` is written beside every export;
* ``no_weight_decay()``: parameter names (relative to the backbone) that get no weight decay.

A family (:class:`BackboneFamily`) builds its backbones from an arch name or a record, recognises its
state dicts and loads them; :data:`FAMILIES` holds one instance per family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from facerep.config import ConfigError
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line
from facerep.runtime.registry import Registry


@runtime_checkable
class Backbone(Protocol):
    """What methods, dense heads, classifiers and exporters may rely on (see the module docstring)."""

    arch: Any
    default_levels: tuple[int, ...]

    @property
    def feature_dim(self) -> int: ...

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_pyramid(self, x: Tensor, levels: Sequence[int]) -> list[Tensor]: ...

    def pyramid_channels(self, levels: Sequence[int]) -> list[int]: ...

    def pyramid_strides(self, levels: Sequence[int]) -> list[int]: ...

    def pooled(self, x: Tensor) -> Tensor: ...

    def pyramid_pooled(self, x: Tensor, levels: Sequence[int]) -> tuple[list[Tensor], Tensor]: ...

    def no_weight_decay(self) -> set[str]: ...


def arch_record(arch: Any) -> dict[str, Any]:
    """The JSON-ready record of an arch dataclass: ``{"family": ..., **fields}``."""
    return {"family": arch.family, **asdict(arch)}


@dataclass(frozen=True)
class LoadOptions:
    """How to build a backbone read from a file (see :func:`facerep.load_backbone`)."""

    img_size: int | None = None  # ViT: resample the position embedding to this input size
    num_heads: int | None = None  # ViT: attention heads when neither the file nor the ViT table says
    drop_path_rate: float = 0.0  # stochastic depth (fine-tuning)
    output_stride: int | None = None  # ResNet: dilate the last stages (else the file's record, else 32)


class BackboneFamily:
    """How one family builds, recognises and reads its backbones (one instance each in :data:`FAMILIES`)."""

    name: ClassVar[str]
    arch_names: ClassVar[str]  # how the family's arch names are spelled (for messages)

    def matches(self, arch: str) -> bool:
        """Whether the arch name ``arch`` belongs to this family."""
        raise NotImplementedError

    def build(self, arch: str, img_size: int | None = None, **overrides: Any) -> nn.Module:
        """A new randomly initialised backbone named ``arch`` for ``img_size`` inputs."""
        raise NotImplementedError

    def from_record(self, record: Mapping[str, Any]) -> nn.Module:
        """A new backbone for an :func:`arch_record` (without the ``family`` key)."""
        raise NotImplementedError

    def owns(self, state: Mapping[str, Tensor]) -> bool:
        """Whether ``state`` (already in this library's key names) is a state dict of this family."""
        raise NotImplementedError

    def from_state(
        self, state: dict[str, Tensor], record: Mapping[str, Any] | None, source: str, options: LoadOptions
    ) -> nn.Module:
        """The backbone holding ``state`` (architecture from ``record`` or inferred from the weights);
        errors start with ``source``."""
        raise NotImplementedError

    def export_names(self, arch: Any) -> dict[str, str | None]:
        """Model names other libraries build this architecture under (``timm_model``, ...)."""
        raise NotImplementedError

    def named_arch(self, arch: str) -> Any:
        """The arch dataclass the name ``arch`` stands for (built on the meta device: no weights)."""
        with torch.device("meta"):
            return self.build(arch).arch

    def describe(self, arch: Any) -> str:
        """An architecture as messages name it: the family and its :func:`shape_fields`."""
        shape = ", ".join(f"{name} {value}" for name, value in shape_fields(arch).items())
        return f"a {self.name} ({shape})"


FAMILIES: Registry[BackboneFamily] = Registry("backbone family")


def family_of(arch: str) -> BackboneFamily:
    """The family an arch name belongs to; a one-line :class:`ConfigError` for an unknown name."""
    for _, family in FAMILIES.items():
        if family.matches(arch):
            return family
    spellings = " or ".join(family.arch_names for _, family in FAMILIES.items())
    raise ConfigError(f"unknown backbone architecture {arch!r}: expected {spellings}")


def build_backbone(arch: str, img_size: int | None = None, **overrides: Any) -> nn.Module:
    """A randomly initialised backbone: ``vit_base_patch16_224``, ``resnet50``, ... (see :data:`FAMILIES`)."""
    return family_of(arch).build(arch, img_size, **overrides)


def shape_fields(arch: Any) -> dict[str, Any]:
    """The fields of an arch dataclass that an arch name fixes: those without a default, except
    ``img_size`` (ViT: ``embed_dim``, ``depth``, ``num_heads``, ``patch_size``; ResNet: ``layers``,
    ``bottleneck``). Fields with defaults are variants that a name does not spell (CLIP's pre-norm, layer
    scale), and the input size does not change the weights (a ViT's position embedding is resampled)."""
    return {
        f.name: getattr(arch, f.name)
        for f in fields(arch)
        if f.default is MISSING and f.default_factory is MISSING and f.name != "img_size"
    }


def require_arch(model: nn.Module, arch: str, source: str) -> nn.Module:
    """``model`` (a backbone read from ``source``) if it is the architecture named ``arch``, compared on
    :func:`shape_fields`; otherwise a one-line :class:`CheckpointError` saying what the file holds
    (``x.pth: holds resnet18 (layers [2, 2, 2, 2], basic blocks), asked for resnet50``). An unknown
    name is a :class:`ConfigError`."""
    asked = family_of(arch)
    held = FAMILIES.get(model.arch.family)
    if asked is held and shape_fields(asked.named_arch(arch)) == shape_fields(model.arch):
        return model
    raise CheckpointError(f"{source}: holds {held.describe(model.arch)}, asked for {arch}")


def check_record(record: Mapping[str, Any], held: Mapping[str, tuple[Any, str]], source: str) -> None:
    """Refuse an architecture record (a file's metadata) that its weights contradict, before anything is
    built from it: a corrupt ``img_size`` would resample a position embedding to terabytes. ``held`` maps a
    record field to the value the weights give and the tensor that shows it (``"pos_embed has shape
    [1, 37, 64]"``); a field the record lacks is not checked. Lists and tuples compare alike."""
    for name, (value, evidence) in held.items():
        if name not in record:
            continue
        recorded = list(record[name]) if isinstance(record[name], (list, tuple)) else record[name]
        if recorded != value:
            raise CheckpointError(
                f"{source}: recorded {name}={record[name]!r} disagrees with the weights: {evidence}, so "
                f"{name} is {value!r}"
            )


def backbone_from_record(record: Mapping[str, Any]) -> nn.Module:
    """Rebuild a backbone from its :func:`arch_record` (records without ``family`` are ViTs)."""
    fields = dict(record)
    return FAMILIES.get(fields.pop("family", "vit")).from_record(fields)


def short_list(items: Sequence[str], limit: int = 6) -> str:
    """``[a, b, ... (+N more)]`` for messages."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... (+{len(items) - limit} more)' if len(items) > limit else ''}]"


def load_strict(
    model: nn.Module, state: Mapping[str, Tensor], source: str, what: str, advice: str = ""
) -> nn.Module:
    """Load ``state`` into ``model`` with strict keys; otherwise a one-line :class:`CheckpointError` naming
    the shape mismatches (key, file shape, model shape), then the missing and the unexpected keys, and
    ending with ``advice`` (what to do instead). Returns ``model`` in eval mode."""
    expected = model.state_dict()
    shapes = [
        f"{k} file {list(state[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if isinstance(state.get(k), Tensor) and state[k].shape != v.shape
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = [
        f"{label} {short_list(items, 4)}"
        for label, items in (("shape mismatch", shapes), ("missing", missing), ("unexpected", unexpected))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {what}: {'; '.join(problems)}{advice}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: {one_line(err)}") from err
    return model.eval()
