"""The two gathers under a real 2-process gloo group: with gradients (image-text losses) and without."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from facerep.runtime.distributed import all_gather_nograd, all_gather_with_grad
from gloo import gloo_group

N, C = 3, 4


def _inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's features ``[N, C]`` and the weights ``[2N, C]`` of its loss over the gathered batch."""
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randn(N, C, generator=g), torch.randn(2 * N, C, generator=g)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    with gloo_group(rank, world, init_file):
        x, weights = _inputs(rank)
        x.requires_grad_(True)
        gathered = all_gather_with_grad(x)
        (gathered * weights).sum().backward()  # this rank's loss depends on every rank's features
        plain = all_gather_nograd(x)
        torch.save(
            {"gathered": gathered.detach(), "grad": x.grad, "plain": plain, "plain_grad_fn": plain.grad_fn},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )


@pytest.mark.slow
def test_gather_with_grad_sums_every_ranks_gradient(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    xs, ws = zip(*(_inputs(r) for r in range(world)), strict=True)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["gathered"], torch.cat(xs))  # rank order
        rows = slice(rank * N, (rank + 1) * N)
        torch.testing.assert_close(got["grad"], sum(w[rows] for w in ws))  # d(sum of losses)/d(x_rank)
        assert not torch.allclose(got["grad"], ws[rank][rows])  # a local-only gradient would miss rank 1-r
        torch.testing.assert_close(got["plain"], torch.cat(xs))
        assert got["plain_grad_fn"] is None


def test_single_process_gathers_are_the_identity():
    x = torch.randn(2, 3, requires_grad=True)
    assert all_gather_with_grad(x) is x and all_gather_nograd(x) is x
