"""BYOL, FRA's region loss, Sinkhorn and the cluster-assignment loss against hand-computed cases."""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from facerep.losses.byol import byol_loss, region_consistency_loss
from facerep.losses.clustering import cluster_assignment_loss, sinkhorn
from gloo import gloo_group


def test_byol_loss_by_hand():
    p = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, -1.0]])  # cosines 1, 0, -1
    assert byol_loss(p, z).item() == pytest.approx(2 - 2 * (1 + 0 - 1) / 3)
    with pytest.raises(ValueError, match=r"two \[N, D\] tensors"):
        byol_loss(p, z[:2])


def test_region_consistency_loss_by_hand():
    # one image, two regions: predictions e1, e2; targets e1 (matched) and (e1 + e2) / sqrt 2
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    z = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    loss, match, decor = region_consistency_loss(p, z, decorrelation_weight=0.5)
    c = 1 / math.sqrt(2)
    assert match.item() == pytest.approx(2 - 2 * (1 + c) / 2)
    # off-diagonal cosines: cos(p0, z1) = c, cos(p1, z0) = 0 -> mean over (b, q) of sum / Q
    assert decor.item() == pytest.approx((c**2 / 2 + 0.0) / 2)
    assert loss.item() == pytest.approx(match.item() + 0.5 * decor.item())


def _sinkhorn_by_hand(probs, iterations):
    q = probs.double().t().clone()
    k, m = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True) * k
        q /= q.sum(0, keepdim=True) * m
    return (q * m).t()


def test_sinkhorn_balances_prototypes_and_normalises_rows():
    probs = torch.softmax(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    out = sinkhorn(probs, iterations=3)
    torch.testing.assert_close(out.double(), _sinkhorn_by_hand(probs, 3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(1), torch.ones(12))  # every pixel fully assigned
    many = sinkhorn(probs, iterations=200)
    torch.testing.assert_close(many.sum(0), torch.full((4,), 3.0), rtol=1e-3, atol=1e-3)  # M / K each
    with pytest.raises(ValueError, match="iteration"):
        sinkhorn(probs, iterations=0)


def test_cluster_assignment_loss_by_hand():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    loss, ce, gap = cluster_assignment_loss(student, teacher, 0.1, 0.04, sinkhorn_iterations=3)
    targets = _sinkhorn_by_hand(torch.softmax(teacher / 0.04, dim=1), 3).float()
    log_p = F.log_softmax(student / 0.1, dim=1)
    assert ce.item() == pytest.approx(-(targets * log_p).sum(1).mean().item(), rel=1e-5)
    mean_p = log_p.exp().mean(0)
    assert gap.item() == pytest.approx(math.log(3) + (mean_p * mean_p.log()).sum().item(), rel=1e-5, abs=1e-6)
    assert loss.item() == pytest.approx(ce.item() + gap.item(), rel=1e-6)


def test_mean_entropy_gap_is_zero_for_a_uniform_average_and_only_the_student_gets_gradients():
    student = torch.tensor([[5.0, 0.0], [0.0, 5.0]], requires_grad=True)  # average assignment uniform
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss, _, gap = cluster_assignment_loss(student, teacher, sinkhorn_iterations=0)
    assert gap.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert student.grad is not None and teacher.grad is None


def _rows(world, n):
    g = torch.Generator().manual_seed(5)
    return torch.randn(world * n, 4, generator=g), torch.randn(world * n, 4, generator=g)


def _worker(rank, world, init_file, out_dir):
    with gloo_group(rank, world, init_file):
        n = 6
        s_all, t_all = _rows(world, n)
        student = s_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        teacher = t_all[rank * n : (rank + 1) * n]
        balanced = sinkhorn(torch.softmax(teacher / 0.04, 1), 3)
        _, ce, gap = cluster_assignment_loss(student, teacher)
        torch.save(
            {"balanced": balanced, "ce": ce.detach(), "gap": gap.detach()},
            os.path.join(out_dir, f"{rank}.pt"),
        )


@pytest.mark.slow
def test_sinkhorn_and_mean_entropy_span_the_global_batch_on_two_gloo_ranks(tmp_path):
    world, n = 2, 6
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    s_all, t_all = _rows(world, n)
    whole = sinkhorn(torch.softmax(t_all / 0.04, 1), 3)
    _, _, gap = cluster_assignment_loss(s_all, t_all)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    torch.testing.assert_close(torch.cat([p["balanced"] for p in parts]), whole)
    for p in parts:  # the mean-entropy term is of the global average assignment
        assert p["gap"].item() == pytest.approx(gap.item(), rel=1e-5, abs=1e-6)
