"""The prepared GPU benchmark: the rows ``benchmarks/gpu.sh`` runs, one JSON and one markdown table.

Sub-commands (``python benchmarks/gpu_rows.py SUB --out DIR [--dry-run]``):

``list``     the planned rows, one ``NAME BUDGET_S`` a line (stdlib only: no torch import)
``run``      run every planned row that has no record yet under ``DIR/rows/``, in this process, each under
             its own time budget (``signal.alarm``) and before the whole run's ``--deadline``; a row that
             raises is recorded with its one-line error and the next row runs
``fail``     record ``--row NAME`` as failed with ``--error TEXT`` (the shell, after a killed ``run``)
``collect``  merge ``DIR/rows/*.json`` into ``DIR/gpu_bench.json`` and ``DIR/gpu_bench.md``

Rows: MCF ViT-B/16 pre-training steps at 224 px (``facerep bench pretrain``'s trainer, synthetic input on
the device) at batch 64/128/256, eager (bf16 autocast) and the fast path (``train.compile=true``; the
trainer's AdamW is fused on CUDA in both); the bf16-vs-fp32 loss parity of the fast path
(``facerep.commands.bench.loss_parity``); an eager row at the largest batch with the frozen teacher's
products in fp8 (``teacher.precision=fp8``) and its loss against the bf16 teacher's; a data-feed row
(real-size JPEGs written on the spot, decoded by ``torchvision.io.decode_jpeg`` in batches on the GPU and on
the CPU, and ``facerep bench data`` over the same folder); one FaRL-protocol alignment fine-tuning row at
448 px (``facerep finetune``'s ``Finetuner``).
``--dry-run``: the same rows on CPU with a tiny model and two timed steps (CI).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TOTAL_BUDGET_S = 480  # the whole script, wall time (gpu.sh stops starting rows before this)
RESTART = 75  # run's exit status after a row ran over its budget: gpu.sh runs the rest in a fresh process


@dataclass
class Row:
    name: str
    kind: str  # pretrain | data | finetune
    budget_s: float  # the row's own cap (its steps are chosen to fit)
    params: dict[str, Any] = field(default_factory=dict)
    emits: tuple[str, ...] = ()  # extra records this row writes (loss_parity, fp8_parity)


BATCHES = {False: (64, 128, 256), True: (2, 4, 8)}  # dry run -> (small, mid, large)


def _pretrain_row(dry_run: bool, compile_: bool, batch: int, budget: float, emits: tuple[str, ...] = (),
                  fp8: bool = False, mode: str = "default") -> Row:  # fmt: skip
    tag = {"default": "compile", "reduce-overhead": "cudagraph"}[mode] if compile_ else "eager"
    params = {"compile": compile_, "batch": batch, "parity": bool(emits), "fp8": fp8, "compile_mode": mode}
    name = f"mcf_{tag}{'_fp8' if fp8 else ''}_b{batch}"
    return Row(name, "pretrain", 60 if dry_run else budget, params, emits)


def default_rows(dry_run: bool) -> list[Row]:
    """The rows of a plain run, in the order they run: the cheap eager rows and the parity check first, the
    other compiled rows (the ones most likely to run over) last."""
    small, mid, large = BATCHES[dry_run]
    # seconds per row (caps; the steps are chosen to fit); on CPU (dry run) 60 s each, only a guard
    budgets = {"eager": 30, "compile_first": 115, "fp8": 25, "data": 25, "finetune": 45, "compile": 70}

    def pre(compile_: bool, batch: int, budget: float, **kwargs: Any) -> Row:
        return _pretrain_row(dry_run, compile_, batch, budget, **kwargs)

    return [
        pre(False, small, budgets["eager"]),
        pre(True, small, budgets["compile_first"], emits=("loss_parity",)),
        pre(False, mid, budgets["eager"]),
        pre(False, large, budgets["eager"]),
        # the frozen teacher's products in fp8 (teacher.precision=fp8), against the bf16 teacher
        pre(False, large, budgets["fp8"], emits=("fp8_parity",), fp8=True),
        Row("data_feed_jpeg", "data", budgets["data"] if not dry_run else 60),
        Row(
            "finetune_alignment_448" if not dry_run else "finetune_alignment_64",
            "finetune",
            budgets["finetune"] if not dry_run else 60,
        ),
        pre(True, large, budgets["compile"]),
        pre(True, mid, budgets["compile"]),
    ]


def extra_rows(dry_run: bool) -> list[Row]:
    """Rows run only when ``$GPU_ROWS`` names them (a second, shorter call once the plain run's table is
    back): CUDA graphs (``train.compile_mode=reduce-overhead``) at the smallest batch, where launch overhead
    weighs most, and the compiled step with the fp8 teacher at the largest (compile fuses fp8's scaling)."""
    small, _, large = BATCHES[dry_run]
    return [
        _pretrain_row(dry_run, True, small, 150, emits=("cudagraph_parity",), mode="reduce-overhead"),
        _pretrain_row(dry_run, True, large, 150, emits=("compiled_fp8_parity",), fp8=True),
    ]


def plan(dry_run: bool) -> list[Row]:
    """The rows this run runs, in order: :func:`default_rows`, or the rows ``$GPU_ROWS`` names
    (comma-separated, default or extra rows, in the order given)."""
    rows = default_rows(dry_run)
    chosen = [name.strip() for name in os.environ.get("GPU_ROWS", "").split(",") if name.strip()]
    if not chosen:
        return rows
    known = {row.name: row for row in (*rows, *extra_rows(dry_run))}
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"GPU_ROWS: no row named {', '.join(unknown)}; the rows: {', '.join(known)}")
    return [known[name] for name in chosen]


