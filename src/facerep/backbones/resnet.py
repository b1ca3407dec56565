"""ResNet backbone: timm's ``ResNet`` (torchvision's key names) behind facerep's backbone protocol.

timm's ResNet-18/34/50/101/152 have exactly torchvision's parameter names (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``layer4.2.bn3``), so weights move between timm, torchvision, FRA's code
(which strips ``module.online_net.backbone.``) and facerep unchanged. Pyramid levels are timm's
feature stages: 0 the stem (stride 2), 1-4 ``layer1``-``layer4`` (strides 4, 8, 16, 32).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.resnet import ResNet as TimmResNet
from torch import Tensor

from facerep.backbones.base import FAMILIES, BackboneFamily, LoadOptions, check_record, load_strict
from facerep.config import ConfigError
from facerep.runtime.checkpoint import CheckpointError

# name -> (blocks per stage, bottleneck blocks): the standard table (He et al., 2016; torchvision, timm).
RESNETS: dict[str, tuple[tuple[int, int, int, int], bool]] = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
_BLOCK_RE = re.compile(r"^layer([1-4])\.(\d+)\.")


@dataclass(frozen=True)
class ResNetArch:
    """Everything needed to rebuild a ResNet; saved beside exported weights.

    ``img_size`` is the input size the weights were trained or exported at (informational: the
    network accepts any size). ``output_stride`` 16 or 8 dilates the last one or two stages instead of
    striding them (DeepLab's trick, timm's ``output_stride``): the same weights, a finer last feature map.
    """

    family: ClassVar[str] = "resnet"

    layers: tuple[int, int, int, int]
    bottleneck: bool
    img_size: int = 224
    output_stride: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ConfigError(f"a ResNet needs 4 stages of >= 1 block each, got layers={self.layers}")
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(f"a ResNet's output_stride is 8, 16 or 32, got {self.output_stride}")

    @property
    def name(self) -> str | None:
        """``resnet50`` etc. for a standard architecture, else ``None``."""
        return next((n for n, spec in RESNETS.items() if spec == (self.layers, self.bottleneck)), None)


class ResNet(TimmResNet):
    """timm ResNet without a classifier (``num_classes=0``): ``forward_features`` gives ``[N, C, h, w]``.

    Initialised as torchvision's and FRA's ResNets are: kaiming-normal convolutions (fan_out), BatchNorms at
    weight 1 and bias 0, and the last BatchNorm of each block *not* zero-initialised (timm's default
    ``zero_init_last=True`` is torchvision's ``zero_init_residual``, off in both)."""

    default_levels = (1, 2, 3, 4)

    def __init__(self, arch: ResNetArch, drop_path_rate: float = 0.0) -> None:
        block = Bottleneck if arch.bottleneck else BasicBlock
        super().__init__(
            block=block,
            layers=arch.layers,
            num_classes=0,
            output_stride=arch.output_stride,
            drop_path_rate=drop_path_rate,
            zero_init_last=False,
        )
        self.arch = arch

    @property
    def feature_dim(self) -> int:
        return self.num_features

    def pooled(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> global average pool of the last stage ``[N, C]``."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def _check_levels(self, levels: Sequence[int]) -> list[int]:
        levels = [int(i) for i in levels]
        if not levels or min(levels) < 0 or max(levels) >= len(self.feature_info):
            raise ConfigError(f"ResNet pyramid levels are 0 (stem) and 1-4 (layer1-layer4), got {levels}")
        return levels

    def forward_pyramid(self, x: Tensor, levels: Sequence[int]) -> list[Tensor]:
        """Stage outputs ``[N, C_i, H / s_i, W / s_i]`` for the stages ``levels``."""
        return self.forward_intermediates(x, indices=self._check_levels(levels), intermediates_only=True)

    def pyramid_pooled(self, x: Tensor, levels: Sequence[int]) -> tuple[list[Tensor], Tensor]:
        """``(forward_pyramid(x, levels), pooled(x))`` from one pass through the stages."""
        final, maps = self.forward_intermediates(x, indices=self._check_levels(levels))
        return maps, self.forward_head(final, pre_logits=True)

    def pyramid_channels(self, levels: Sequence[int]) -> list[int]:
        return [self.feature_info[i]["num_chs"] for i in self._check_levels(levels)]

    def pyramid_strides(self, levels: Sequence[int]) -> list[int]:
        return [self.feature_info[i]["reduction"] for i in self._check_levels(levels)]

    def no_weight_decay(self) -> set[str]:
        return set()  # BatchNorm weights and biases are 1-D: excluded from weight decay by shape


def resnet_arch(name: str) -> ResNetArch:
    """The :class:`ResNetArch` of a name in :data:`RESNETS`; a one-line :class:`ConfigError` otherwise."""
    if name not in RESNETS:
        raise ConfigError(f"unknown ResNet architecture {name!r}: expected one of {', '.join(RESNETS)}")
    return ResNetArch(*RESNETS[name])


def build_resnet(
    arch: str | ResNetArch,
    img_size: int | None = None,
    drop_path_rate: float = 0.0,
    output_stride: int | None = None,
) -> ResNet:
    """Build a :class:`ResNet` from a name in :data:`RESNETS` or a :class:`ResNetArch`."""
    if isinstance(arch, str):
        arch = resnet_arch(arch)
    if img_size is not None:
        arch = replace(arch, img_size=img_size)
    if output_stride is not None:
        arch = replace(arch, output_stride=int(output_stride))
    return ResNet(arch, drop_path_rate=drop_path_rate)


def infer_resnet_arch(state: Mapping[str, Tensor], source: str = "checkpoint") -> ResNetArch:
    """Blocks per stage and block type of a torchvision-named ResNet state dict."""
    counts = [0, 0, 0, 0]
    for key in state:
        if m := _BLOCK_RE.match(key):
            stage, index = int(m[1]) - 1, int(m[2])
            counts[stage] = max(counts[stage], index + 1)
    if "conv1.weight" not in state or min(counts) == 0:
        raise CheckpointError(
            f"{source}: expected a ResNet state dict with conv1 and layer1-layer4 blocks, "
            f"found blocks per stage {counts}"
        )
    return ResNetArch(tuple(counts), bottleneck="layer1.0.conv3.weight" in state)


class ResNetFamily(BackboneFamily):
    """ResNets: ``resnet{18,34,50,101,152}``, torchvision/timm key names (``conv1``, ``layer1.0.conv1``)."""

    name = "resnet"
    arch_names = "|".join(RESNETS)

    def matches(self, arch: str) -> bool:
        return arch.startswith("resnet")

    def build(self, arch: str, img_size: int | None = None, **overrides: Any) -> ResNet:
        unknown = sorted(set(overrides) - {"drop_path_rate", "output_stride"})
        if unknown:
            raise ConfigError(f"{arch}: the ResNet table has no overrides {unknown}")
        return build_resnet(arch, img_size, **overrides)

    def from_record(self, record: Mapping[str, Any]) -> ResNet:
        return build_resnet(ResNetArch(**record))

    def owns(self, state: Mapping[str, Tensor]) -> bool:
        return "conv1.weight" in state and any(k.startswith("layer1.") for k in state)

    def from_state(
        self, state: dict[str, Tensor], record: Mapping[str, Any] | None, source: str, options: LoadOptions
    ) -> ResNet:
        """Drop a classifier (``fc.*``), infer the architecture (a record's ``layers`` or ``bottleneck`` that
        the weights contradict is a one-line :class:`CheckpointError`) and load strictly
        (``options.num_heads`` does not apply; ``options.img_size`` is recorded; ``options.output_stride``,
        else the record's)."""
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        arch = infer_resnet_arch(state, source)
        conv3 = f"layer1.0.conv3.weight is {'present' if arch.bottleneck else 'absent'}"
        held = {
            "layers": (list(arch.layers), f"the weights hold {list(arch.layers)} blocks in layer1-layer4"),
            "bottleneck": (arch.bottleneck, conv3),
        }
        check_record(record or {}, held, source)
        size = options.img_size or (record or {}).get("img_size")
        stride = options.output_stride or (record or {}).get("output_stride")
        model = build_resnet(arch, img_size=size, drop_path_rate=options.drop_path_rate, output_stride=stride)
        name = arch.name or f"ResNet(layers={list(arch.layers)}, bottleneck={arch.bottleneck})"
        return load_strict(model, state, source, name)

    def export_names(self, arch: ResNetArch) -> dict[str, str | None]:
        return {"timm_model": arch.name, "torchvision_model": arch.name}

    def named_arch(self, arch: str) -> ResNetArch:
        return resnet_arch(arch)

    def describe(self, arch: ResNetArch) -> str:
        """``resnet18 (layers [2, 2, 2, 2], basic blocks)``; ``a ResNet (...)`` off the standard table."""
        blocks = "bottleneck" if arch.bottleneck else "basic"
        stride = f", output stride {arch.output_stride}" if arch.output_stride != 32 else ""
        return f"{arch.name or 'a ResNet'} (layers {list(arch.layers)}, {blocks} blocks{stride})"


FAMILIES.add(ResNetFamily.name, ResNetFamily())
