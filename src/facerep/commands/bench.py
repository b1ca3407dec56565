"""Throughput benchmarks: ``facerep bench pretrain`` (the full training step) and ``facerep bench data``.

``bench pretrain`` times the trainer's own optimizer step (forward, backward, AdamW, momentum update)
on synthetic input already on the device, so what it measures is what ``facerep pretrain`` runs. Warm-up
steps are excluded, the device is synchronised around each timed repeat, and the median is reported
with peak memory, FLOP per image (torch's FLOP counter), achieved TFLOP/s and the fraction of a matrix-
product peak measured in the same run. It also checks that the fast path (compile, bf16) gives the same
losses as a plain fp32 eager copy on the same images and masks.
"""

from __future__ import annotations

import copy
import itertools
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from facerep.config import DataConfig, PretrainConfig
from facerep.data.loader import build_pretrain_loader
from facerep.data.views import random_masks
from facerep.runtime.atomic import atomic_write_json
from facerep.runtime.distributed import init_distributed
from facerep.runtime.fp8 import float8_layers, from_float8
from facerep.train.pretrain import Trainer


@dataclass
class BenchOptions:
    batch_sizes: list[int] = field(default_factory=list)  # empty: train.batch_size
    warmup: int = 3  # untimed steps (compilation, allocator warm-up)
    steps: int = 5  # steps per timed repeat
    repeats: int = 3  # the median repeat is reported
    output: str | None = None  # JSON path (default: <output_dir>/bench_pretrain.json)


