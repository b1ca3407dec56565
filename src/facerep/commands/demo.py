"""The embedded transfer benchmark: ``facerep demo``.

Pre-trains MAE and MCF with the same small budget on synthetic faces, fine-tunes each (and a randomly
initialised backbone) on synthetic alignment and parsing, and writes a comparison table and plot.
Everything is synthetic data: the numbers compare methods under one small budget, they are not
benchmark results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

from facerep.config import FinetuneConfig, PretrainConfig, load_config
from facerep.engine.finetune import finetune
from facerep.engine.trainer import pretrain
from facerep.runtime.atomic import atomic_write_bytes

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

# task -> (synthetic dataset, primary metric, head learning rate)
DEMO_TASKS = {
    "alignment": ("synthetic_alignment", "nme", 1e-2),
    "parsing": ("synthetic_parsing", "mean_f1", 1e-3),
}


@dataclass
class DemoConfig:
    """Budget of the benchmark; the defaults fit 2 CPU cores in about 20 minutes."""

    output_dir: str = "runs/demo"
    seed: int = 0
    arch: str = "vit_tiny_patch16_224"
    image_size: int = 96
    teacher_steps: int = 150  # MCF's stage-1 MAE teacher
    mcf_steps: int = 150  # MCF itself; MAE gets teacher_steps + mcf_steps (the same images seen in total)
    batch_size: int = 32
    finetune_epochs: int = 5
    finetune_batch_size: int = 16
    train_length: int = 600
    test_length: int = 200
    head_channels: int = 64
    pretrain_overrides: list[str] = field(default_factory=list)  # extra KEY=VALUE for both pre-trainings
    finetune_overrides: list[str] = field(default_factory=list)  # extra KEY=VALUE for every fine-tuning


def _pretrain(cfg: DemoConfig, method: str, out: Path) -> Path:
    steps = cfg.mcf_steps if method == "mcf" else cfg.teacher_steps + cfg.mcf_steps
    overrides = [
        f"method={method}", f"output_dir={out}", f"seed={cfg.seed}", f"model.arch={cfg.arch}",
        f"data.image_size={cfg.image_size}", f"train.batch_size={cfg.batch_size}", f"train.max_steps={steps}",
        f"teacher.stage_steps={cfg.teacher_steps}", *cfg.pretrain_overrides,
    ]  # fmt: skip
    return pretrain(load_config(PretrainConfig, None, overrides))


def _finetune(cfg: DemoConfig, task: str, backbone: str, out: Path) -> dict:
    dataset, _, lr_head = DEMO_TASKS[task]
    overrides = [
        f"task={task}", f"dataset={dataset}", f"backbone={backbone}", f"backbone_arch={cfg.arch}",
        f"output_dir={out}", f"seed={cfg.seed}", f"data.image_size={cfg.image_size}",
        f"data.options.size={cfg.image_size}", f"data.train_options.length={cfg.train_length}",
        f"data.test_options.length={cfg.test_length}", f"head.channels={cfg.head_channels}",
        f"train.epochs={cfg.finetune_epochs}", f"train.batch_size={cfg.finetune_batch_size}",
        f"train.lr_head={lr_head}", "train.lr_backbone=2e-4", "train.ema=0.9", *cfg.finetune_overrides,
    ]  # fmt: skip
    return finetune(load_config(FinetuneConfig, None, overrides))


def comparison_table(rows: dict[str, dict[str, dict]]) -> str:
    """Markdown table: one row per backbone, best and last epoch of each task's primary metric."""
    header = "| backbone | alignment NME (best / last) | parsing mean F1 (best / last) |\n|---|---|---|\n"
    lines = []
    for name, results in rows.items():
        cells = []
        for task, (_, key, _) in DEMO_TASKS.items():
            r = results[task]
            scale, unit = (100, " %") if key == "nme" else (100, "")
            cells.append(
                f"{r['best']['full'][key] * scale:.2f}{unit} / {r['last']['full'][key] * scale:.2f}{unit}"
            )
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return header + "\n".join(lines) + "\n"


def comparison_plot(rows: dict[str, dict[str, dict]], path: Path) -> None:
    """Two bar charts (NME, lower is better; mean F1, higher is better), best and last epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(rows)
    for ax, (task, (_, key, _)) in zip(axes, DEMO_TASKS.items(), strict=True):
        best = [rows[n][task]["best"]["full"][key] * 100 for n in names]
        last = [rows[n][task]["last"]["full"][key] * 100 for n in names]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], best, width=0.4, label="best epoch")
        ax.bar([x + 0.2 for x in xs], last, width=0.4, label="last epoch")
        ax.set_xticks(list(xs), names)
        goal = "NME % (lower is better)" if key == "nme" else "mean F1 % (higher is better)"
        ax.set_title(f"synthetic {task}: {goal}")
        ax.legend(fontsize=8)
    fig.suptitle("facerep demo: synthetic-data transfer (not a benchmark result)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(cfg: DemoConfig) -> dict:
    """Run the whole benchmark; returns ``{backbone: {task: results}}`` and writes ``comparison.*``."""
    out = Path(cfg.output_dir)
    backbones = {
        "random": "random",
        "mae": str(_pretrain(cfg, "mae", out / "pretrain_mae")),
        "mcf": str(_pretrain(cfg, "mcf", out / "pretrain_mcf")),
    }
    rows = {
        name: {task: _finetune(cfg, task, path, out / f"finetune_{task}_{name}") for task in DEMO_TASKS}
        for name, path in backbones.items()
    }
    table = comparison_table(rows)
    atomic_write_bytes(out / "comparison.md", table.encode())
    atomic_write_bytes(out / "comparison.json", json.dumps(rows, indent=2).encode())
    comparison_plot(rows, out / "comparison.png")
    print("\n[facerep] synthetic-data transfer benchmark (not a benchmark result):\n" + table, flush=True)
    print(f"[facerep] wrote {out / 'comparison.md'} and {out / 'comparison.png'}", flush=True)
    return rows
