"""Projection and prediction heads (MoCo v3 / SimCLR / BYOL-style MLPs) and their reference inits."""

from __future__ import annotations

import itertools

from torch import nn

# how the Linear weights of a head start (BatchNorms start at weight 1, bias 0 in every case):
# torch: nn.Linear's own default (kaiming-uniform, a = sqrt(5));
# xavier: xavier-uniform, as MAE's and MCF's ``_init_weights`` re-initialise every Linear;
# kaiming: kaiming-normal with fan_out and ReLU gain (Caffe2's MSRAFill), as FRA's ``MLP1D.init_weights``.
HEAD_INITS = ("torch", "xavier", "kaiming")


def init_linears_(module: nn.Module, init: str) -> nn.Module:
    """Re-initialise every ``nn.Linear`` weight of ``module`` by rule ``init`` (:data:`HEAD_INITS`); biases
    become 0 except under ``torch``."""
    if init not in HEAD_INITS:
        raise ValueError(f"unknown head init {init!r}: expected one of {', '.join(HEAD_INITS)}")
    if init == "torch":
        return module
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def mlp_head(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    last_bn: bool = True,
    init: str = "torch",
) -> nn.Sequential:
    """Linear-BN-ReLU blocks, then a last Linear (+ BatchNorm without affine when ``last_bn``).

    ``mlp_head(768, 4096, 256, init="xavier")`` is MCF's projector; ``mlp_head(256, 4096, 256,
    last_bn=False, init="xavier")`` its predictor; ``mlp_head(2048, 4096, 256, last_bn=False,
    init="kaiming")`` FRA's projector (its 1x1-Conv1d MLP). Input ``[N, in_dim]`` -> ``[N, out_dim]``.
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
    return init_linears_(nn.Sequential(*layers), init)
