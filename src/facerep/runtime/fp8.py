"""fp8 matrix products for a frozen network (MCF's teacher), through torchao's ``Float8Linear``.

MCF's frozen teacher does about 60 % of a ViT-B/16 step's work (shared README §6), and its weights never
change, so its linear layers can run their products in fp8 (e4m3, dynamic per-row scales of activations
and weights; torchao's ``rowwise`` recipe) at up to twice bf16's tensor-core rate on Hopper. Gradients still
flow through them to the teacher's input (MCF's reconstruction), which torchao's inference-only fp8 tensors
cannot do and its training layer can.

Where fp8 runs: CUDA devices of compute capability 8.9 or newer (Ada, Hopper, Blackwell), and the CPU,
whose fp8 products torch emulates (slower than fp32: a path for correctness checks, not for speed).
:func:`fp8_unsupported` says why it does not run elsewhere; torchao is an optional dependency
(``pip install 'facerep[fp8]'``), imported only here and only when fp8 is asked for.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from facerep.runtime.errors import FacerepError

FP8_MIN_CAPABILITY = (8, 9)  # sm_89: the first CUDA architecture with fp8 tensor cores (Ada)
FP8_MULTIPLE = 16  # fp8 matrix products need both dimensions of the weight to be multiples of 16


def fp8_unsupported(device: torch.device) -> str | None:
    """Why ``device`` cannot run fp8 matrix products (one line), or ``None`` when it can."""
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"no fp8 matrix products on {device.type} devices (CUDA sm_89 or newer, or the CPU)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} (sm_{major}{minor}) has no fp8 tensor cores "
                "(sm_89 or newer: Ada, Hopper, Blackwell)")  # fmt: skip
    return None


def _torchao_float8():
    if importlib.util.find_spec("torchao") is None:
        raise FacerepError("fp8 needs torchao, which is not installed: pip install 'facerep[fp8]'")
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    return Float8Linear, Float8LinearConfig, convert_to_float8_training


def to_float8(module: nn.Module) -> int:
    """Swap ``module``'s ``nn.Linear`` layers whose weight dimensions are both multiples of 16 (in place)
    for torchao's ``Float8Linear`` (rowwise recipe); returns how many were swapped. The parameters are
    kept as they are (the same tensors, in their own dtype): each product casts them to fp8 on the fly."""
    _, config, convert = _torchao_float8()

    def eligible(layer: nn.Module, name: str) -> bool:
        return layer.in_features % FP8_MULTIPLE == 0 and layer.out_features % FP8_MULTIPLE == 0

    before = float8_layers(module)
    convert(module, config=config.from_recipe_name("rowwise"), module_filter_fn=eligible)
    return float8_layers(module) - before


def float8_layers(module: nn.Module) -> int:
    """How many of ``module``'s layers run their products in fp8 (0 without torchao)."""
    if importlib.util.find_spec("torchao") is None:
        return 0
    from torchao.float8.float8_linear import Float8Linear

    return sum(isinstance(m, Float8Linear) for m in module.modules())


def from_float8(module: nn.Module) -> nn.Module:
    """``module`` (in place) with every ``Float8Linear`` back to a plain ``nn.Linear`` holding the same
    parameters: the same network at the run's own precision (the reference an fp8 loss is compared to)."""
    if not float8_layers(module):
        return module
    float8, _, _ = _torchao_float8()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, float8):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  device=child.weight.device, dtype=child.weight.dtype)  # fmt: skip
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain)
    return module
