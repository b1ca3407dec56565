"""Fine-tuning and evaluation on downstream tasks under FaRL's protocol.

AdamW with separate learning rates for backbone and head, per-iteration warm-up + cosine, an EMA copy
of the weights used for evaluation, evaluation of every subset of the test split after each epoch,
and ``results.json`` reporting both the best and the last epoch (FaRL reports the best on the test
set; we say which is which). Checkpoints are written atomically after every epoch; rerunning with the
same ``output_dir`` resumes at the next epoch.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from facerep.config import EvaluateConfig, FinetuneConfig, to_dict
from facerep.engine.atomic import atomic_write_bytes
from facerep.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from facerep.engine.distributed import DistInfo, all_reduce_mean, barrier, init_distributed
from facerep.engine.run_log import MetricsLog, Progress, start_run
from facerep.engine.schedules import lr_at
from facerep.engine.trainer import NonFiniteLossError, autocast_dtype
from facerep.models.ema import ema_update_
from facerep.models.vit import MaskedViT, ViTArch, build_vit
from facerep.tasks import Task, TaskDataset, build_task, collate_samples

CHECKPOINT_NAME = "finetune.pt"


def build_backbone(cfg: FinetuneConfig) -> MaskedViT:
    """The encoder to fine-tune at ``data.image_size``: a file (position embedding resampled) or random."""
    size = cfg.data.image_size
    if cfg.backbone == "random":
        backbone = build_vit(cfg.backbone_arch, img_size=size)
    else:
        from facerep.checkpoints import load_backbone

        backbone = load_backbone(cfg.backbone, img_size=size)
    backbone.pos_embed.requires_grad_(True)  # fine-tuned, as in timm
    return backbone.train()


def build_datasets(cfg: FinetuneConfig) -> tuple[Any, Any]:
    from facerep.data.downstream import build_dataset

    data = cfg.data
    train = build_dataset(cfg.dataset, data.root, data.train_split, **{**data.options, **data.train_options})
    test = build_dataset(cfg.dataset, data.root, data.test_split, **{**data.options, **data.test_options})
    if train.task != cfg.task:
        raise ValueError(f"dataset={cfg.dataset} is a {train.task} dataset, but task={cfg.task}")
    return train, test


def param_groups(model: nn.Module, backbone: nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """Backbone and head parameters at their own learning rates; no weight decay on 1-D tensors and tokens."""
    backbone_ids = {id(p) for p in backbone.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        groups.setdefault((id(p) in backbone_ids, no_decay), []).append(p)
    train = cfg.train
    return [
        {
            "params": params,
            "base_lr": train.lr_backbone if is_backbone else train.lr_head,
            "weight_decay": 0.0 if no_decay else train.weight_decay,
        }
        for (is_backbone, no_decay), params in groups.items()
    ]


def summarize(history: list[dict], task: Task) -> dict:
    """Best and last evaluated epoch by the task's primary metric on the ``full`` subset."""
    key = task.primary
    sign = 1 if task.higher_is_better else -1
    best = max(history, key=lambda r: sign * r["test"]["full"][key])
    return {
        "primary_metric": key,
        "higher_is_better": task.higher_is_better,
        "best": {
            "epoch": best["epoch"],
            "note": "best epoch on the test split (as FaRL reports)",
            **best["test"],
        },
        "last": {"epoch": history[-1]["epoch"], "note": "last epoch", **history[-1]["test"]},
    }


