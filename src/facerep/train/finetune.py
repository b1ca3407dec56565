"""Fine-tuning on downstream tasks under FaRL's protocol.

AdamW with separate learning rates for backbone and head; FaRL's schedule (``train.schedule=step``:
constant, x ``gamma`` 0.1 at epoch 200, ``MultiStepLR`` as ``farl/experiments/*/optimizers/
refine_backbone.yaml``) or per-iteration warm-up + cosine; BatchNorms over every process under DDP
(FaRL's ``SyncBN``: statistics over 8 x 5 = 40 images; on CPU too); an EMA copy of the weights used
for evaluation, evaluation of every subset of the test split after each epoch, and ``results.json``
reporting both the best and the last epoch (FaRL reports the best on the test set; we say which is
which). Checkpoints are written atomically after every epoch; rerunning with the same ``output_dir``
resumes at the next epoch (the schedule is a function of the step, so it resumes exactly); a rerun under
another config, or whose model does not fit the checkpoint (the backbone file changed), is a one-line
error, and the temporaries of writes a killed run left are removed at start.
Progress is a bar over optimizer steps (``epochs x steps per epoch``; a resumed run starts at its step),
or plain lines with ``train.progress=log``. ``metrics.jsonl`` holds one record per epoch at its last
optimizer step (loss and terms averaged over the epoch, ``test/<metric>`` when it was evaluated);
TensorBoard has them under ``train/`` and ``test/``. At the end ``plots/`` holds ``loss.png``,
``metrics.png`` and, for the tasks that draw, ``predictions.png`` (a plotting failure is one warning line).
``data.sampler=balanced`` (single-label classification) draws every class equally often, with replacement
(:class:`~facerep.data.loader.BalancedSampler`, seeded per epoch, split across DDP ranks). The
optimizer step is the shared :class:`~facerep.train.step.StepLoop` (so fp16 gets a loss scaler here too).
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from facerep.backbones import arch_record, build_backbone, load_backbone
from facerep.backbones.base import load_strict
from facerep.config import (
    RANDOM_ARCH,
    ConfigError,
    FinetuneConfig,
    fresh_run,
    to_dict,
    to_yaml,
)
from facerep.data.downstream import build_dataset
from facerep.data.loader import BalancedSampler, class_labels
from facerep.models.batchnorm import sync_batchnorm
from facerep.models.ema import ema_update_
from facerep.runtime.atomic import atomic_write_json
from facerep.runtime.checkpoint import capture_rng, remove_interrupted_writes
from facerep.runtime.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, wrap_ddp
from facerep.runtime.optim import decayed, no_weight_decay_names
from facerep.runtime.plots import PLOTS, warn_on_failure, write_curves
from facerep.runtime.run_log import MetricsLog, Progress, start_run
from facerep.runtime.schedules import Schedule
from facerep.tasks import Task, TaskDataset, build_task, collate_samples
from facerep.train.evaluate import draws, format_results, save_predictions_sheet
from facerep.train.state import FinetuneState
from facerep.train.step import NonFiniteLossError, StepLoop, move_to

# config keys a resumed fine-tune may change (check_same_run): where it writes, what runs it, how it reports,
# and train.epochs: a finished run continues with more epochs (the unfinished ones only)
RESUME_FREE = frozenset({
    "output_dir", "device", "data.num_workers", "train.progress", "train.eval_every", "train.epochs",
    "train.dist_timeout_s",
})  # fmt: skip
PREDICTIONS = 8  # test samples drawn in plots/predictions.png


def finetune_backbone(cfg: FinetuneConfig) -> nn.Module:
    """The backbone to fine-tune at its input size (``data.backbone_size``, else ``data.image_size``): a
    file (a ViT's position embedding resampled; with ``backbone_arch`` set, a file holding another
    architecture is a one-line error) or ``random`` (``backbone_arch``, default :data:`RANDOM_ARCH`).
    Every weight is trainable (the sin-cos position embedding too, as in timm)."""
    size = cfg.data.backbone_input
    if cfg.backbone == "random":
        backbone = build_backbone(cfg.backbone_arch or RANDOM_ARCH, img_size=size)
    else:
        backbone = load_backbone(cfg.backbone, img_size=size, arch=cfg.backbone_arch)
    return backbone.requires_grad_(True).train()


def build_datasets(cfg: FinetuneConfig) -> tuple[Any, Any]:
    data = cfg.data
    train = build_dataset(cfg.dataset, data.root, data.train_split, **{**data.options, **data.train_options})
    test = build_dataset(cfg.dataset, data.root, data.test_split, **{**data.options, **data.test_options})
    if train.task != cfg.task:
        raise ConfigError(f"dataset={cfg.dataset} is a {train.task} dataset, but task={cfg.task}")
    return train, test


def param_groups(model: nn.Module, backbone: nn.Module, cfg: FinetuneConfig) -> list[dict]:
    """Backbone and head parameters at their own learning rates; no weight decay on 1-D tensors and tokens."""
    backbone_ids = {id(p) for p in backbone.parameters()}
    no_decay_names = no_weight_decay_names(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = not decayed(name, p, no_decay_names)
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


def lr_schedule(cfg: FinetuneConfig, steps_per_epoch: int) -> Schedule:
    """The learning-rate factor per step (x each group's ``base_lr``): ``train.warmup_epochs`` of linear
    warm-up, then FaRL's ``step`` (``MultiStepLR`` called epoch-wise: x ``gamma`` from each milestone
    epoch on) or ``cosine`` (per iteration, to 0)."""
    train = cfg.train
    return Schedule(
        1.0,
        warmup_steps=int(train.warmup_epochs * steps_per_epoch),
        kind=train.schedule,
        milestones=tuple(m * steps_per_epoch for m in train.milestones),
        gamma=train.gamma,
    )


def sync_batchnorm_wanted(setting: str, world_size: int) -> bool:
    """Whether ``train.sync_bn`` (``auto`` / ``true`` / ``false``) makes the BatchNorms span every process:
    under multi-process DDP unless ``false`` (torch's SyncBatchNorm on GPUs, facerep's
    :class:`~facerep.models.batchnorm.GlobalBatchNorm` on CPU / gloo)."""
    return setting != "false" and world_size > 1


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
        self.backbone = backbone = finetune_backbone(cfg)
        self.model = self.task.build_model(backbone, self.train_set).to(self.device)
        if sync_batchnorm_wanted(cfg.train.sync_bn, dist_info.world_size):
            self.model = sync_batchnorm(self.model, self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.train.ema > 0 else None
        wrapped = wrap_ddp(self.model, dist_info, static_graph=True)
        groups = param_groups(self.model, backbone, cfg)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr_head, betas=tuple(cfg.train.betas))
        self.loop = StepLoop(wrapped, self.optimizer, self.device, precision=cfg.train.precision)

        train_data: torch.utils.data.Dataset = TaskDataset(self.train_set, self.task, train=True)
        test_data: torch.utils.data.Dataset = TaskDataset(self.test_set, self.task, train=False)
        self.sampler: BalancedSampler | DistributedSampler | None = None
        if cfg.data.sampler == "balanced":  # (also the order of cached probe features)
            self.sampler = BalancedSampler(class_labels(self.train_set, cfg.dataset), seed=cfg.seed,
                                           rank=dist_info.rank, world_size=dist_info.world_size)  # fmt: skip
            if dist_info.is_main:
                names = self.train_set.class_names or ()
                counts = ", ".join(f"{c} {n}" for c, n in zip(names, self.sampler.class_counts, strict=False))
                print(f"[facerep] data.sampler=balanced: train classes {counts}; each class drawn equally "
                      "often (with replacement)", flush=True)  # fmt: skip
        elif dist_info.world_size > 1:
            self.sampler = DistributedSampler(
                train_data, dist_info.world_size, dist_info.rank, shuffle=True, seed=cfg.seed
            )
        if cfg.train.probe:  # linear probe: features of the frozen backbone computed once
            if not self.task.probe:
                raise ConfigError("train.probe=true is for task=classification")
            train_data = cached_features(
                self.model, TaskDataset(self.train_set, self.task, train=False), cfg, self.device
            )
            test_data = cached_features(self.model, test_data, cfg, self.device)
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
        self.schedule = lr_schedule(cfg, self.steps_per_epoch)
        self.epoch = 0
        self.history: list[dict] = []
        self.loss_terms: list[str] | None = None  # the loss terms logged (for plots/loss.png)

    @property
    def checkpoint_path(self) -> Path:
        return FinetuneState.path(self.output_dir)

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
        FinetuneState(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.loop.scaler.state_dict(),
            rng=[capture_rng()],
            config=to_dict(self.cfg),
            task=self.cfg.task,
            arch=arch_record(self.backbone.arch),
            # what the head's outputs mean, so predict/export need not read the dataset
            outputs=self.task.layout(self.train_set).to_record(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            epoch=self.epoch,
            history=json.dumps(self.history),
        ).save(self.output_dir)

    def resume(self) -> bool:
        state = FinetuneState.load(self.output_dir)
        if state is None:
            return False
        what = f"this config's {self.cfg.task} model (the run directory holds another)"
        state.restore(self.output_dir, config=self.cfg, free=RESUME_FREE, model=self.model,
                      optimizer=self.optimizer, scaler=self.loop.scaler, what=what)  # fmt: skip
        if self.ema is not None and state.ema is not None:
            path = self.checkpoint_path
            load_strict(self.ema, state.ema, str(path), what, f"; {fresh_run(path)}")
        self.epoch = int(state.epoch)
        self.history = json.loads(state.history)
        return True

    def _compute(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.task.loss(model, move_to(batch, self.device))

    def _step(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        factor = self.schedule.at(step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        try:
            loss, terms = self.loop.step(iter([batch]), self._compute)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{err} at epoch {self.epoch + 1}, step {step + 1}; stopping") from None
        if self.ema is not None:
            ema_update_(self.ema, self.model, self.cfg.train.ema, buffers=True)
        return loss, terms

    def evaluate(self) -> dict:
        model = self.ema if self.ema is not None else self.model
        model.eval()
        results = self.task.evaluate(model, self.test_loader, self.test_set, self.device)
        self.model.train()
        return results

    def fit(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        spe = self.steps_per_epoch
        if main:
            remove_interrupted_writes(self.output_dir)
        resumed = self.resume()
        if main:
            where = f"resuming after epoch {self.epoch}" if resumed else "starting"
            start_run(
                self.output_dir,
                to_yaml(cfg),
                f"finetune {cfg.task} on {cfg.dataset} ({len(self.train_set)} train / "
                f"{len(self.test_set)} test) from backbone={cfg.backbone}, {where}: {cfg.train.epochs} "
                f"epochs x {spe} steps = {self.total_steps} steps on {self.device} x{self.dist.world_size}",
            )
        start = self.epoch * spe
        log = MetricsLog(self.output_dir, start) if main else None
        # a bar over optimizer steps; plain lines about 10 times an epoch and after each epoch
        progress = Progress(self.total_steps, start, cfg.train.progress, enabled=main, desc=cfg.task,
                            every=max(1, spe // 10))  # fmt: skip
        self.model.train()
        try:
            while self.epoch < cfg.train.epochs:
                tick = time.perf_counter()
                losses: list[torch.Tensor] = []
                terms: dict[str, list[torch.Tensor]] = {}
                for i, batch in enumerate(self._train_loader(self.epoch)):
                    if i >= spe:
                        break
                    step = self.epoch * spe + i
                    loss, parts = self._step(batch, step)
                    losses.append(loss.detach())
                    for name, value in parts.items():
                        terms.setdefault(name, []).append(value.detach().float())
                    if i + 1 < spe:  # the epoch's last step is reported with its evaluation
                        due = progress.enabled and progress.due(step + 1)
                        progress.update(step + 1, {"loss": loss.item()} if due else None)
                self.epoch += 1
                factor = self.schedule.at(self.epoch * spe - 1, self.total_steps)  # at the epoch's last step
                record: dict[str, Any] = {
                    "step": self.epoch * spe,
                    "epoch": self.epoch,
                    "loss": all_reduce_mean(torch.stack(losses).mean()).item(),
                    **{k: all_reduce_mean(torch.stack(v).mean()).item() for k, v in terms.items()},
                    "lr_backbone": cfg.train.lr_backbone * factor,
                    "lr_head": cfg.train.lr_head * factor,
                    "images_per_s": len(losses)
                    * cfg.train.batch_size
                    * self.dist.world_size
                    / max(time.perf_counter() - tick, 1e-9),
                }
                self.loss_terms = list(terms)
                if self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.train.epochs:
                    if main:
                        results = self.evaluate()
                        self.history.append({"epoch": self.epoch, "test": results})
                        record.update({f"test/{k}": v for k, v in results["full"].items()})
                    barrier()
                if log is not None:
                    log.write(record)
                summary = {"epoch": self.epoch, "loss": record["loss"]}
                if f"test/{self.task.primary}" in record:
                    summary[self.task.primary] = record[f"test/{self.task.primary}"]
                progress.update(record["step"], summary, force=True)
                self.save()
        finally:
            progress.close()
            if log is not None:
                log.close()
        results = summarize(self.history, self.task) if self.history else {}
        if main and results:
            atomic_write_json(self.output_dir / "results.json", results)
            print(format_results(results), flush=True)
        if main:
            self.write_plots()
        barrier()
        return results

    def write_plots(self) -> None:
        """``plots/loss.png``, ``plots/metrics.png`` and, for a task that draws, ``plots/predictions.png``
        (the first test samples by the evaluated weights); a picture that fails is one warning line."""
        title = f"{self.cfg.task} on {self.cfg.dataset} ({self.output_dir.name})"
        write_curves(self.output_dir, self.loss_terms, title=title)
        if not draws(self.task) or self.cfg.train.probe:
            return
        model = self.ema if self.ema is not None else self.model
        model.eval()
        path = self.output_dir / PLOTS / "predictions.png"
        warn_on_failure(
            f"{PLOTS}/predictions.png",
            lambda: save_predictions_sheet(self.task, model, self.test_set, PREDICTIONS, path, self.device),
        )
        self.model.train()


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
    return Finetuner(cfg, init_distributed(cfg.device, cfg.train.dist_timeout_s)).fit()
