"""How far one LARS step moves FRA's tensors: FRA's groups and step (facerep's default since issue 22)
against the grouping and optimizer facerep used before (timm's ``Lars``, 1-D tensors and the query
embeddings excluded), on identical gradients of the CPU recipe's first batch.

    python scripts/fra_lars_step.py [--config configs/fra_cpu_tiny.yaml] [--lr 0.5] [--wd 1e-6]
"""

from __future__ import annotations

import argparse

import torch
from timm.optim import Lars

from facerep.config import PretrainConfig, load_config
from facerep.methods import build_method
from facerep.runtime.optim import LARS, split_param_groups, timm_excluded

SHOWN = (
    "head.decoder.query_embed",
    "head.decoder.layers.0.self_attn.in_proj_weight",
    "head.decoder.layers.0.norms.0.weight",
    "head.decoder.norm.weight",
    "head.project.1.weight",
    "head.project.0.weight",
    "encoder.bn1.weight",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fra_cpu_tiny.yaml")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--wd", type=float, default=1e-6)
    args = parser.parse_args()
    cfg = load_config(PretrainConfig, args.config, ["fra.query_init=zeros", "fra.decoder_dropout=0"])
    torch.manual_seed(0)
    method = build_method(cfg)
    size = cfg.data.image_size
    loss, _ = method({"views": [torch.randn(cfg.train.batch_size, 3, size, size) for _ in range(2)]})
    loss.backward()
    params = dict(method.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}

    def moved(optimizer: torch.optim.Optimizer) -> dict[str, float]:
        optimizer.step()
        out = {n: (params[n] - before[n]).norm().item() for n in grads}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(before[n])
        return out

    timm_rule = timm_excluded(method)
    old_groups = split_param_groups(
        method.named_parameters(), args.wd, lambda n, p: timm_rule(n, p) or n.endswith("query_embed")
    )
    old = moved(Lars([{k: v for k, v in g.items() if k != "lars_exclude"} for g in old_groups], lr=args.lr))
    new = moved(LARS(method.param_groups(args.wd), lr=args.lr))
    print(f"{'tensor':50s} {'before':>10s} {'FRA':>10s} {'FRA/before':>11s}")
    for name in SHOWN:
        ratio = f"{new[name] / old[name]:.3g}" if old[name] > 0 else "inf"
        print(f"{name:50s} {old[name]:10.3e} {new[name]:10.3e} {ratio:>11s}")


if __name__ == "__main__":
    main()
