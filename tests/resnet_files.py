"""Small ResNets with every weight and BatchNorm statistic random, for checkpoint-layout tests."""

import torch
from torch import nn


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics, so that every tensor of the file matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
    return model.eval()
