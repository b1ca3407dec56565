"""torch.distributed helpers; every function also works in a single process without a process group."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facerep.runtime.errors import FacerepError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FacerepError(f"device={name!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Join the process group torchrun set up (env ``RANK``/``WORLD_SIZE``), or run as a single process.

    NCCL on GPUs, gloo on CPU. Multi-node works the same way (torchrun's rendezvous sets the env).
    ``timeout_s``: how long a collective waits for the other processes (None: torch's default), so that a
    frozen node fails the run instead of hanging it.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    return DistInfo(rank(), world_size(), local_rank, dev)


def wrap_ddp(module: nn.Module, info: DistInfo, *, static_graph: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes train, else ``module`` itself.

    ``static_graph``: the same parameters go unused every step (a ViT's final norm under FaRL's FPN head),
    which DDP then tolerates without searching the graph each iteration."""
    if info.world_size == 1:
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, static_graph=static_graph)


@torch.no_grad()
def all_gather_nograd(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ``[N, ...]`` from every rank along dim 0 (rank order); no gradient flows.

    For keys from a momentum encoder (MoCo v3, MCF), which carry no gradient anyway.
    """
    if not is_distributed() or world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` ``[N, ...]`` from every rank along dim 0 (rank order), keeping the graph.

    The gradient that reaches this rank's ``tensor`` is the sum, over ranks, of the gradients of their
    losses with respect to this rank's slice (``torch.distributed.nn``'s all-gather, whose backward is a
    reduce-scatter): what image-text contrastive losses need when both towers are trained (CLIP, FaRL).
    """
    if not is_distributed() or world_size() == 1:
        return tensor
    with warnings.catch_warnings():
        # torch 2.14 marks this public op deprecated in favour of private, still-renamed functional
        # collectives; the public op keeps working, so its once-per-process warning is only noise
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather")
        return torch.cat(dist_fn.all_gather(tensor), dim=0)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (a copy; the input is untouched)."""
    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
