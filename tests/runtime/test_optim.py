"""LARS as FRA's and BYOL-PyTorch's code step, and the weight-decay rules of the references."""

import copy

import pytest
import torch
from torch import nn

from facerep.runtime.optim import LARS, fra_excluded, mae_excluded, split_param_groups, timm_excluded
from lars_reference import reference_lars


def _run_lars(w0, grads, lrs, wd, momentum, exclude):
    p = nn.Parameter(w0.clone())
    opt = LARS([{"params": [p], "weight_decay": wd, "lars_exclude": exclude}], lr=lrs[0], momentum=momentum)
    for g, lr in zip(grads, lrs, strict=True):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()
    return p.detach()


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("wd", [1e-6, 0.0, 0.05])
def test_lars_takes_fras_step_with_a_changing_lr_and_momentum(wd, exclude):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(7, 5, generator=gen)
    grads = [torch.randn(7, 5, generator=gen) * s for s in (1.0, 0.1, 3.0)]
    lrs = [0.9, 0.5, 0.1]  # a schedule: the lr multiplies the update before the momentum buffer
    expected = reference_lars(w0, grads, lrs, wd, 0.9, exclude)
    torch.testing.assert_close(
        _run_lars(w0, grads, lrs, wd, 0.9, exclude).double(), expected, rtol=1e-5, atol=1e-7
    )


def test_the_trust_ratio_does_not_depend_on_weight_decay_being_on():
    """timm's ``Lars`` gives every tensor of a group without weight decay plain SGD (ratio 1)."""
    w0, g = torch.full((4,), 2.0), torch.full((4,), 0.5)  # |w| = 4, |g| = 1
    moved = w0 - _run_lars(w0, [g], [1.0], wd=0.0, momentum=0.0, exclude=False)
    torch.testing.assert_close(moved, g * (1e-3 * 4.0 / (1.0 + 1e-8)))  # ratio 0.004, not 1


def test_a_zero_gradient_tensor_gets_eta_over_wd_and_a_zero_tensor_never_moves():
    w0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    moved = w0 - _run_lars(w0, [torch.zeros_like(w0)], [0.9], wd=1e-6, momentum=0.9, exclude=False)
    # ratio = eta |w| / (wd |w| + eps) ~ eta / wd = 1000; the step is lr * ratio * wd * w ~ lr * eta * w
    norm = w0.norm().item()
    ratio = 1e-3 * norm / (1e-6 * norm + 1e-8)
    assert ratio == pytest.approx(1000, rel=0.01)
    torch.testing.assert_close(moved, 0.9 * ratio * 1e-6 * w0, rtol=1e-4, atol=1e-9)
    zeros = torch.zeros(3)
    assert torch.equal(_run_lars(zeros, [torch.ones(3)], [0.9], 1e-6, 0.9, exclude=False), zeros)


def test_lars_checks_its_arguments_and_resumes_its_momentum():
    with pytest.raises(ValueError, match="LARS needs"):
        LARS([nn.Parameter(torch.ones(1))], lr=-1.0)
    gen = torch.Generator().manual_seed(2)
    w0, grads = torch.randn(5, generator=gen), [torch.randn(5, generator=gen) for _ in range(3)]
    p = nn.Parameter(w0.clone())
    opt = LARS([p], lr=0.5, momentum=0.9, weight_decay=1e-4)
    for g in grads[:2]:
        p.grad = g.clone()
        opt.step()
    q = nn.Parameter(p.detach().clone())
    resumed = LARS([q], lr=0.5, momentum=0.9, weight_decay=1e-4)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # as through torch.save / torch.load
    p.grad, q.grad = grads[2].clone(), grads[2].clone()
    opt.step()
    resumed.step()
    assert torch.equal(p, q)


class _Tiny(nn.Module):
    """Names as FRA's modules have them: a backbone BatchNorm ``bn1``, a shortcut ``downsample.1``, a
    BatchNorm inside an ``nn.Sequential`` (``proj.1``), a LayerNorm, a 2-D query table and a 3-D token."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.downsample = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.proj = nn.Sequential(nn.Linear(4, 4, bias=False), nn.BatchNorm1d(4), nn.Linear(4, 2))
        self.norm = nn.LayerNorm(4)
        self.query_embed = nn.Parameter(torch.randn(3, 4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}


def _split(model, rule):
    decayed, excluded = split_param_groups(model.named_parameters(), 0.1, rule)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]
    return {names[id(p)] for p in decayed["params"]}, {names[id(p)] for p in excluded["params"]}


def test_the_three_reference_rules():
    model = _Tiny()
    biases_and_norms = {
        "bn1.weight", "bn1.bias", "downsample.1.weight", "downsample.1.bias", "proj.1.weight", "proj.1.bias",
        "proj.2.bias", "norm.weight", "norm.bias",
    }  # fmt: skip
    decayed, excluded = _split(model, timm_excluded(model))
    assert excluded == biases_and_norms | {"cls_token"}
    decayed, excluded = _split(model, mae_excluded)
    assert excluded == biases_and_norms and "cls_token" in decayed
    decayed, excluded = _split(
        model, fra_excluded
    )  # by name: the Sequential's BatchNorm and the LayerNorm decay
    assert excluded == {"bn1.weight", "bn1.bias", "downsample.1.weight", "downsample.1.bias", "proj.1.bias",
                        "proj.2.bias", "norm.bias"}  # fmt: skip
    assert {"proj.1.weight", "norm.weight", "query_embed", "cls_token"} <= decayed
    assert "frozen" not in decayed | excluded
