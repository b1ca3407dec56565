"""The pre-training loop: one trainer for every registered method, on CPU, one GPU or many (DDP).

What it guarantees:

* AdamW (no weight decay on norms, biases, tokens), ``lr = blr * effective batch / 256``,
  per-iteration linear warm-up then cosine, gradient accumulation, bf16 autocast on GPU;
* the method's ``on_optimizer_step`` hook (e.g. MCF's momentum update) runs once per optimizer step;
* atomic checkpoints every ``train.ckpt_every`` steps and at the end; rerunning with the same
  ``output_dir`` resumes, and on CPU the resumed run ends with exactly the uninterrupted run's weights;
* a non-finite loss stops the run before anything is written, so the last good checkpoint survives;
* rank 0 alone writes ``config.yaml``, ``metrics.jsonl``, TensorBoard events, ``checkpoint.pt`` and
  ``backbone.safetensors``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from facerep.config import ModelConfig, PretrainConfig, TrainConfig, to_dict
from facerep.data.loader import build_pretrain_loader, dataset_length
from facerep.engine.checkpoint import (
    CHECKPOINT_NAME,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from facerep.engine.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, is_distributed
from facerep.engine.run_log import MetricsLog, Progress, start_run
from facerep.engine.schedules import lr_at
from facerep.methods import PretrainMethod, build_method

MAX_SKIPPED_NAMES = 5


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stopped without writing a checkpoint."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.precision`` (``None``: full fp32)."""
    choices = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in choices:
        raise ValueError(f"train.precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    return choices[precision]


def resolve_accumulation(train: TrainConfig, world_size: int) -> TrainConfig:
    """Derive ``accum_steps`` from ``global_batch`` when it is set; check the batch settings."""
    if train.batch_size < 1 or train.accum_steps < 1:
        raise ValueError("train.batch_size and train.accum_steps must be >= 1")
    if train.global_batch <= 0:
        return train
    per_pass = train.batch_size * world_size
    if train.global_batch % per_pass:
        raise ValueError(
            f"train.global_batch={train.global_batch} is not a multiple of "
            f"train.batch_size x processes = {per_pass}"
        )
    return replace(train, accum_steps=train.global_batch // per_pass)


class Trainer:
    """Runs ``cfg.method`` for ``total_steps`` optimizer steps, resuming from ``output_dir`` if possible."""

    def __init__(self, cfg: PretrainConfig, dist_info: DistInfo) -> None:
        cfg = replace(cfg, train=resolve_accumulation(cfg.train, dist_info.world_size))
        self.cfg = cfg
        self.dist = dist_info
        self.device = dist_info.device
        self.output_dir = Path(cfg.output_dir)
        train = cfg.train
        self.images_per_step = train.batch_size * train.accum_steps * dist_info.world_size
        self.total_steps = self._total_steps()
        self.warmup_steps = self._warmup_steps()
        self.base_lr = train.lr if train.lr is not None else train.blr * self.images_per_step / 256

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.method: PretrainMethod = build_method(cfg).to(self.device)
        self.model: nn.Module = self.method
        if dist_info.world_size > 1:
            if self.device.type == "cuda":
                # projector BatchNorms see the global batch (MoCo v3); torch's SyncBatchNorm is GPU-only
                self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.method, device_ids=device_ids)
        self.eager_model = self.model
        self.compile_pending = train.compile
        if train.compile:
            self.model = torch.compile(self.model)
        # masks and other training randomness differ per rank
        torch.manual_seed(cfg.seed + dist_info.rank)
        random.seed(cfg.seed + dist_info.rank)

        self.optimizer = torch.optim.AdamW(
            self.method.param_groups(train.weight_decay),
            lr=self.base_lr,
            betas=tuple(train.betas),
            fused=self.device.type == "cuda",
        )
        self.amp_dtype = autocast_dtype(train.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.skipped_before = 0  # distinct unreadable inputs counted before a resume
        self.skipped_seen: set[str] = set()  # distinct unreadable inputs met by this rank since start
        self.skipped_names: list[str] = []  # the first few, for the report

    # ----------------------------------------------------------------------------------- set-up
    def _total_steps(self) -> int:
        train = self.cfg.train
        if train.max_steps > 0:
            return train.max_steps
        if train.epochs <= 0:
            raise ValueError("set train.max_steps or train.epochs (> 0)")
        length = dataset_length(self.cfg.data)
        if length is None:
            raise ValueError(f"data.source={self.cfg.data.source} has no known length: set train.max_steps")
        return max(1, math.ceil(train.epochs * length / self.images_per_step))

    def _warmup_steps(self) -> int:
        train = self.cfg.train
        if train.warmup_steps >= 0:
            return min(train.warmup_steps, self.total_steps - 1)
        if train.epochs > 0:
            per_epoch = self.total_steps / train.epochs
            return min(int(per_epoch), self.total_steps - 1)
        return int(0.05 * self.total_steps)

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def _gather_rng(self) -> list[dict]:
        state = capture_rng()
        if not is_distributed():
            return [state]
        states: list = [None] * self.dist.world_size
        dist.all_gather_object(states, state)
        return states

    def save(self, rng_states: list[dict] | None = None) -> None:
        """Write ``checkpoint.pt`` atomically (collective: every rank must call it)."""
        rng_states = rng_states or self._gather_rng()
        skipped_total = self._skipped_total()
        if not self.dist.is_main:
            return
        state = {
            "method": self.cfg.method,
            "arch": asdict(self.method.encoder.arch),
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "samples_per_rank": self.step * self.cfg.train.accum_steps * self.cfg.train.batch_size,
            "rng": rng_states,
            "skipped": {"count": skipped_total, "names": self.skipped_names},  # over all ranks
            "config": to_dict(self.cfg),
        }
        save_checkpoint(state, self.checkpoint_path)

    def resume(self) -> bool:
        """Load ``output_dir/checkpoint.pt`` when present; returns whether it did."""
        if not self.checkpoint_path.exists():
            return False
        state = load_checkpoint(self.checkpoint_path)
        if state.get("method") != self.cfg.method:
            raise ValueError(
                f"{self.checkpoint_path}: written by method={state.get('method')}, not {self.cfg.method}; "
                "use another output_dir"
            )
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.skipped_before = int(state["skipped"]["count"]) if self.dist.is_main else 0  # total on rank 0
        self.skipped_names = list(state["skipped"]["names"])
        rng = state["rng"]
        restore_rng(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])
        return True

    # ----------------------------------------------------------------------------------- loop
    def _note_skipped(self, names: list[str]) -> None:
        new = [n for n in dict.fromkeys(names) if n not in self.skipped_seen]
        self.skipped_seen.update(new)
        room = MAX_SKIPPED_NAMES - len(self.skipped_names)
        self.skipped_names += new[: max(0, room)]

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's forward; the first compiled call falls back to eager if compilation fails."""
        if not self.compile_pending:
            return self.model(images)
        self.compile_pending = False
        try:
            return self.model(images)
        except Exception as err:  # any compiler failure: run eager instead
            reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            print(f"[facerep] torch.compile failed ({reason}); running eager", flush=True)
            self.model = self.eager_model
            return self.model(images)

    def train_step(self, batches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step over ``accum_steps`` micro-batches; returns the mean loss and terms."""
        accum = self.cfg.train.accum_steps
        total = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = next(batches)
            self._note_skipped(batch["skipped"])
            images = batch["image"].to(self.device, non_blocking=True)
            last = micro == accum - 1
            ddp = self.eager_model if isinstance(self.eager_model, DistributedDataParallel) else None
            with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
                with torch.autocast(
                    self.device.type,
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):
                    loss, parts = self._forward(images)
                self.scaler.scale(loss / accum).backward()
            total += loss.detach() / accum
            for name, value in parts.items():
                terms[name] = terms.get(name, 0) + value.float() / accum
        if not torch.isfinite(total):
            raise NonFiniteLossError(
                f"loss is {total.item()} at step {self.step + 1}: stopping without writing a checkpoint "
                f"(the last good one, if any, is {self.checkpoint_path}); "
                "lower train.blr or set train.clip_grad"
            )
        if self.cfg.train.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.train.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, terms

    def fit(self) -> Path:
        """Train to ``total_steps``; returns the exported ``backbone.safetensors`` path."""
        cfg, train, main = self.cfg, self.cfg.train, self.dist.is_main
        resumed = self.resume()
        batches = iter(
            build_pretrain_loader(
                cfg.data,
                batch_size=train.batch_size,
                seed=cfg.seed,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
                start_sample=self.step * train.accum_steps * train.batch_size,
                pin_memory=self.device.type == "cuda",
            )
        )
        if main:
            where = f"resuming at step {self.step}" if resumed else "starting"
            start_run(
                self.output_dir,
                cfg,
                f"{cfg.method} {where}: {self.total_steps} steps x {self.images_per_step} images "
                f"(lr {self.base_lr:.3g}, warm-up {self.warmup_steps}) on {self.device} "
                f"x{self.dist.world_size}",
            )
        log = MetricsLog(self.output_dir, self.step) if main else None
        progress = Progress(self.total_steps, self.step, train.progress, enabled=main, desc=cfg.method)
        self.model.train()
        tick, tick_step = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps:
                rng_at_step_start = capture_rng()
                lr = lr_at(self.step, self.total_steps, self.base_lr, self.warmup_steps, train.min_lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                try:
                    loss, terms = self.train_step(batches)
                except KeyboardInterrupt:
                    if self.dist.world_size == 1:  # keep everything up to the last finished step
                        self.save([rng_at_step_start])
                        print(f"\n[facerep] interrupted; saved step {self.step} to {self.checkpoint_path}")
                    raise
                self.step += 1
                extra = self.method.on_optimizer_step(self.step, self.total_steps)
                if self.step % train.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - tick
                    record = {
                        "step": self.step,
                        "loss": all_reduce_mean(loss).item(),
                        **{k: all_reduce_mean(v).item() for k, v in terms.items()},
                        "lr": lr,
                        **extra,
                        "images_per_s": (self.step - tick_step) * self.images_per_step / max(elapsed, 1e-9),
                        "skipped": self._skipped_total(),
                    }
                    tick, tick_step = time.perf_counter(), self.step
                    if log is not None:
                        log.write(record)
                    progress.update(self.step, {"loss": record["loss"], "img/s": record["images_per_s"]})
                if self.step % train.ckpt_every == 0 or self.step == self.total_steps:
                    self.save()
        finally:
            progress.close()
            if log is not None:
                log.close()
        return self._finish()

    def _skipped_total(self) -> int:
        """Distinct unreadable inputs met so far, summed over ranks (collective)."""
        count = torch.tensor(float(self.skipped_before + len(self.skipped_seen)), device=self.device)
        return round(all_reduce_mean(count).item() * self.dist.world_size)

    def _finish(self) -> Path:
        from facerep.checkpoints import export_backbone

        path = self.output_dir / "backbone.safetensors"
        skipped = self._skipped_total()
        if self.dist.is_main:
            path = export_backbone(
                self.method.encoder, self.output_dir, extra={"method": self.cfg.method, "step": self.step}
            )
            if skipped:
                print(
                    f"[facerep] skipped {skipped} unreadable input(s), "
                    f"first: {', '.join(self.skipped_names)}",
                    flush=True,
                )
            print(f"[facerep] done: {path}", flush=True)
        barrier()
        return path


def resolve_teacher_stage(cfg: PretrainConfig, dist_info: DistInfo) -> PretrainConfig:
    """``teacher.checkpoint=mae_stage``: pre-train the teacher with MAE first, in ``output_dir/teacher_mae``.

    The stage resumes like any run, so rerunning the command skips a finished stage.
    """
    tcfg = cfg.teacher
    if cfg.method != "mcf" or tcfg.checkpoint != "mae_stage":
        return cfg
    if tcfg.stage_steps <= 0:
        raise ValueError("teacher.checkpoint=mae_stage needs teacher.stage_steps > 0")
    stage_dir = Path(cfg.output_dir) / "teacher_mae"
    stage = replace(
        cfg,
        method="mae",
        output_dir=str(stage_dir),
        model=replace(cfg.model, init=None) if not tcfg.arch else ModelConfig(arch=tcfg.arch),
        train=replace(cfg.train, max_steps=tcfg.stage_steps, epochs=0.0, warmup_steps=-1),
    )
    if dist_info.is_main:
        print(
            f"[facerep] stage 1/2: pre-training the MCF teacher with MAE ({tcfg.stage_steps} steps)",
            flush=True,
        )
    path = Trainer(stage, dist_info).fit()
    if dist_info.is_main:
        print("[facerep] stage 2/2: MCF with the stage-1 MAE teacher", flush=True)
    return replace(cfg, teacher=replace(tcfg, checkpoint=str(path)))


def pretrain(cfg: PretrainConfig) -> Path:
    """Run ``facerep pretrain``: returns the path of the exported backbone."""
    dist_info = init_distributed(cfg.device)
    cfg = resolve_teacher_stage(cfg, dist_info)
    return Trainer(cfg, dist_info).fit()