@dataclass
class BenchPretrainConfig(PretrainConfig):
    """A pre-training config (same keys and files as ``facerep pretrain``) plus ``bench.*``."""

    bench: BenchOptions = field(default_factory=BenchOptions)


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (timing); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Achieved TFLOP/s of a large square matrix product (the practical peak to compare against)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync_device(device)
    reps = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync_device(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory: the CUDA allocator's on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process peak RSS)


def bench_config(cfg: BenchPretrainConfig, batch_size: int) -> PretrainConfig:
    """The pre-training config actually timed: a random teacher unless a file is given (timing only)."""
    teacher = cfg.teacher
    if teacher.checkpoint in (None, "mae_stage"):
        teacher = replace(teacher, checkpoint="random")
    train = replace(cfg.train, batch_size=batch_size, accum_steps=1, global_batch=0, max_steps=10**9)
    return replace(cfg, teacher=teacher, train=train, data=replace(cfg.data, source="synthetic"))


def loss_parity(trainer: Trainer, batch: dict[str, Any]) -> dict[str, float]:
    """Losses of the trainer's fast path vs a plain fp32 eager copy on the same batch (images and masks);
    with fp8 layers (``teacher.precision=fp8``), also vs the same network without them at the run's own
    precision (``run_precision``, ``fp8_rel_diff``: what fp8 alone changes)."""
    plain_net = from_float8(copy.deepcopy(trainer.method))
    with torch.no_grad():
        with trainer.loop.autocast():
            fast, _ = trainer.loop.model(batch)
            same_precision = plain_net(batch)[0].float().item() if float8_layers(trainer.method) else None
        plain, _ = plain_net.float()(batch)
    fast_v, plain_v = fast.float().item(), plain.float().item()

    def rel_diff(reference: float) -> float:
        return abs(fast_v - reference) / max(abs(reference), 1e-12)

    result = {"fast": fast_v, "plain_fp32": plain_v, "rel_diff": rel_diff(plain_v)}
    if same_precision is not None:
        result.update(run_precision=same_precision, fp8_rel_diff=rel_diff(same_precision))
    return result


def steps_to_fit(step_s: float, left_s: float, steps: int, repeats: int) -> tuple[int, int]:
    """Fewer timed steps (then repeats) when the time left would not hold them (half of it)."""
    while repeats > 1 and step_s * steps * repeats > 0.5 * left_s:
        repeats -= 1
    while steps > 2 and step_s * steps * repeats > 0.5 * left_s:
        steps -= 1
    return steps, repeats


def time_steps(
    step: Callable[[int], Any],
    device: torch.device,
    *,
    warmup: int,
    steps: int,
    repeats: int,
    time_left_s: float | None = None,
) -> dict[str, Any]:
    """Time ``step(i)`` (``i``: the step's index): ``warmup`` untimed steps (at least one; each timed alone,
    the first compiles on the fast path), then ``repeats`` runs of ``steps`` steps, fewer when
    ``time_left_s`` would not hold them (:func:`steps_to_fit`). Returns the median ms per step, the
    warm-up's and the timed steps' seconds and counts, and the last step's return value (``last``)."""
    start = time.perf_counter()
    warm = []
    for i in range(max(1, warmup)):
        tick = time.perf_counter()
        last = step(i)
        sync_device(device)
        warm.append(time.perf_counter() - tick)
    if time_left_s is not None:
        steps, repeats = steps_to_fit(warm[-1], time_left_s - (time.perf_counter() - start), steps, repeats)
    times = []
    tick = time.perf_counter()
    for r in range(repeats):
        sync_device(device)
        t0 = time.perf_counter()
        for j in range(steps):
            last = step(len(warm) + r * steps + j)
        sync_device(device)
        times.append((time.perf_counter() - t0) / steps)
    return {
        "ms_per_step": statistics.median(times) * 1000,
        "first_step_s": warm[0],
        "warmup_steps": len(warm),
        "warmup_s": sum(warm),
        "timed_steps": steps * repeats,
        "timed_s": time.perf_counter() - tick,
        "last": last,
    }


def bench_one(
    cfg: BenchPretrainConfig, batch_size: int, *, time_left_s: float | None = None, parity: bool = True
) -> dict[str, Any]:
    """Time the training step at one batch size, on one synthetic batch already on the device.

    The set-up, the first step (the compilation with ``train.compile``), the rest of the warm-up and the timed
    steps are reported apart; ``time_left_s``: fewer timed steps when they would not fit (a time-boxed run).
    """
    dist_info = init_distributed(cfg.device)
    device = dist_info.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = tick = time.perf_counter()
    trainer = Trainer(bench_config(cfg, batch_size), dist_info)
    size = cfg.data.image_size
    spec = trainer.method.batch_spec(cfg.data)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "views": [torch.randn(batch_size, 3, size, size, generator=generator).to(device) for _ in spec.views],
        "masks": [m.to(device) for m in random_masks(spec, batch_size, generator)],
    }
    batches = itertools.repeat(batch)
    sync_device(device)
    setup_s = time.perf_counter() - tick
    timing = time_steps(
        lambda _: trainer.train_step(batches), device, warmup=cfg.bench.warmup, steps=cfg.bench.steps,
        repeats=cfg.bench.repeats,
        time_left_s=None if time_left_s is None else time_left_s - (time.perf_counter() - start),
    )  # fmt: skip
    timing.pop("last")
    ms = timing["ms_per_step"]
    peak_memory = peak_memory_gib(device)
    with FlopCounterMode(display=False) as counter:
        with trainer.loop.autocast():
            loss, _ = trainer.loop.eager_model(batch)
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    flop_per_image = counter.get_total_flops() / batch_size
    images_per_s = batch_size / (ms / 1000)
    achieved = flop_per_image * images_per_s / 1e12
    peak = matmul_peak_tflops(device, trainer.loop.amp_dtype or torch.float32)
    return {
        "batch_size": batch_size,
        "images_per_s": images_per_s,
        "ms_per_step": ms,
        "peak_memory_gib": peak_memory,
        "gflop_per_image": flop_per_image / 1e9,
        "achieved_tflops": achieved,
        "matmul_peak_tflops": peak,
        "percent_of_peak": 100 * achieved / peak,
        "precision": str(trainer.loop.amp_dtype or torch.float32).replace("torch.", ""),
        "compiled": trainer.loop.model is not trainer.loop.eager_model,  # False: eager (or compile fell back)
        "fused_adamw": bool(trainer.optimizer.defaults.get("fused")),
        "fp8_layers": float8_layers(trainer.method),  # teacher.precision=fp8: the teacher's, where it ran
        "setup_s": setup_s,
        **timing,  # ms per step, first step, warm-up and timed steps
        **({"loss_parity": loss_parity(trainer, batch)} if parity else {}),
    }


