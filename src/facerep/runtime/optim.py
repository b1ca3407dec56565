"""Pre-training optimizers, and which parameters get weight decay.

Weight decay: as in timm, 1-D tensors (biases, norm weights) never decay, and a module lists in
``no_weight_decay()`` the names of its other parameters that should not (a ViT's ``cls_token`` and
``pos_embed``, a decoder's ``mask_token``).

Optimizers (``train.optimizer``): ``adamw`` (torch's; MAE, MCF, FaRL) and ``lars`` (timm's ``Lars``:
SGD with momentum whose step is scaled per tensor by the trust ratio ``0.001 * |w| / (|g| + wd |w|)``,
BYOL's and FRA's optimizer). timm's LARS adapts only tensors that get weight decay, so the undecayed
group (biases, norms) is excluded from both decay and adaptation, as BYOL and FRA exclude them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.optim import Lars
from torch import nn

OPTIMIZERS = ("adamw", "lars")


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters ``model``'s submodules exclude from weight decay."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names |= {f"{prefix}.{name}" if prefix else name for name in declared()}
    return names


def decayed(name: str, param: nn.Parameter, no_decay: set[str]) -> bool:
    """Whether parameter ``name`` gets weight decay (see the module docstring)."""
    return param.ndim > 1 and name not in no_decay


def build_optimizer(
    name: str, groups: list[dict], lr: float, *, betas: Sequence[float], momentum: float, fused: bool
) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS` over the parameter ``groups`` (each with its ``weight_decay``)."""
    if name == "lars":
        return Lars(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
