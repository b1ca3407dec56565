"""Projection and prediction heads (MoCo v3 / SimCLR-style MLPs)."""

from __future__ import annotations

import itertools

from torch import nn


def mlp_head(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = True
) -> nn.Sequential:
    """Linear-BN-ReLU blocks, then a last Linear (+ BatchNorm without affine when ``last_bn``).

    ``mlp_head(768, 4096, 256)`` is MCF's projector; ``mlp_head(256, 4096, 256, last_bn=False)`` its
    predictor. Input ``[N, in_dim]`` -> ``[N, out_dim]``.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)
