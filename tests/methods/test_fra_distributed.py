"""FRA's batch statistics span every process, as its code computes them over all GPUs (``--norm SyncBN``,
all-reduced mask-embedding mean, Sinkhorn and mean-entropy): under a real 2-process gloo group the loss on
2 x N images and its DDP-averaged gradients equal one process's on the concatenated batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from facerep.config import PretrainConfig, load_config
from facerep.methods import build_method
from facerep.models.batchnorm import GlobalBatchNorm, sync_batchnorm
from gloo import gloo_group

N = 3  # images per process
WATCHED = (
    "encoder.conv1.weight", "encoder.layer4.1.bn2.weight", "head.project.0.weight",
    "head.project_pixel.1.weight", "head.decoder.query_embed",
    "head.decoder.layers.0.cross_attn.in_proj_weight", "predictor.0.weight", "region_predictor.0.weight",
)  # fmt: skip


def _method():
    cfg = load_config(
        PretrainConfig, None,
        ["method=fra", "model.arch=resnet18", "data.image_size=64", "byol.hidden_dim=32", "byol.proj_dim=16",
         "fra.num_regions=4", "fra.decoder_heads=2", "fra.decoder_dropout=0", "fra.query_init=learned"],
    )  # fmt: skip
    torch.manual_seed(0)
    return build_method(cfg).train()


def _views(world):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(world * N, 3, 64, 64, generator=g) for _ in range(2)]


def _norm_inputs(world):
    g = torch.Generator().manual_seed(3)
    return torch.randn(world * N, 5, 4, 4, generator=g) * 3 + 1, torch.randn(world * N, 5, 4, 4, generator=g)


def _worker(rank, world, init_file, out_dir):
    with gloo_group(rank, world, init_file):
        part = slice(rank * N, (rank + 1) * N)
        x_all, w_all = _norm_inputs(world)
        norm = GlobalBatchNorm(5)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
        x = x_all[part].clone().requires_grad_(True)
        out = norm(x)
        (out * w_all[part]).sum().backward()
        norm_result = {"out": out.detach(), "x_grad": x.grad, "weight_grad": norm.weight.grad,
                       "running_mean": norm.running_mean, "running_var": norm.running_var}  # fmt: skip

        method = sync_batchnorm(_method(), torch.device("cpu"))
        assert any(isinstance(m, GlobalBatchNorm) for m in method.modules())
        loss, terms = method({"views": [v[part] for v in _views(world)]})
        loss.backward()
        params = dict(method.named_parameters())
        grads = {}
        for name in WATCHED:  # DDP's average over ranks
            g = params[name].grad.clone()
            dist.all_reduce(g)
            grads[name] = g / world
        torch.save(
            {"norm": norm_result, "loss": loss.detach(), "terms": terms, "grads": grads},
            os.path.join(out_dir, f"{rank}.pt"),
        )


@pytest.mark.slow
def test_fra_on_two_gloo_ranks_equals_one_process_on_the_whole_batch(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]

    # GlobalBatchNorm alone: outputs, input gradients, summed weight gradients and running statistics
    x_all, w_all = _norm_inputs(world)
    norm = nn.BatchNorm2d(5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    x = x_all.clone().requires_grad_(True)
    out = norm(x)
    (out * w_all).sum().backward()
    got = [p["norm"] for p in parts]
    torch.testing.assert_close(torch.cat([g["out"] for g in got]), out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([g["x_grad"] for g in got]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sum(g["weight_grad"] for g in got), norm.weight.grad, rtol=1e-4, atol=1e-5)
    for g in got:
        torch.testing.assert_close(g["running_mean"], norm.running_mean)
        torch.testing.assert_close(g["running_var"], norm.running_var)

    # the whole method: mean of the ranks' losses and terms, DDP-averaged gradients
    method = _method()
    loss, terms = method({"views": _views(world)})
    loss.backward()
    mean_loss = sum(p["loss"] for p in parts) / world
    assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-4)
    for key, value in terms.items():
        assert (sum(p["terms"][key] for p in parts) / world).item() == pytest.approx(
            value.item(), rel=1e-4
        ), key
    params = dict(method.named_parameters())
    for name in WATCHED:  # float32 sums in another order: equal to ~1e-5 of the gradient's norm
        expected = params[name].grad
        for p in parts:
            assert (p["grads"][name] - expected).norm() <= 1e-4 * expected.norm(), name
