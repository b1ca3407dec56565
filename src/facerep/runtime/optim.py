"""Which parameters get weight decay: every weight matrix, except what modules declare.

As in timm: 1-D tensors (biases, norm weights) never decay, and a module lists in
``no_weight_decay()`` the names of its other parameters that should not (a ViT's ``cls_token`` and
``pos_embed``, a decoder's ``mask_token``).
"""

from __future__ import annotations

from torch import nn


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
