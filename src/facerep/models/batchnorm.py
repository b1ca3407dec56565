"""BatchNorm over the global batch of every process, on any backend.

Methods whose reference trains with synchronised BatchNorm (FRA's ``--norm SyncBN``, BYOL's cross-replica
BatchNorm) must normalise with the statistics of all processes' images. torch's ``SyncBatchNorm`` does that on
GPUs only; :class:`GlobalBatchNorm` does the same with autograd-aware all-gathers, so a CPU (gloo) run
computes exactly what one process computes on the concatenated batch, and the distributed tests can show
it. :func:`sync_batchnorm` converts a model: torch's ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm`
elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facerep.runtime.distributed import all_gather_with_grad, is_distributed, world_size


def _global_sum(value: Tensor) -> Tensor:
    """Sum of ``value`` ``[C]`` over ranks, with gradients reaching every rank's share."""
    return all_gather_with_grad(value[None]).sum(0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input ``[N, C, ...]``) whose training statistics span every process's batch.

    Two passes (the global mean, then the global mean squared deviation), each one all-gather. Running
    statistics are updated with the global mean and unbiased variance, as torch's ``SyncBatchNorm`` does.
    Outside training, or without a process group of two or more, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [N, C, ...] input, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_count = xf.new_full((1,), x.numel() / x.shape[1])
        sums = _global_sum(torch.cat([xf.sum(dims), local_count]))
        count = sums[-1]
        mean = sums[:-1] / count
        centred = xf - mean.view(shape)
        var = _global_sum(centred.pow(2).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.detach().to(self.running_mean), m)
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var), m)
        return y.to(x.dtype)


def _to_global(module: nn.Module) -> nn.Module:
    """``module`` with every ``_BatchNorm`` replaced by a :class:`GlobalBatchNorm` holding its tensors."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        norm = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        with torch.no_grad():
            if module.affine:
                norm.weight, norm.bias = module.weight, module.bias
            if module.track_running_stats:
                norm.running_mean, norm.running_var = module.running_mean, module.running_var
                norm.num_batches_tracked = module.num_batches_tracked
        norm.train(module.training)
        return norm
    for name, child in module.named_children():
        module.add_module(name, _to_global(child))
    return module


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` normalised over all processes: torch's ``SyncBatchNorm`` on CUDA,
    :class:`GlobalBatchNorm` on other devices (CPU / gloo)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module)
