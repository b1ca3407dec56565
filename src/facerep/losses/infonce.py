"""InfoNCE with keys gathered across ranks (MoCo v3 form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facerep.runtime.distributed import all_gather_nograd, rank


def infonce_loss(
    query: torch.Tensor, key: torch.Tensor, temperature: float = 0.2, gather: bool = True
) -> torch.Tensor:
    """Contrastive loss of each query against every key of the global batch, scaled by ``2 * T``.

    Query ``i`` of rank ``r`` has its positive at row ``r * N + i`` of the gathered keys; every other
    key is a negative. Keys carry no gradient (they come from the momentum encoder).

    Args:
        query: ``[N, C]`` online predictions (any scale; L2-normalised here).
        key: ``[N, C]`` momentum-encoder projections of the same images.
        temperature: softmax temperature ``T`` (> 0).
        gather: gather keys from all ranks when running distributed.
    Returns:
        scalar ``2T * CE(q k^T / T, positives)``, as MoCo v3 and MCF.
    """
    if temperature <= 1e-8:
        raise ValueError(f"temperature must be > 1e-8, got {temperature}")
    if query.ndim != 2 or query.shape != key.shape:
        raise ValueError(f"query and key must both be [N, C], got {list(query.shape)} and {list(key.shape)}")
    q = F.normalize(query, dim=1)
    k = F.normalize(key.detach(), dim=1)
    offset = 0
    if gather:
        k = all_gather_nograd(k)
        offset = rank() * q.shape[0]
    logits = q @ k.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits.float(), labels) * (2 * temperature)
