"""FSDP2 for pre-training (``train.parallel=fsdp``): which parts of a method are sharded, which replicated.

:func:`wrap_fsdp` applies ``torch.distributed.fsdp.fully_shard`` to every transformer block (the children of
each ``blocks`` / ``resblocks`` container: the ViT's, the MAE decoder's, FaRL's MIM head and text tower),
then to the method itself (the root: embeddings, norms, heads, everything not in a block). Each block is one
all-gather in the forward and one reduce-scatter in the backward; weights, gradients and optimizer state
are split over the ranks (Shard(0) DTensors).

* **Momentum (EMA) encoders** (``MomentumMethod.momentum_pairs``' targets) are sharded exactly like their
  online modules (their blocks per block, the rest with the root), so the EMA of the local shards *is* the
  local shard of the EMA: the update stays the same ``lerp`` on each rank's shards, with no communication.
  :func:`wrap_fsdp` checks that every (online, target) parameter pair has the same placement and local shape.
* **Frozen teachers** (a direct child of the method with parameters, none trainable, that is no momentum
  target: MCF's ``teacher``, FaRL's dVAE ``mim_target``) are *replicated*: left out of FSDP
  (``ignored_params``), a whole copy on every rank. They are small next to the student and its optimizer
  state (no gradients, no Adam moments), and replicated they need no communication in the forward.

* **Scalar parameters** (FaRL's ``logit_scale``), which ``fully_shard`` cannot split, are replicated too; a
  hook averages their gradients over the ranks as soon as they are accumulated (a mean of means, so also
  right under gradient accumulation), and :func:`split_sharded` gives them their own optimizer parameter
  groups (fused/foreach optimizer kernels take DTensors or plain tensors, not both in one list).

Activation checkpointing (``model.grad_checkpointing``) is the ViT's own ``checkpoint_seq`` around its
blocks, i.e. outside each block's FSDP hooks, which is the composition FSDP2 expects (the block's weights
are gathered again when it is recomputed in the backward).
"""

from __future__ import annotations

import torch
from torch import nn

from facerep.config import ConfigError
from facerep.runtime.distributed import DistInfo
from facerep.train.step import autocast_dtype

# the methods whose sharding is checked against DDP (tests/train/test_fsdp.py); BYOL and FRA train a ResNet
# with SyncBatchNorm and LARS and are not supported yet
FSDP_METHODS = ("mae", "mcf", "farl")
BLOCK_CONTAINERS = ("blocks", "resblocks")


def check_fsdp(method: str, precision: str) -> None:
    """A one-line ConfigError for what ``train.parallel=fsdp`` does not support."""
    if method not in FSDP_METHODS:
        raise ConfigError(
            f"train.parallel=fsdp supports method={', '.join(FSDP_METHODS)}, not method={method}: "
            "use train.parallel=ddp"
        )
    if precision == "fp16":
        raise ConfigError(
            "train.parallel=fsdp does not support train.precision=fp16 (the loss scaler would see each "
            "rank's gradient shards only): use bf16 or fp32"
        )


def mixed_precision(precision: str, device: torch.device):
    """FSDP2's ``MixedPrecisionPolicy`` for ``train.precision``: bf16 weights in the forward/backward where
    the run computes in bf16 (fp32 otherwise); gradients are always reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = autocast_dtype(precision, device) or torch.float32
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def momentum_targets(method: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The ``(online, target)`` pairs of a momentum method, ``[]`` for the others."""
    pairs = getattr(method, "momentum_pairs", None)
    return list(pairs()) if callable(pairs) else []


def replicated_modules(method: nn.Module) -> dict[str, nn.Module]:
    """The frozen teachers: direct children with parameters, none trainable, that are no momentum target."""
    targets = {id(t) for _, t in momentum_targets(method)}
    found = {}
    for name, child in method.named_children():
        params = list(child.parameters())
        if params and id(child) not in targets and not any(p.requires_grad for p in params):
            found[name] = child
    return found


def transformer_blocks(method: nn.Module, skip: list[nn.Module]) -> list[nn.Module]:
    """Every child of a ``blocks``/``resblocks`` container outside the ``skip`` modules (each module once)."""
    skipped = {id(m) for s in skip for m in s.modules()}
    blocks = []
    for name, module in method.named_modules():
        if id(module) in skipped or name.rsplit(".", 1)[-1] not in BLOCK_CONTAINERS:
            continue
        if isinstance(module, nn.Sequential | nn.ModuleList):
            blocks += list(module.children())
    return blocks


def wrap_fsdp(method: nn.Module, info: DistInfo, precision: str) -> nn.Module:
    """Shard ``method`` with FSDP2 over all ranks (see the module docstring); returns it (now an
    ``FSDPModule``). Build the optimizer afterwards: ``fully_shard`` replaces the parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    policy = mixed_precision(precision, info.device)
    replicated = list(replicated_modules(method).values())
    for block in transformer_blocks(method, replicated):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    ignored = {p for module in replicated for p in module.parameters()}
    for param in method.parameters():
        if param.ndim == 0 and param not in ignored:
            ignored.add(param)
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(_average_grad)
    fully_shard(method, mesh=mesh, mp_policy=policy, ignored_params=ignored or None)
    for online, target in momentum_targets(method):
        for (name, p), q in zip(online.named_parameters(), target.parameters(), strict=True):
            same = getattr(p, "placements", None) == getattr(q, "placements", None)
            if not same or _local(p).shape != _local(q).shape:
                raise ConfigError(f"train.parallel=fsdp: momentum target of {name} is not sharded like it")
    return method


def _average_grad(param: torch.Tensor) -> None:
    import torch.distributed as dist

    dist.all_reduce(param.grad)
    param.grad /= dist.get_world_size()


def split_sharded(groups: list[dict]) -> list[dict]:
    """Optimizer parameter groups with the sharded (DTensor) and the replicated parameters of each group in
    two groups of the same settings (empty groups dropped)."""
    from torch.distributed.tensor import DTensor

    split = []
    for group in groups:
        for sharded in (True, False):
            params = [p for p in group["params"] if isinstance(p, DTensor) == sharded]
            if params:
                split.append({**group, "params": params})
    return split


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p
