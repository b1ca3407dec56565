"""Pre-training optimizers, and which parameters get weight decay.

Weight decay: a method decides which of its parameters are *excluded* (no decay and, under LARS, no trust
ratio) through :meth:`facerep.methods.base.PretrainMethod.excluded_from_decay`. The rules its references
use are here:

* :func:`timm_excluded` (the default): 1-D tensors (biases, norm weights) and the names a module lists in
  ``no_weight_decay()`` (a ViT's ``cls_token`` and ``pos_embed``);
* :func:`mae_excluded`: 1-D tensors and ``.bias`` names only, as MAE's and MCF's code (timm 0.3.2's
  ``add_weight_decay`` with an empty skip list): a ViT's ``cls_token`` and a decoder's ``mask_token`` are
  decayed;
* :func:`fra_excluded`: names containing ``bn``, ``downsample.1`` or ``bias``, FRA's ``collect_params`` (and
  BYOL-PyTorch's): every other tensor, 1-D or not (BatchNorms inside an ``nn.Sequential``, LayerNorms, query
  embeddings), is decayed and adapted.

Optimizers (``train.optimizer``): ``adamw`` (torch's; MAE, MCF, FaRL) and ``lars`` (:class:`LARS`, BYOL's and
FRA's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

OPTIMIZERS = ("adamw", "lars")
# FRA's collect_params: substrings of the names that get no weight decay and no LARS trust ratio
FRA_EXCLUDED_NAMES = ("bn", "downsample.1", "bias")

# (name, parameter) -> whether it is excluded from weight decay (and from LARS's trust ratio)
ExclusionRule = Callable[[str, nn.Parameter], bool]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters ``model``'s submodules exclude from weight decay."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            names |= {f"{prefix}.{name}" if prefix else name for name in declared()}
    return names


def decayed(name: str, param: nn.Parameter, no_decay: set[str]) -> bool:
    """Whether parameter ``name`` gets weight decay under timm's rule (see :func:`timm_excluded`)."""
    return param.ndim > 1 and name not in no_decay


def timm_excluded(model: nn.Module) -> ExclusionRule:
    """timm's rule for ``model``: 1-D tensors and the names its modules list in ``no_weight_decay()``."""
    no_decay = no_weight_decay_names(model)
    return lambda name, param: not decayed(name, param, no_decay)


def mae_excluded(name: str, param: nn.Parameter) -> bool:
    """MAE's and MCF's rule: 1-D tensors and biases only (tokens of 2+ dimensions are decayed)."""
    return param.ndim <= 1 or name.endswith(".bias")


def fra_excluded(name: str, param: nn.Parameter) -> bool:
    """FRA's rule, by name only: ``bn``, ``downsample.1`` (torchvision's shortcut BatchNorm) or ``bias``."""
    return any(part in name for part in FRA_EXCLUDED_NAMES)


def split_param_groups(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, excluded: ExclusionRule
) -> list[dict]:
    """Trainable parameters -> ``[decayed group, excluded group]``; the excluded group has no weight decay
    and ``lars_exclude=True`` (plain SGD step under :class:`LARS`; other optimizers ignore the key)."""
    groups: tuple[list[nn.Parameter], list[nn.Parameter]] = ([], [])
    for name, param in named:
        if param.requires_grad:
            groups[1 if excluded(name, param) else 0].append(param)
    return [
        {"params": groups[0], "weight_decay": weight_decay},
        {"params": groups[1], "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step is scaled per tensor by a trust ratio (You et al., 2017), exactly as
    FRA's ``utils/LARS.py`` and BYOL-PyTorch's ``LARSSGD`` take it.

    For a tensor ``w`` with gradient ``g`` in a group with weight decay ``wd`` and learning rate ``lr``::

        ratio = eta * |w| / (|g| + wd * |w| + eps)       (1 in a group with lars_exclude=True)
        u = lr * ratio * (g + wd * w)
        buf = momentum * buf + u   (buf = u at the first step);   w -= buf

    Unlike timm's ``Lars``, the ratio does not depend on weight decay being on (timm adapts only decayed
    groups unless ``always_adapt``), a tensor whose gradient is zero gets ``eta / wd`` (timm: 1), so its step
    is its weight decay times that, and the learning rate enters before the momentum buffer (timm: after).
    A tensor of zeros has ratio 0 and never moves.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta < 0:
            raise ValueError(
                f"LARS needs lr, momentum, weight_decay and eta >= 0, "
                f"got {lr}, {momentum}, {weight_decay}, {eta}"
            )
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "eps": eps}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum, lr = group["weight_decay"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                update = grad.add(p, alpha=wd) if wd else grad.clone()
                if not group.get("lars_exclude", False):
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    update.mul_(group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"]))
                update.mul_(lr)
                if momentum:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(update)
                    update = state["momentum_buffer"]
                p.sub_(update)
        return loss


def build_optimizer(
    name: str, groups: list[dict], lr: float, *, betas: Sequence[float], momentum: float, fused: bool
) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS` over the parameter ``groups`` (each with its ``weight_decay``)."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