class Finetuner:
    def __init__(self, cfg: FinetuneConfig, dist_info: DistInfo) -> None:
        self.cfg = cfg
        self.dist = dist_info
        self.device = dist_info.device
        self.output_dir = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.task = build_task(cfg)
        self.train_set, self.test_set = build_datasets(cfg)
        backbone = build_backbone(cfg)
        self.model = self.task.build_model(backbone, self.train_set).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.train.ema > 0 else None
        self.wrapped: nn.Module = self.model
        if dist_info.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.model, device_ids=device_ids)
        groups = param_groups(self.model, backbone, cfg)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr_head, betas=tuple(cfg.train.betas))
        self.amp_dtype = autocast_dtype(cfg.train.precision, self.device)

        train_data: torch.utils.data.Dataset = TaskDataset(self.train_set, self.task, train=True)
        test_data: torch.utils.data.Dataset = TaskDataset(self.test_set, self.task, train=False)
        if cfg.train.probe:  # linear probe: features of the frozen backbone computed once
            if cfg.task != "classification":
                raise ValueError("train.probe=true is for task=classification")
            train_data = cached_features(
                self.model, TaskDataset(self.train_set, self.task, train=False), cfg, self.device
            )
            test_data = cached_features(self.model, test_data, cfg, self.device)
        self.sampler = (
            DistributedSampler(train_data, dist_info.world_size, dist_info.rank, shuffle=True, seed=cfg.seed)
            if dist_info.world_size > 1
            else None
        )
        self.train_data = train_data
        self.test_loader = DataLoader(
            test_data,
            batch_size=cfg.train.batch_size,
            num_workers=cfg.data.num_workers,
            collate_fn=collate_samples,
        )
        per_rank = len(train_data) // dist_info.world_size
        self.steps_per_epoch = max(1, per_rank // cfg.train.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = int(cfg.train.warmup_epochs * self.steps_per_epoch)
        self.epoch = 0
        self.history: list[dict] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def _train_loader(self, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        return DataLoader(
            self.train_data,
            batch_size=self.cfg.train.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=self.cfg.data.num_workers,
            collate_fn=collate_samples,
            drop_last=True,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    def save(self) -> None:
        if not self.dist.is_main:
            return
        state = {
            "kind": "finetune",
            "task": self.cfg.task,
            "arch": self.model_arch(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": json.dumps(self.history),
            "rng": [capture_rng()],
            "config": to_dict(self.cfg),
        }
        save_checkpoint(state, self.checkpoint_path)

    def model_arch(self) -> dict:
        backbone = next(m for m in self.model.modules() if isinstance(m, MaskedViT))
        return asdict(backbone.arch)

    def resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        state = load_checkpoint(self.checkpoint_path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = json.loads(state["history"])
        restore_rng(state["rng"][0])
        return True

    def _step(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.total_steps, group["base_lr"], self.warmup_steps)
        for key, value in batch.items():
            if torch.is_tensor(value):
                batch[key] = value.to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            loss, terms = self.task.loss(self.wrapped, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {self.epoch + 1}, step {step + 1}; stopping"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            ema_update_(self.ema, self.model, self.cfg.train.ema, buffers=True)
        return loss.detach(), terms

    def evaluate(self) -> dict:
        model = self.ema if self.ema is not None else self.model
        model.eval()
        results = self.task.evaluate(model, self.test_loader, self.test_set, self.device)
        self.model.train()
        return results

    def fit(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        resumed = self.resume()
        if main:
            where = f"resuming after epoch {self.epoch}" if resumed else "starting"
            start_run(
                self.output_dir,
                cfg,
                f"finetune {cfg.task} on {cfg.dataset} ({len(self.train_set)} train / "
                f"{len(self.test_set)} test) from backbone={cfg.backbone}, {where}: {cfg.train.epochs} "
                f"epochs x {self.steps_per_epoch} steps on {self.device} x{self.dist.world_size}",
            )
        log = MetricsLog(self.output_dir, self.epoch) if main else None
        progress = Progress(cfg.train.epochs, self.epoch, cfg.train.progress, enabled=main, desc=cfg.task)
        self.model.train()
        try:
            while self.epoch < cfg.train.epochs:
                tick = time.perf_counter()
                losses: list[torch.Tensor] = []
                for i, batch in enumerate(self._train_loader(self.epoch)):
                    if i >= self.steps_per_epoch:
                        break
                    loss, _ = self._step(batch, self.epoch * self.steps_per_epoch + i)
                    losses.append(loss)
                self.epoch += 1
                record: dict[str, Any] = {
                    "step": self.epoch,
                    "epoch": self.epoch,
                    "loss": all_reduce_mean(torch.stack(losses).mean()).item(),
                    "images_per_s": len(losses)
                    * cfg.train.batch_size
                    * self.dist.world_size
                    / max(time.perf_counter() - tick, 1e-9),
                }
                if self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.train.epochs:
                    if main:
                        results = self.evaluate()
                        self.history.append({"epoch": self.epoch, "test": results})
                        record.update({f"test/{k}": v for k, v in results["full"].items()})
                    barrier()
                if log is not None:
                    log.write(record)
                summary = {"loss": record["loss"]}
                if f"test/{self.task.primary}" in record:
                    summary[self.task.primary] = record[f"test/{self.task.primary}"]
                progress.update(self.epoch, summary)
                self.save()
        finally:
            progress.close()
            if log is not None:
                log.close()
        results = summarize(self.history, self.task) if self.history else {}
        if main and results:
            atomic_write_bytes(self.output_dir / "results.json", json.dumps(results, indent=2).encode())
            print(format_results(results), flush=True)
        barrier()
        return results


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


@torch.no_grad()
def cached_features(
    model: nn.Module, data: TaskDataset, cfg: FinetuneConfig, device: torch.device
) -> list[dict]:
    """Run the frozen backbone once over ``data``: ``[{"features": [D], "label", "index"}, ...]``."""
    loader = DataLoader(data, batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers,
                        collate_fn=collate_samples)  # fmt: skip
    model.eval()
    cached = []
    for batch in loader:
        features = model.features(batch["image"].to(device)).float().cpu()
        for i in range(features.shape[0]):
            cached.append({"features": features[i], "label": batch["label"][i], "index": batch["index"][i]})
    model.train()
    return cached


def finetune(cfg: FinetuneConfig) -> dict:
    """Run ``facerep finetune``; returns the summary written to ``results.json``."""
    if cfg.train.epochs < 1:
        raise ValueError("train.epochs must be >= 1")
    return Finetuner(cfg, init_distributed(cfg.device)).fit()


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run ``facerep evaluate``: score a ``finetune.pt`` (EMA weights when present), print a table,
    write ``results.json`` and optional overlays."""
    from omegaconf import OmegaConf

    from facerep.data.downstream import build_dataset

    state = load_checkpoint(cfg.checkpoint)
    if state.get("kind") != "finetune":
        raise ValueError(f"{cfg.checkpoint}: not a facerep fine-tuning checkpoint (finetune.pt)")
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
    model = task.build_model(build_vit(ViTArch(**state["arch"])), test_set)
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    model.to(device).eval()
    loader = DataLoader(TaskDataset(test_set, task, train=False), batch_size=ft.train.batch_size,
                        num_workers=ft.data.num_workers, collate_fn=collate_samples)  # fmt: skip
    results = task.evaluate(model, loader, test_set, device)
    out = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(cfg.checkpoint), "dataset": ft.dataset, "epoch": state["epoch"], **results}
    atomic_write_bytes(out / "results.json", json.dumps(summary, indent=2).encode())
    print(format_table([(f"epoch {state['epoch']}", subset, metrics) for subset, metrics in results.items()]))
    if cfg.overlays > 0:
        save_overlays(task, model, test_set, cfg.overlays, out / "overlays", device)
    return summary


@torch.no_grad()
def save_overlays(
    task: Task, model: nn.Module, dataset: Any, count: int, out: Path, device: torch.device
) -> None:
    """PNG overlays of the first ``count`` test samples: landmarks drawn, or masks coloured with a legend."""
    from facerep.viz import draw_landmarks, draw_parsing

    out.mkdir(parents=True, exist_ok=True)
    data = TaskDataset(dataset, task, train=False)
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        batch = collate_samples([data[index]])
        batch["image"] = batch["image"].to(device)
        name = f"{index:05d}.png"
        if task.name == "alignment":
            pred = task.predict(model, batch)["landmarks"][0].numpy()
            draw_landmarks(sample["image"], pred, sample["landmarks"]).save(out / name)
        elif task.name == "parsing":
            mask = task.predict(model, batch)["masks"][0].numpy().astype(np.uint8)
            draw_parsing(sample["image"], mask, dataset.class_names).save(out / name)
        else:
            raise ValueError(f"overlays are not available for task={task.name}")