def expected_names(dry_run: bool) -> list[str]:
    return [n for r in plan(dry_run) for n in (r.name, *r.emits)]


# ------------------------------------------------------------------------------------------ helpers
class RowTimeout(BaseException):
    """Raised by the row's alarm; a BaseException, so that no ``except Exception`` on the way (the trainer's
    eager fallback after a failed compile, the compiler's own error wrapping) turns it into something else."""


def _alarm(signum: int, frame: Any) -> None:
    raise RowTimeout("over its time budget")


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (:func:`facerep.runtime.errors.one_line`, with the type)."""
    from facerep.runtime.errors import one_line as first_line

    return f"{type(err).__name__}: {first_line(err, 300)}"


def _write(path: Path, obj: Any) -> None:
    """:func:`facerep.runtime.atomic.atomic_write_json` (imported here: ``list`` stays free of torch)."""
    from facerep.runtime.atomic import atomic_write_json

    atomic_write_json(path, obj)


def _device(dry_run: bool) -> Any:
    import torch

    return torch.device("cpu" if dry_run else "cuda")


# ------------------------------------------------------------------------------------------ pretrain
def pretrain_config(
    dry_run: bool, compile_: bool, batch: int, out: Path, fp8: bool = False, mode: str = "default"
) -> Any:
    from facerep.commands.bench import BenchPretrainConfig
    from facerep.config import load_config

    common = [
        f"bench.batch_sizes=[{batch}]",
        f"train.compile={str(compile_).lower()}",
        f"train.compile_mode={mode}",
        "train.precision=bf16",
        f"teacher.precision={'fp8' if fp8 else 'auto'}",
        "data.num_workers=0",
        f"output_dir={out / 'pretrain'}",
    ]
    if dry_run:
        tiny = [
            "device=cpu",
            "model.depth=2",
            "data.image_size=32",
            "decoder.depth=1",
            "decoder.embed_dim=32",
            "decoder.num_heads=2",
            "mcf.proj_hidden_dim=64",
            "mcf.proj_dim=32",
            "teacher.blocks=[0,1]",
            "bench.warmup=1",
            "bench.steps=2",
            "bench.repeats=1",
        ]
        return load_config(BenchPretrainConfig, CONFIGS / "mcf_cpu_tiny.yaml", [*common, *tiny])
    return load_config(BenchPretrainConfig, CONFIGS / "mcf_vit_base_patch16.yaml", [*common, "device=cuda"])


def run_pretrain(row: Row, out: Path, dry_run: bool, deadline: float) -> dict[str, dict[str, Any]]:
    """``facerep bench pretrain``'s measurement of one row (:func:`facerep.commands.bench.bench_one`: its
    trainer, batch, FLOP count, matmul peak and parity; set-up, compilation, warm-up, timed steps apart)."""
    import torch

    from facerep.commands.bench import bench_one

    batch_size, compile_ = row.params["batch"], row.params["compile"]
    mode = row.params.get("compile_mode", "default")
    cfg = pretrain_config(dry_run, compile_, batch_size, out, fp8=bool(row.params.get("fp8")), mode=mode)
    if compile_:
        torch._dynamo.reset()  # each compiled row compiles for its own shapes, timed in its own first step
    compile_fn = torch.compile
    if dry_run and compile_:  # CPU: dynamo traces the same model, without inductor's C++ build (or its modes)
        torch.compile = lambda model, mode=None: compile_fn(model, backend="eager")  # type: ignore[assignment]
    try:
        measured = bench_one(
            cfg, batch_size, time_left_s=deadline - time.monotonic(), parity=bool(row.params.get("parity"))
        )
    finally:
        torch.compile = compile_fn  # type: ignore[assignment]
    parity = measured.pop("loss_parity", None)
    record = {
        "kind": "pretrain",
        "method": cfg.method,
        "arch": cfg.model.arch,
        "depth": cfg.model.depth,
        "image_size": cfg.data.image_size,
        "compile": compile_,
        "teacher_precision": cfg.teacher.precision,
        "compile_mode": mode if compile_ else None,
        "compile_backend": "eager (dry run)" if dry_run and compile_ else ("inductor" if compile_ else None),
        **measured,
    }
    if compile_ and not measured["compiled"]:  # the numbers stay; the row is not what it is named for
        record["error"] = "not compiled: torch.compile failed (see the log); the step ran eager"
    if row.params.get("fp8") and not measured["fp8_layers"]:
        record["error"] = "no fp8 layers: no fp8 products on this device (see the log); a bf16 teacher ran"
    records = {row.name: record}
    if parity is not None:
        records[row.emits[0]] = {
            "kind": "parity", "batch_size": batch_size, "of_row": row.name, "compiled": measured["compiled"],
            **parity,
        }  # fmt: skip
    return records


# ------------------------------------------------------------------------------------------ data feed
def _write_jpegs(folder: Path, count: int, size: int) -> int:
    """``count`` smooth, photo-like JPEGs (quality 90) of ``size`` px; returns the total bytes."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import encode_jpeg

    generator = torch.Generator().manual_seed(0)
    total = 0
    for i in range(count):
        low = torch.rand(1, 3, 8, 8, generator=generator)
        image = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0]
        image = image + 0.04 * torch.randn(3, size, size, generator=generator)
        data = encode_jpeg((image.clamp(0, 1) * 255).to(torch.uint8), quality=90)
        (folder / f"{i:05d}.jpg").write_bytes(data.numpy().tobytes())
        total += data.numel()
    return total


