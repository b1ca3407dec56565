"""The process group every 2-process gloo test's worker runs in."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist


@contextmanager
def gloo_group(rank: int, world: int, init_file: str) -> Iterator[None]:
    """Join a gloo group of ``world`` processes rendezvousing on ``init_file``; leave it on exit."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
