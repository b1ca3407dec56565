"""Scoring a fine-tuned checkpoint (``facerep evaluate``), result tables and prediction overlays (one PNG
each, or a few on one sheet: a fine-tuning run's ``plots/predictions.png``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from facerep.backbones import backbone_from_record
from facerep.backbones.base import load_strict
from facerep.config import ConfigError, EvaluateConfig, FinetuneConfig
from facerep.data.downstream import build_dataset
from facerep.runtime.atomic import atomic_save, atomic_write_json
from facerep.runtime.checkpoint import load_checkpoint
from facerep.runtime.distributed import init_distributed
from facerep.tasks import Task, TaskDataset, build_task, collate_samples
from facerep.train.state import FinetuneState


def format_results(results: dict) -> str:
    """The best and the last epoch of a fine-tuning summary as a table (see :func:`format_table`)."""
    rows = []
    for which in ("best", "last"):
        entry = results[which]
        rows += [
            (f"{which} (epoch {entry['epoch']})", subset, m)
            for subset, m in entry.items()
            if isinstance(m, dict)
        ]
    return format_table(rows)


def format_table(rows: list[tuple[str, str, dict]]) -> str:
    """A plain-text table: one row per (label, subset), columns = the headline metrics."""
    if not rows:
        return ""
    keys = [k for k in rows[0][2] if not k.startswith(("f1_", "acc_"))]
    header = ["epoch", "subset", *keys]
    lines = [header] + [[r[0], r[1], *(f"{r[2][k]:.4f}" for k in keys)] for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run ``facerep evaluate``: score a ``finetune.pt`` (EMA weights when present), print a table,
    write ``results.json`` and optional overlays."""
    state = load_checkpoint(cfg.checkpoint)
    if state.get("kind") != "finetune":
        raise ConfigError(f"{cfg.checkpoint}: not a facerep fine-tuning checkpoint ({FinetuneState.FILE})")
    ft = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FinetuneConfig), state["config"]))
    data = ft.data
    if cfg.dataset is not None:
        data = replace(data, root=cfg.data.root, options=dict(cfg.data.options) or data.options)
        ft = replace(ft, dataset=cfg.dataset)
    elif cfg.data.root is not None:
        data = replace(data, root=cfg.data.root)
    ft = replace(ft, data=replace(data, num_workers=cfg.data.num_workers))
    device = init_distributed(cfg.device).device
    task = build_task(ft)
    options = {**ft.data.options, **ft.data.test_options}
    test_set = build_dataset(ft.dataset, ft.data.root, cfg.split or ft.data.test_split, **options)
    model = task.build_model(backbone_from_record(state["arch"]), test_set)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    load_strict(model, weights, cfg.checkpoint, f"the {ft.task} model its config and arch record build")
    model.to(device)
    loader = DataLoader(TaskDataset(test_set, task, train=False), batch_size=ft.train.batch_size,
                        num_workers=ft.data.num_workers, collate_fn=collate_samples)  # fmt: skip
    results = task.evaluate(model, loader, test_set, device)
    out = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(cfg.checkpoint), "dataset": ft.dataset, "epoch": state["epoch"], **results}
    atomic_write_json(out / "results.json", summary)
    print(format_table([(f"epoch {state['epoch']}", subset, metrics) for subset, metrics in results.items()]))
    if cfg.overlays > 0:
        save_overlays(task, model, test_set, cfg.overlays, out / "overlays", device)
    return summary


@torch.no_grad()
def save_overlays(
    task: Task, model: nn.Module, dataset: Any, count: int, out: Path, device: torch.device
) -> None:
    """PNG overlays of the first ``count`` test samples, drawn by the task (:meth:`Task.draw`)."""
    out.mkdir(parents=True, exist_ok=True)
    for index, overlay in enumerate(_overlays(task, model, dataset, count, device)):
        overlay.save(out / f"{index:05d}.png")


def draws(task: Task) -> bool:
    """Whether the task draws its predictions (:meth:`Task.draw`; classification does not)."""
    return type(task).draw is not Task.draw


def _overlays(task: Task, model: nn.Module, dataset: Any, count: int, device: torch.device) -> Iterator[Any]:
    data = TaskDataset(dataset, task, train=False)
    for index in range(min(count, len(dataset))):
        batch = collate_samples([data[index]])
        batch["image"] = batch["image"].to(device)
        yield task.draw(dataset[index], task.predict(model, batch), dataset)


@torch.no_grad()
def save_predictions_sheet(
    task: Task,
    model: nn.Module,
    dataset: Any,
    count: int,
    path: Path,
    device: torch.device,
    columns: int = 4,
    min_cell: int = 160,
) -> Path | None:
    """The overlays of the first ``count`` samples of ``dataset`` side by side in one PNG (written atomically,
    ``columns`` per row; small images enlarged by a whole factor to about ``min_cell`` pixels, each cell the
    size of the largest overlay); ``None`` when there is none."""
    from PIL import Image

    images = [im.convert("RGB") for im in _overlays(task, model, dataset, count, device)]
    if not images:
        return None
    scale = max(1, min_cell // max(max(im.size) for im in images))
    if scale > 1:
        images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images]
    cell_w, cell_h = max(im.width for im in images), max(im.height for im in images)
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    pad = 4
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    for i, im in enumerate(images):
        row, col = divmod(i, columns)
        sheet.paste(im, (pad + col * (cell_w + pad), pad + row * (cell_h + pad)))
    return atomic_save(lambda tmp: sheet.save(tmp, format="PNG"), path)