def bench_pretrain(cfg: BenchPretrainConfig) -> dict[str, Any]:
    """Run ``facerep bench pretrain``: prints a table and writes JSON."""
    rows = [bench_one(cfg, b) for b in (cfg.bench.batch_sizes or [cfg.train.batch_size])]
    device = str(torch.cuda.get_device_name() if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    result = {
        "device": device,
        "method": cfg.method,
        "arch": cfg.model.arch,
        "image_size": cfg.data.image_size,
        "precision": cfg.train.precision,
        "compile": cfg.train.compile,
        "rows": rows,
    }
    columns = ("batch", "img/s", "ms/step", "peak GiB", "GFLOP/img", "TFLOP/s", "% peak")
    header = " ".join(f"{c:>10}" for c in columns)
    lines = [
        f"facerep bench pretrain: {cfg.method} {cfg.model.arch} @ {cfg.data.image_size} on {device}",
        header,
    ]
    for r in rows:
        lines.append(
            f"{r['batch_size']:>10} {r['images_per_s']:>10.1f} {r['ms_per_step']:>10.1f} "
            f"{r['peak_memory_gib']:>10.2f} {r['gflop_per_image']:>10.2f} {r['achieved_tflops']:>10.3f} "
            f"{r['percent_of_peak']:>9.1f}%"
        )
    lines += [f"loss parity (batch {r['batch_size']}): {r['loss_parity']}" for r in rows]
    print("\n".join(lines), flush=True)
    out = Path(cfg.bench.output) if cfg.bench.output else Path(cfg.output_dir) / "bench_pretrain.json"
    atomic_write_json(out, result)
    print(f"[facerep] wrote {out}", flush=True)
    return result


@dataclass
class BenchDataConfig:
    """``facerep bench data``: decode + augment throughput of one data source per worker count."""

    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 64
    seed: int = 0
    workers: list[int] = field(default_factory=lambda: [0, 1, 2])
    batches: int = 20  # timed batches per worker count
    warmup_batches: int = 2
    output: str | None = None  # JSON path (default: print only)


def bench_data(cfg: BenchDataConfig) -> dict[str, Any]:
    """Images/s of the pre-training loader for each ``workers`` count (total and per worker)."""
    rows = []
    for workers in cfg.workers:
        loader = build_pretrain_loader(replace(cfg.data, num_workers=workers), batch_size=cfg.batch_size,
                                       seed=cfg.seed)  # fmt: skip
        it = iter(loader)
        for _ in range(cfg.warmup_batches):
            next(it)
        start = time.perf_counter()
        for _ in range(cfg.batches):
            next(it)
        total = cfg.batches * cfg.batch_size / (time.perf_counter() - start)
        loader.close()
        rows.append({"num_workers": workers, "images_per_s": total, "per_worker": total / max(1, workers)})
    result = {"source": cfg.data.source, "image_size": cfg.data.image_size, "rows": rows}
    data = cfg.data
    print(f"facerep bench data: source={data.source} image_size={data.image_size} batch={cfg.batch_size}")
    print(f"{'workers':>8} {'img/s':>9} {'img/s/worker':>13}")
    for r in rows:
        print(f"{r['num_workers']:>8} {r['images_per_s']:>9.1f} {r['per_worker']:>13.1f}")
    if cfg.output:
        atomic_write_json(Path(cfg.output), result)
    return result