def _decode_rate(files: list[Any], device: Any, batch: int, passes: int, resize: int) -> float:
    """Images/s of ``decode_jpeg`` on ``device`` in batches, + resize to the model's input (after a pass)."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import decode_jpeg

    from facerep.commands.bench import sync_device

    def one_pass() -> None:
        for i in range(0, len(files), batch):
            images = decode_jpeg(files[i : i + batch], device=device)
            x = torch.stack(
                [
                    F.interpolate(im[None].float(), size=(resize, resize), mode="bilinear", antialias=True)[0]
                    for im in images
                ]
            )
            del x

    one_pass()
    sync_device(device)
    start = time.perf_counter()
    for _ in range(passes):
        one_pass()
    sync_device(device)
    return passes * len(files) / (time.perf_counter() - start)


def run_data(row: Row, out: Path, dry_run: bool, deadline: float) -> dict[str, dict[str, Any]]:
    import torch
    from torchvision.io import read_file

    from facerep.commands.bench import BenchDataConfig, bench_data
    from facerep.config import DataConfig

    count, size, batch, resize = (16, 64, 8, 32) if dry_run else (512, 512, 64, 224)
    device = _device(dry_run)
    cpu_workers = 0 if dry_run else min(16, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="gpu_bench_jpeg_") as tmp:
        tick = time.perf_counter()
        nbytes = _write_jpegs(Path(tmp), count, size)
        write_s = time.perf_counter() - tick
        files = [read_file(str(p)) for p in sorted(Path(tmp).glob("*.jpg"))]
        device_rate = _decode_rate(files, device, batch, 1 if dry_run else 3, resize)
        torch.set_num_threads(1)  # one CPU core decoding, for comparison (a loader worker)
        cpu_files = files if dry_run else files[:128]
        cpu_rate = _decode_rate(cpu_files, torch.device("cpu"), batch, 1, resize)
        loader_cfg = BenchDataConfig(
            data=DataConfig(source="folder", path=tmp, image_size=resize, num_workers=cpu_workers),
            batch_size=batch,
            workers=[cpu_workers],
            batches=2 if dry_run else 8,
            warmup_batches=1,
        )
        loader = bench_data(loader_cfg)["rows"][0]
    return {
        row.name: {
            "kind": "data",
            "jpeg_size": size,
            "jpeg_quality": 90,
            "jpeg_count": count,
            "jpeg_mean_kib": nbytes / count / 1024,
            "jpeg_write_s": write_s,
            "decode_device": str(device),
            "batch_size": batch,
            "resize_to": resize,
            "images_per_s": device_rate,
            "cpu_decode_images_per_s_one_core": cpu_rate,
            "loader_workers": cpu_workers,
            "loader_images_per_s": loader["images_per_s"],
        }
    }


# ------------------------------------------------------------------------------------------ fine-tuning
def finetune_config(dry_run: bool, out: Path) -> Any:
    from facerep.config import FinetuneConfig, load_config

    common = [
        "dataset=synthetic_alignment",
        "data.root=null",
        "data.num_workers=0",
        "train.epochs=1",
        "train.progress=log",
        "train.precision=bf16",
        f"output_dir={out / 'finetune'}",
    ]
    if dry_run:
        tiny = [
            "device=cpu",
            "backbone_arch=vit_tiny_patch16_224",
            "data.image_size=64",
            "data.options.size=64",
            "head.channels=16",
            "head.heatmap_size=16",
            "train.batch_size=2",
            "data.train_options.length=4",
            "data.test_options.length=2",
        ]
        return load_config(FinetuneConfig, CONFIGS / "finetune_300w.yaml", [*common, *tiny])
    gpu = [
        "device=cuda",
        "data.options.size=448",
        "data.train_options.length=10",
        "data.test_options.length=5",
    ]
    return load_config(FinetuneConfig, CONFIGS / "finetune_300w.yaml", [*common, *gpu])


def run_finetune(row: Row, out: Path, dry_run: bool, deadline: float) -> dict[str, dict[str, Any]]:
    """``facerep finetune``'s optimizer step (FaRL's alignment protocol: ViT-B/16 at 448, FPN + UPerNet,
    EMA) on one batch of synthetic faces already on the device."""
    import torch

    from facerep.commands.bench import peak_memory_gib, sync_device, time_steps
    from facerep.runtime.distributed import init_distributed
    from facerep.train.finetune import Finetuner
    from facerep.train.step import move_to

    cfg = finetune_config(dry_run, out)
    dist_info = init_distributed(cfg.device)
    device = dist_info.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    tick = time.perf_counter()
    tuner = Finetuner(cfg, dist_info)
    batch = move_to(next(iter(tuner._train_loader(0))), device)
    tuner.model.train()
    sync_device(device)
    setup_s = time.perf_counter() - tick
    steps, repeats = (2, 1) if dry_run else (10, 3)
    timing = time_steps(
        lambda i: tuner._step(batch, i),
        device,
        warmup=1 if dry_run else 3,
        steps=steps,
        repeats=repeats,
        time_left_s=deadline - time.monotonic(),
    )
    loss, _ = timing.pop("last")
    ms = timing.pop("ms_per_step")
    bsz = cfg.train.batch_size
    return {
        row.name: {
            "kind": "finetune",
            "task": cfg.task,
            "dataset": cfg.dataset,
            "arch": tuner.backbone.arch
            if isinstance(getattr(tuner.backbone, "arch", None), str)
            else (cfg.backbone_arch or "vit_base_patch16_224"),
            "image_size": cfg.data.image_size,
            "batch_size": bsz,
            "precision": str(tuner.loop.amp_dtype or torch.float32).replace("torch.", ""),
            "ema": cfg.train.ema,
            "images_per_s": bsz / (ms / 1000),
            "ms_per_step": ms,
            "peak_memory_gib": peak_memory_gib(device),
            "loss": float(loss.detach().float().item()),
            "setup_s": setup_s,
            **timing,  # first step, warm-up and timed steps
        }
    }


RUNNERS = {"pretrain": run_pretrain, "data": run_data, "finetune": run_finetune}


# ------------------------------------------------------------------------------------------ commands
def cmd_run(out: Path, dry_run: bool, deadline_epoch: float) -> int:
    import gc

    import torch

    rows_dir = out / "rows"
    signal.signal(signal.SIGALRM, _alarm)
    deadline = time.monotonic() + (deadline_epoch - time.time())
    for row in plan(dry_run):
        path = rows_dir / f"{row.name}.json"
        if path.exists():
            continue
        left = deadline - time.monotonic()
        if left < 10:
            for name in (row.name, *row.emits):
                _write(
                    rows_dir / f"{name}.json",
                    {"kind": row.kind, "error": "skipped: the time budget was spent"},
                )
            print(f"[gpu_bench] {row.name}: skipped (budget spent)", flush=True)
            continue
        budget = min(row.budget_s, left)
        (rows_dir / f"{row.name}.started").parent.mkdir(parents=True, exist_ok=True)
        (rows_dir / f"{row.name}.started").write_text(f"{time.time()}\n")
        print(f"[gpu_bench] {row.name}: start (budget {budget:.0f} s)", flush=True)
        tick = time.monotonic()
        if os.environ.get("GPU_BENCH_CRASH") == row.name:  # to check gpu.sh's recovery from a dead process
            os._exit(3)
        signal.alarm(max(1, int(budget)))
        try:
            records = RUNNERS[row.kind](row, out, dry_run, tick + budget)
        except (Exception, RowTimeout) as err:  # the row is recorded failed, the next one runs
            records = {name: {"kind": row.kind, "error": one_line(err)} for name in (row.name, *row.emits)}
            if isinstance(err, RowTimeout):
                records = {
                    n: {**r, "error": f"{r['error']} ({budget:.0f} s)", "timeout": True}
                    for n, r in records.items()
                }
        finally:
            signal.alarm(0)
        elapsed = time.monotonic() - tick
        for name, record in records.items():
            _write(rows_dir / f"{name}.json", {"elapsed_s": elapsed, **record})
        status = records[row.name].get("error") or f"{records[row.name].get('images_per_s', 0):.1f} img/s"
        print(f"[gpu_bench] {row.name}: {elapsed:.1f} s, {status}", flush=True)
        if isinstance(records[row.name].get("timeout"), bool):
            # an alarm may land in the middle of an import or of the compiler's state: the next rows run in
            # a fresh process (gpu.sh starts one on this exit status)
            return RESTART
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


def cmd_fail(out: Path, name: str, error: str, dry_run: bool) -> int:
    rows_dir = out / "rows"
    row = next((r for r in plan(dry_run) if r.name == name), None)
    started = rows_dir / f"{name}.started"
    elapsed = time.time() - float(started.read_text()) if started.exists() else None
    for n in (name, *(row.emits if row else ())):
        if not (rows_dir / f"{n}.json").exists():
            _write(
                rows_dir / f"{n}.json",
                {"kind": row.kind if row else "?", "elapsed_s": elapsed, "error": error},
            )
    return 0


def _device_info(dry_run: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"dry_run": dry_run, "python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() and not dry_run else "cpu"
    except Exception as err:
        info["device"] = f"unknown ({one_line(err)})"
    return info


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    cols = (
        "row",
        "status",
        "batch",
        "img/s",
        "ms/step",
        "peak GiB",
        "TFLOP/s",
        "% peak",
        "first step / compile s",
        "warm-up s",
        "row s",
        "notes",
    )
    dry = "dry run, " if result["dry_run"] else ""
    lines = [
        f"# GPU benchmark ({dry}{result['device']}, torch {result.get('torch')})",
        "",
        f"Total {result['total_elapsed_s']:.0f} s of a {result['budget_s']} s budget.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in result["rows"]:
        err = r.get("error")
        notes = []
        if err:
            notes.append(err.replace("|", "/"))
        elif r.get("kind") == "pretrain":
            notes.append(
                f"{r['method']} {r['arch']} @ {r['image_size']}, {r['precision']}, "
                f"{'compiled' if r['compiled'] else 'eager'}{', fused AdamW' if r['fused_adamw'] else ''}"
                f"{', fp8 teacher' if r.get('teacher_precision') == 'fp8' else ''}"
                f"{', CUDA graphs' if r.get('compile_mode') == 'reduce-overhead' else ''}"
            )
        elif r.get("kind") == "parity" and "fp8_rel_diff" in r:
            notes.append(f"fp8 teacher {r['fast']:.5f} vs bf16 teacher {r['run_precision']:.5f}: rel diff "
                         f"{r['fp8_rel_diff']:.2e} (vs fp32 {r['rel_diff']:.2e})")  # fmt: skip
        elif r.get("kind") == "parity":
            notes.append(f"fast {r['fast']:.5f} vs fp32 {r['plain_fp32']:.5f}: rel diff {r['rel_diff']:.2e}")
        elif r.get("kind") == "data":
            notes.append(
                f"{r['jpeg_count']} JPEGs {r['jpeg_size']} px q90 ({r['jpeg_mean_kib']:.0f} KiB) decoded "
                f"on {r['decode_device']} + resize {r['resize_to']}; CPU 1 core "
                f"{r['cpu_decode_images_per_s_one_core']:.1f} img/s; facerep loader "
                f"({r['loader_workers']} workers) {r['loader_images_per_s']:.1f} img/s"
            )
        elif r.get("kind") == "finetune":
            notes.append(f"{r['task']} {r['arch']} @ {r['image_size']}, {r['precision']}, EMA {r['ema']}")
        cells = [
            r["name"],
            "error" if err else "ok",
            _fmt(r.get("batch_size")),
            _fmt(r.get("images_per_s")),
            _fmt(r.get("ms_per_step")),
            _fmt(r.get("peak_memory_gib"), 2),
            _fmt(r.get("achieved_tflops")),
            _fmt(r.get("percent_of_peak")),
            _fmt(r.get("first_step_s")),
            _fmt(r.get("warmup_s")),
            _fmt(r.get("elapsed_s")),
            "; ".join(notes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cmd_collect(out: Path, dry_run: bool, total_s: float | None) -> int:
    rows = []
    for name in expected_names(dry_run):
        path = out / "rows" / f"{name}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            record = {"error": "no record: the row never ran (see the log)"}
        except json.JSONDecodeError as err:
            record = {"error": f"unreadable record: {one_line(err)}"}
        rows.append({"name": name, **record})
    result = {
        **_device_info(dry_run),
        "budget_s": TOTAL_BUDGET_S,
        "total_elapsed_s": total_s or 0.0,
        "rows": rows,
        "failed": [r["name"] for r in rows if r.get("error")],
    }
    _write(out / "gpu_bench.json", result)
    (out / "gpu_bench.md").write_text(markdown(result))
    print(markdown(result), flush=True)
    print(f"[gpu_bench] wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.md'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sub", choices=("budget", "list", "run", "fail", "collect"))
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_bench"))
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--deadline", type=float, default=None, help="epoch seconds: start no row after")
    parser.add_argument("--row", default="")
    parser.add_argument("--error", default="")
    parser.add_argument("--total-s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.sub == "budget":  # gpu.sh's whole-script budget: one number, kept here
        print(TOTAL_BUDGET_S)
        return 0
    if args.sub == "list":
        for row in plan(args.dry_run):
            print(row.name, int(row.budget_s))
        return 0
    if args.sub == "run":
        deadline = args.deadline if args.deadline is not None else time.time() + TOTAL_BUDGET_S - 30
        return cmd_run(args.out, args.dry_run, deadline)
    if args.sub == "fail":
        return cmd_fail(args.out, args.row, args.error, args.dry_run)
    return cmd_collect(args.out, args.dry_run, args.total_s)


if __name__ == "__main__":
    sys.exit(main())
