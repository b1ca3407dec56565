"""Memory per GPU on paper for MCF and MAE pre-training under DDP and FSDP2; a CPU check of the sharded terms.

Usage::

    python scripts/memory_table.py --out docs/memory_table.md          # the table (seconds, no GPU)
    python scripts/memory_table.py --measure                           # + 2 gloo processes on the CPU

**Parameter counts** are exact: each method is built by facerep's own builders (``load_config`` +
``build_method``) on the ``meta`` device, and its modules are counted. ``T``: trainable parameters (student
encoder + decoder + MCF's projector and predictor); ``F_s``: frozen parameters that shard with the student
(the momentum encoder and projector, updated elementwise by EMA from the sharded online weights, and the
fixed sin-cos position embeddings); ``F_r``: the frozen teacher (MCF), replicated on every GPU under both
DDP and FSDP2 (it is never trained, so there is nothing to shard it for; sharding it too would save
``4 F_r (W - 1) / W`` bytes at the cost of an all-gather per teacher block).

**Model states per GPU** (bytes; ``d = 1`` under DDP, ``d = W`` (world size) under FSDP2). The standard
mixed-precision Adam accounting is ZeRO's ``2 + 2 + 12 = 16`` bytes per parameter (Rajbhandari et al.,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models", SC 2020, Sec. 3.1: fp16 weights and
gradients, fp32 master weights, Adam momentum and variance). torch's autocast (what facerep runs) keeps the
weights *themselves* in fp32 (they are the master weights) and their gradients in fp32, and casts the weights
to bf16 on the fly, so it is the same 16 bytes held differently plus the bf16 copies:

* fp32 master weights ``4 T / d``;  gradients (fp32) ``4 T / d``;  AdamW ``exp_avg`` + ``exp_avg_sq``
  ``8 T / d`` (+ one 4-byte ``step`` tensor per parameter tensor);
* DDP's gradient buckets ``4 T`` (DDP only: facerep's ``wrap_ddp`` keeps torch's default
  ``gradient_as_bucket_view=False``, which holds a second fp32 copy of every gradient; torch's DDP docs);
* bf16 copies of the weights: DDP ``2 (T + F_r)`` (autocast's casts, saved for backward); FSDP2 with
  ``MixedPrecisionPolicy(param_dtype=bf16)`` and ``reshard_after_forward=True``: ``2 x 2 x P_block`` (the
  block being computed plus the one prefetched; torch's ``fully_shard`` docs) ``+ 2 F_r`` (the teacher);
* frozen: ``4 F_s / d + 4 F_r``.

**Activations per GPU** (bytes, per micro-batch of ``b`` images), summed over the transformer blocks whose
activations autograd keeps (Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
Models", MLSys 2023, Sec. 4.1: ``s b h (34 + 5 a s / h)`` per layer in fp16, with dropout). For one block of
``s`` tokens, width ``h``, ``a`` heads and MLP ratio ``r`` (4), under bf16 autocast with no dropout and fused
attention (``F.scaled_dot_product_attention``, which timm uses: no ``a s^2`` score matrix, a 4-byte
log-sum-exp per head and token instead):

* trained block: ``A = b [(20 + 4 r) s h + 4 a s + 16 s]``: LayerNorm inputs ``2 x 4 s h`` (the residual
  stream is fp32 under autocast) and their fp32 mean and rstd ``16 s``, qkv input ``2 s h``, q, k, v
  ``6 s h``, attention output ``2 s h`` (also the projection's input), fc1 input ``2 s h``, GELU input and
  output ``2 x 2 r s h``; Korthikanti's ``34`` minus the dropout masks (2) and with fp32 LayerNorm inputs (+4)
  is this ``36`` at ``r = 4``;
* frozen block that gradients flow *through* (MCF's teacher reading the reconstruction): the linear layers'
  inputs are not saved (no weight gradient), so ``A_frozen = b [(16 + 2 r) s h + 4 a s + 16 s]``;

both are exactly what autograd saves for a timm block under CPU bf16 autocast (``saved_tensors_hooks``,
``tests/test_memory_table.py``), the bf16 weight casts aside (counted above);
* blocks run under ``no_grad`` (momentum encoder, the teacher reading the input) keep nothing.

Tokens: MCF and MAE mask 75 %, so the encoder sees ``s = 1 + int(L / 4)`` (50 for /16 at 224 px, 65 for /14);
the decoder ``1 + L`` at its width (512 x 8 blocks, 16 heads in the recipes); MCF's teacher ``1 + L_t``
(ViT-B/16 at 224: 197) through blocks ``0 .. max(teacher.blocks)``. With activation checkpointing
(``model.grad_checkpointing=true``, per encoder block: timm's ``checkpoint_seq``) the encoder keeps only each
block's fp32 input ``4 b s h`` plus one block recomputed in backward: ``L_e 4 b s h + A``; the decoder and the
teacher are not checkpointed. Embeddings, heads and losses are not counted.

``--measure`` runs the repo's tiny test model (``tests/conftest.py`` ``TINY``: a 2-block, 64-wide ViT at 32
px, MCF) for a few steps in 2 gloo processes on the CPU (fp32: facerep's ``precision=auto`` on a CPU), under
DDP (facerep's ``wrap_ddp``) and FSDP2 (facerep's ``train.parallel=fsdp`` wrapping, ``wrap_fsdp``:
``fully_shard`` per block, then the method, the teacher left unsharded; :func:`shard_fsdp2` where it is
missing), and compares each process's peak bytes of parameters + gradients + AdamW state (local shards:
``to_local()`` of DTensors), read right after ``optimizer.step()`` (before ``zero_grad``), with the prediction
for the same model.
FSDP2 splits each tensor along dim 0 in ``torch.chunk`` pieces (``ceil(n / W)`` rows, the last ranks possibly
empty), so the exact prediction uses that rule; ``/ W`` is its approximation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerep.config import PretrainConfig, load_config

GIB = 1024**3
ARCHS = ("vit_base_patch16_224", "vit_large_patch16_224", "vit_huge_patch14_224")
METHODS = ("mcf", "mae")
# the paper recipes (configs/mcf_vit_base_patch16.yaml, configs/mae_vit_base_patch16.yaml) at 224 px
RECIPE = ["data.image_size=224", "decoder.embed_dim=512", "decoder.depth=8", "decoder.num_heads=16",
          "mcf.proj_hidden_dim=4096", "mcf.proj_dim=256", "teacher.checkpoint=random",
          "teacher.blocks=[2,5,8,11]", "teacher.img_size=224"]  # fmt: skip
# the repo's tiny test model (tests/conftest.py TINY)
TINY = ["model.arch=vit_tiny_patch16_224", "model.depth=2", "model.embed_dim=64", "model.num_heads=2",
        "data.image_size=32", "data.synthetic_length=256", "data.num_workers=0", "decoder.embed_dim=32",
        "decoder.depth=1", "decoder.num_heads=2", "mcf.proj_hidden_dim=64", "mcf.proj_dim=32",
        "teacher.checkpoint=random", "train.batch_size=4", "device=cpu"]  # fmt: skip
REPLICATED = ("teacher",)  # modules FSDP2 leaves whole on every rank
FORWARD_METHODS = ("forward_masked", "forward_block_tokens")  # called instead of forward()


def method_config(method: str, overrides: list[str]) -> PretrainConfig:
    """A pre-training config of ``method`` with ``overrides`` (facerep's own loader and checks)."""
    return load_config(PretrainConfig, None, [f"method={method}", *overrides])


def build_meta(cfg: PretrainConfig) -> nn.Module:
    """``cfg``'s method built by facerep on the ``meta`` device: exact shapes, no memory."""
    from facerep.methods import build_method

    with torch.device("meta"):
        return build_method(cfg)


@dataclass(frozen=True)
class Counts:
    """Parameter counts of one method (see the module docstring)."""

    encoder: int  # trainable student encoder
    heads: int  # trainable decoder, projector, predictor
    momentum: int  # momentum encoder + projector, and other frozen parameters that shard (sin-cos pos embeds)
    teacher: int  # frozen, replicated
    block: int  # the largest student block (FSDP2's unit)
    tensors: int  # trainable parameter tensors (one AdamW ``step`` each)

    @property
    def trainable(self) -> int:
        return self.encoder + self.heads


def count(model: nn.Module) -> Counts:
    """:class:`Counts` of a built method (any device)."""
    enc = heads = momentum = teacher = tensors = 0
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        if top in REPLICATED:
            teacher += p.numel()
        elif not p.requires_grad:
            momentum += p.numel()
        else:
            tensors += 1
            if top == "encoder":
                enc += p.numel()
            else:
                heads += p.numel()
    block = max(sum(p.numel() for p in b.parameters()) for b in model.encoder.blocks)
    return Counts(enc, heads, momentum, teacher, block, tensors)


def block_activations(
    tokens: int, dim: int, heads: int, mlp_ratio: float = 4.0, frozen: bool = False
) -> float:
    """Bytes one transformer block keeps for backward per image (module docstring; bf16 autocast, fused
    attention): ``(20 + 4 r) s h + 4 a s + 16 s``, or ``(16 + 2 r) s h + 4 a s + 16 s`` for frozen weights."""
    per_token = (16 + 2 * mlp_ratio) if frozen else (20 + 4 * mlp_ratio)
    return per_token * tokens * dim + 4 * heads * tokens + 16 * tokens


def activations(model: nn.Module, cfg: PretrainConfig, batch: int, checkpointing: bool) -> float:
    """Bytes of activations per GPU for a micro-batch of ``batch`` images (module docstring)."""
    from facerep.backbones.vit import num_kept

    enc = model.encoder
    arch = enc.arch
    ratio = cfg.mcf.mask_ratio if cfg.method == "mcf" else cfg.mae.mask_ratio
    s_enc = 1 + num_kept(enc.num_patches, ratio)
    one = block_activations(s_enc, arch.embed_dim, arch.num_heads, arch.mlp_ratio)
    depth = len(enc.blocks)
    total = (depth * 4 * s_enc * arch.embed_dim + one) if checkpointing else depth * one
    dec = cfg.decoder
    total += dec.depth * block_activations(1 + enc.num_patches, dec.embed_dim, dec.num_heads)
    if cfg.method == "mcf":
        t = model.teacher.backbone.arch
        s_t = 1 + (t.img_size // t.patch_size) ** 2
        blocks = max(model.teacher.blocks) + 1
        total += blocks * block_activations(s_t, t.embed_dim, t.num_heads, t.mlp_ratio, frozen=True)
    return batch * total


def model_states(c: Counts, parallel: str, world: int) -> dict[str, float]:
    """Bytes per GPU of each model-state term (module docstring) under ``parallel`` (ddp | fsdp2)."""
    d = world if parallel == "fsdp2" else 1
    t = c.trainable
    return {
        "master": 4 * t / d,  # fp32 weights = AdamW's master copy (ZeRO's 4 of the 12)
        "grads": 4 * t / d,  # fp32 under torch autocast (ZeRO counts 2: fp16 grads)
        "adamw": 8 * t / d + 4 * c.tensors,  # exp_avg + exp_avg_sq (ZeRO's 8 of the 12) + step scalars
        "buckets": 4 * t if parallel == "ddp" else 0.0,  # DDP, gradient_as_bucket_view=False
        "bf16": 2 * (t + c.teacher) if parallel == "ddp" else 2 * (2 * c.block + c.teacher),
        "momentum": 4 * c.momentum / d,
        "teacher": 4 * c.teacher,  # replicated under FSDP2 too
    }


def table(world: int, batches: list[int], teacher_arch: str) -> tuple[str, str]:
    """(parameter-count table, memory table) in Markdown."""
    counts_rows = ["| method | student | params: encoder | decoder + heads | momentum (+ fixed pos) | "
                   "teacher (frozen) | largest block |", "|---|---|--:|--:|--:|--:|--:|"]  # fmt: skip
    head = ("| method | student | parallel | batch/GPU | master fp32 | grads | AdamW | DDP buckets "
            "| bf16 copies | momentum | teacher | activations | act. (ckpt) "
            "| **total** | **total (ckpt)** |")  # fmt: skip
    mem_rows = [head, "|---|---|---|--:|" + "--:|" * 11]
    m = 1e6
    for method in METHODS:
        for arch in ARCHS:
            extra = [f"teacher.arch={teacher_arch}"] if method == "mcf" else []
            cfg = method_config(method, [f"model.arch={arch}", *RECIPE, *extra])
            model = build_meta(cfg)
            c = count(model)
            short = arch.replace("vit_", "").replace("_224", "")
            counts_rows.append(
                f"| {method.upper()} | {short} | {c.encoder / m:.1f} M | {c.heads / m:.1f} M | "
                f"{c.momentum / m:.1f} M | {c.teacher / m:.1f} M | {c.block / m:.2f} M |"
            )
            for parallel in ("ddp", "fsdp2"):
                states = model_states(c, parallel, world)
                fixed = sum(states.values())
                for batch in batches:
                    act = activations(model, cfg, batch, checkpointing=False)
                    act_ck = activations(model, cfg, batch, checkpointing=True)
                    cells = [states[k] / GIB for k in states] + [act / GIB, act_ck / GIB]
                    cells += [(fixed + act) / GIB, (fixed + act_ck) / GIB]
                    body = " | ".join(f"{v:.2f}" for v in cells[:-2])
                    mem_rows.append(
                        f"| {method.upper()} | {short} | {parallel.upper()} | {batch} | {body} | "
                        f"**{cells[-2]:.1f}** | **{cells[-1]:.1f}** |"
                    )
    return "\n".join(counts_rows), "\n".join(mem_rows)


# ----------------------------------------------------------------------------------------- measurement
def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds: a DTensor's local shard, any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def nbytes(t: torch.Tensor) -> int:
    t = local(t)
    return t.numel() * t.element_size()


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state this process holds (local shards)."""
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {
        "params": sum(nbytes(p) for p in params),
        "grads": sum(nbytes(p.grad) for p in params if p.grad is not None),
        "optim": sum(nbytes(v) for v in state),
    }


def shard_rows(rows: int, world: int, rank: int) -> int:
    """Rows of a dim-0 ``torch.chunk`` shard (FSDP2's ``Shard(0)``) that ``rank`` holds."""
    size = math.ceil(rows / world) if rows else 0
    return max(0, min(size, rows - rank * size))


def predicted_bytes(
    model: nn.Module, parallel: str, world: int, rank: int, itemsize: int = 4
) -> dict[str, int]:
    """Exact prediction of :func:`held_bytes` for ``model`` (built on any device; fp32 on the CPU) under
    ``parallel`` (ddp | fsdp2) on ``rank``: AdamW keeps ``exp_avg``, ``exp_avg_sq`` per trainable element and
    a 4-byte ``step`` per trainable tensor."""
    params = grads = optim = 0
    for name, p in model.named_parameters():
        numel = p.numel()
        if parallel == "fsdp2" and name.split(".", 1)[0] not in REPLICATED and p.dim() > 0:
            numel = shard_rows(p.shape[0], world, rank) * (numel // p.shape[0] if p.shape[0] else 0)
        params += itemsize * numel
        if p.requires_grad:
            grads += itemsize * numel
            optim += 2 * itemsize * numel + 4
    return {"params": params, "grads": grads, "optim": optim}


def formula_bytes(model: nn.Module, parallel: str, world: int) -> int:
    """The table's formula for the same terms in fp32 (no bf16 copies, no buckets): ``16 T / d + 4 F_s / d +
    4 F_r + 4 x tensors``."""
    c = count(model)
    d = world if parallel == "fsdp2" else 1
    return round(16 * c.trainable / d + 4 * c.momentum / d + 4 * c.teacher + 4 * c.tensors)


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that ``fully_shard`` wrapped."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shard_fsdp2(method: nn.Module, world: int) -> None:
    """Fallback where facerep has no ``train.parallel=fsdp`` (``facerep.train.parallel.wrap_fsdp``, used
    otherwise); FSDP2 as the table assumes it: ``fully_shard`` per ViT / decoder block, then per module (the
    teacher left whole), with ``forward_masked`` and ``forward_block_tokens`` hooked like ``forward``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh("cpu", (world,))
    for name, module in method.named_children():
        if name in REPLICATED or not any(True for _ in module.parameters()):
            continue
        for block in getattr(module, "blocks", []):
            fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
        for attr in FORWARD_METHODS:
            if hasattr(module, attr):
                register_fsdp_forward_method(module, attr)


def measure_worker(rank: int, world: int, init_file: str, parallel: str, steps: int, out: str) -> None:
    """One process of ``--measure``: the tiny MCF model, ``steps`` optimizer steps; writes its peak bytes."""
    import torch.distributed as dist

    from facerep.data.loader import build_pretrain_loader
    from facerep.methods import build_method
    from facerep.methods.base import with_recipe
    from facerep.runtime.distributed import DistInfo, wrap_ddp
    from facerep.runtime.optim import build_optimizer
    from facerep.train.step import StepLoop, move_to

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = with_recipe(method_config("mcf", [*TINY, f"output_dir={tmp}"]))
            torch.manual_seed(cfg.seed)
            method = build_method(cfg)
            device = torch.device("cpu")
            if parallel == "ddp":
                model: nn.Module = wrap_ddp(method, DistInfo(rank, world, rank, device))
            else:
                try:  # facerep's own train.parallel=fsdp where it exists
                    from facerep.train.parallel import wrap_fsdp
                except ImportError:
                    shard_fsdp2(method, world)
                else:
                    wrap_fsdp(method, DistInfo(rank, world, rank, device), cfg.train.precision)
                model = method
            train = cfg.train
            optimizer = build_optimizer(
                train.optimizer, method.param_groups(train.weight_decay), 1e-4,
                betas=train.betas, momentum=train.momentum, fused=False,
            )  # fmt: skip
            peak = {"params": 0, "grads": 0, "optim": 0}

            def record(*_: Any) -> None:  # right after optimizer.step(), before zero_grad
                now = held_bytes(method, optimizer)
                if sum(now.values()) > sum(peak.values()):
                    peak.update(now)

            # FSDP2 never reshards a root module after its forward, and a root run only under no_grad (the
            # momentum encoder) has no backward to reshard it: its top-level weights (patch embedding, norm)
            # would stay gathered until the next step; reshard every module before the step (and the EMA)
            def reshard(*_: Any) -> None:
                for module in fsdp_modules(method):
                    module.reshard()

            optimizer.register_step_pre_hook(reshard)
            optimizer.register_step_post_hook(record)
            loop = StepLoop(model, optimizer, device, precision=train.precision)
            loader = build_pretrain_loader(
                cfg.data, spec=method.batch_spec(cfg.data), batch_size=train.batch_size, seed=cfg.seed,
                rank=rank, world_size=world,
            )  # fmt: skip
            batches = iter(loader)
            for step in range(steps):
                loop.step(batches, lambda m, b: m(move_to(b, device)))
                method.on_optimizer_step(step + 1, steps)
            Path(out).write_text(json.dumps(peak))
    finally:
        dist.destroy_process_group()


def measure(world: int = 2, steps: int = 2, parallels: tuple[str, ...] = ("ddp", "fsdp2")) -> list[dict]:
    """Run :func:`measure_worker` in ``world`` processes per mode; one row per (mode, rank): measured,
    exactly predicted and formula bytes."""
    import torch.multiprocessing as mp

    cfg = method_config("mcf", TINY)
    meta = build_meta(cfg)
    rows = []
    for parallel in parallels:
        with tempfile.TemporaryDirectory() as tmp:
            outs = [str(Path(tmp) / f"rank{r}.json") for r in range(world)]
            for r in range(world):
                Path(outs[r]).unlink(missing_ok=True)
            mp.spawn(_spawned, args=(world, str(Path(tmp) / "init"), parallel, steps, outs), nprocs=world)
            for r in range(world):
                measured = json.loads(Path(outs[r]).read_text())
                rows.append({
                    "parallel": parallel, "rank": r, "measured": measured,
                    "predicted": predicted_bytes(meta, parallel, world, r),
                    "formula": formula_bytes(meta, parallel, world),
                })  # fmt: skip
    return rows


def _spawned(rank: int, world: int, init_file: str, parallel: str, steps: int, outs: list[str]) -> None:
    measure_worker(rank, world, init_file, parallel, steps, outs[rank])


def measure_table(rows: list[dict]) -> str:
    lines = ["| parallel | rank | params | grads | AdamW state | measured total | predicted (exact) | "
             "formula (`/ W`) |", "|---|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for row in rows:
        m, p = row["measured"], row["predicted"]
        lines.append(
            f"| {row['parallel'].upper()} | {row['rank']} | {m['params']:,} | {m['grads']:,} | "
            f"{m['optim']:,} | {sum(m.values()):,} | {sum(p.values()):,} | {row['formula']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[64, 256], help="images per GPU per micro-batch"
    )
    parser.add_argument(
        "--teacher-arch", default="vit_base_patch16_224", help="MCF's frozen teacher (paper: B/16)"
    )
    parser.add_argument(
        "--measure", action="store_true", help="also measure the tiny model on 2 gloo processes"
    )
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of --measure")
    args = parser.parse_args(argv)

    counts, memory = table(args.world_size, args.batch, args.teacher_arch)
    parts = [
        f"Parameters (exact, facerep's modules built on the meta device; MCF teacher: {args.teacher_arch}):",
        counts,
        f"Memory per GPU in GiB: world size {args.world_size}, bf16 autocast, AdamW, 224 px, 75 % masking "
        "(formulas: scripts/memory_table.py):",
        memory,
    ]
    if args.measure:
        rows = measure()
        parts += [
            "Measured on the CPU: tiny MCF (tests/conftest.py TINY), 2 gloo processes, fp32, bytes of local "
            "parameters + gradients + AdamW state at their peak (after optimizer.step):",
            measure_table(rows),
        ]
    text = "\n\n".join(parts) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
