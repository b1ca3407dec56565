"""Exponential moving averages of weights (momentum encoders, evaluation EMA)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float, buffers: bool = False) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for every parameter, in place.

    With ``buffers=True`` floating-point buffers (BatchNorm statistics) are copied from ``online``.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    if len(target_params) != len(online_params):
        raise ValueError("target and online modules have different parameters")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
    if buffers:
        for t, o in zip(target.buffers(), online.buffers(), strict=True):
            t.copy_(o)
