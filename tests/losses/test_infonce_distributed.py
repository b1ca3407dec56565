"""InfoNCE under a real 2-process gloo group: keys are gathered across ranks and labels offset."""

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from facerep.losses.infonce import infonce_loss
from gloo import gloo_group


def _all_queries_keys(world: int, n: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(world * n, c, generator=g), torch.randn(world * n, c, generator=g)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, world, init_file):
        n, c = 4, 8
        q_all, k_all = _all_queries_keys(world, n, c)
        q = q_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        k = k_all[rank * n : (rank + 1) * n]
        loss = infonce_loss(q, k, temperature=0.2)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": q.grad}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_keys_are_gathered_across_two_gloo_ranks(tmp_path):
    world, n = 2, 4
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    q_all, k_all = _all_queries_keys(world, n, 8)
    logits_all = F.normalize(q_all, dim=1) @ F.normalize(k_all, dim=1).T / 0.2
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(rank * n, (rank + 1) * n)
        expected = F.cross_entropy(logits_all[rows], torch.arange(n) + rank * n) * 0.4
        torch.testing.assert_close(got["loss"], expected)
        # a local-only loss (N negatives instead of 2N) would differ:
        local = F.cross_entropy(logits_all[rows][:, rows], torch.arange(n)) * 0.4
        assert not torch.allclose(got["loss"], local)
