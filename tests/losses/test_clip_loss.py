"""CLIP's image-text contrastive loss: a hand-computed case, argument checks, 2 gloo ranks with gradients."""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from facerep.losses.clip import clip_contrastive_loss
from gloo import gloo_group


def _nll(row: list[float], positive: int) -> float:
    return -row[positive] + math.log(sum(math.exp(v) for v in row))


def test_matches_a_hand_computed_case():
    image = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised inside: e1, e2
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # s * I T^T = [[2, 1.2], [0, 1.6]]
    i2t = (_nll([2.0, 1.2], 0) + _nll([0.0, 1.6], 1)) / 2
    t2i = (_nll([2.0, 0.0], 0) + _nll([1.2, 1.6], 1)) / 2
    got = clip_contrastive_loss(image, text, 2.0)
    assert got.item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)
    assert clip_contrastive_loss(image, text, torch.tensor(2.0), local_loss=True).item() == pytest.approx(
        got.item(), abs=1e-7
    )


def test_perfectly_aligned_pairs_at_high_scale_cost_nothing():
    x = torch.eye(4)
    assert clip_contrastive_loss(x, x * 5, 100.0).item() < 1e-20


def test_shape_mismatch_is_one_line_error():
    with pytest.raises(ValueError, match=r"\[N, E\]"):
        clip_contrastive_loss(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)


def _pairs(world: int, n: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(world * n, e, generator=g), torch.randn(world * n, e, generator=g)


def _worker(rank: int, world: int, init_file: str, out_dir: str, local_loss: bool) -> None:
    with gloo_group(rank, world, init_file):
        n = 3
        img_all, txt_all = _pairs(world, n, 5)
        img = img_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        txt = txt_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = clip_contrastive_loss(img, txt, 3.0, local_loss=local_loss)
        loss.backward()
        out = {"loss": loss.detach(), "img_grad": img.grad, "txt_grad": txt.grad}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("local_loss", [False, True])
def test_two_gloo_ranks_gather_features_with_gradients(tmp_path, local_loss):
    """Each rank's loss uses the 2N gathered pairs, and the gradient reaching each rank's own inputs is the
    sum over ranks of their losses' gradients: W x the gradient of the global-batch loss (DDP then divides
    the parameter gradients by W)."""
    world, n = 2, 3
    mp.spawn(
        _worker, args=(world, str(tmp_path / "init"), str(tmp_path), local_loss), nprocs=world, join=True
    )
    img_all, txt_all = _pairs(world, n, 5)
    img_all.requires_grad_(True)
    txt_all.requires_grad_(True)
    full = clip_contrastive_loss(img_all, txt_all, 3.0, gather=False)
    full.backward()
    losses = []
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt")
        rows = slice(r * n, (r + 1) * n)
        losses.append(got["loss"])
        assert got["img_grad"].abs().sum() > 0 and got["txt_grad"].abs().sum() > 0
        torch.testing.assert_close(got["img_grad"], world * img_all.grad[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["txt_grad"], world * txt_all.grad[rows], rtol=1e-5, atol=1e-6)
        if not local_loss:
            torch.testing.assert_close(got["loss"], full.detach())
        # a rank that scored only its own N pairs (no gathering) would see another loss:
        local_only = clip_contrastive_loss(img_all[rows].detach(), txt_all[rows].detach(), 3.0, gather=False)
        assert not torch.allclose(got["loss"], local_only)
    torch.testing.assert_close(sum(losses) / world, full.detach())
