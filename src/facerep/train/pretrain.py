"""The pre-training loop: one trainer for every registered method, on CPU, one GPU or many (DDP, or FSDP2
with ``train.parallel=fsdp``: :mod:`facerep.train.parallel`, docs/scaling-fsdp.md).

What it guarantees:

* AdamW or LARS (``train.optimizer``; the method's rule for which parameters get weight decay),
  ``lr = blr * effective batch / 256``,
  per-iteration linear warm-up then cosine, gradient accumulation, bf16 autocast on GPU (the shared
  :class:`~facerep.train.step.StepLoop`);
* batches carry what the method declared (views, masks), drawn by the data pipeline;
* BatchNorm over all processes when the method's reference synchronises it (``sync_batchnorm``), and a
  warning at start when accumulation gives its batch statistics the micro-batch only;
* the method's ``on_optimizer_step`` hook (e.g. MCF's momentum update) runs once per optimizer step;
* atomic checkpoints every ``train.ckpt_every`` steps and at the end; rerunning with the same
  ``output_dir`` resumes, and on CPU the resumed run ends with exactly the uninterrupted run's weights;
  a rerun under another config, or whose model does not fit the checkpoint, is a one-line error, and the
  temporaries of writes a killed run left are removed at start;
* a non-finite loss stops the run before anything is written, so the last good checkpoint survives;
* rank 0 alone writes ``config.yaml``, ``metrics.jsonl``, TensorBoard events (``train/<key>``),
  ``checkpoint.pt`` (``train.parallel=fsdp``: every rank writes its shards into the DCP directory
  ``checkpoint/``), ``backbone.safetensors`` (the full backbone, gathered under fsdp) and, at the end,
  ``plots/loss.png`` (the loss and each of its terms against the step; a plotting failure is one warning
  line, the run is complete).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from facerep.backbones import arch_record, export_backbone
from facerep.config import (
    ConfigError,
    PretrainConfig,
    TrainConfig,
    to_dict,
    to_yaml,
)
from facerep.data.loader import build_pretrain_loader, dataset_length
from facerep.methods import METHODS, PretrainMethod, build_method
from facerep.methods.base import with_recipe
from facerep.models.batchnorm import sync_batchnorm
from facerep.runtime.checkpoint import (
    capture_rng,
    remove_interrupted_writes,
)
from facerep.runtime.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    init_distributed,
    is_distributed,
    wrap_ddp,
)
from facerep.runtime.optim import build_optimizer
from facerep.runtime.plots import write_curves
from facerep.runtime.run_log import MetricsLog, Progress, start_run
from facerep.runtime.schedules import cosine_schedule
from facerep.train.parallel import check_fsdp, split_sharded, wrap_fsdp
from facerep.train.state import PretrainState, ShardedPretrainState
from facerep.train.step import NonFiniteLossError, StepLoop, move_to

MAX_SKIPPED_NAMES = 5
# config keys a resumed run may change: where it writes, what runs it, how it reports (check_same_run)
RESUME_FREE = frozenset({
    "output_dir", "device", "data.num_workers", "data.storage_options", "train.log_every", "train.ckpt_every",
    "train.progress", "train.compile", "train.compile_mode", "train.dist_timeout_s",
})  # fmt: skip


def resolve_accumulation(train: TrainConfig, world_size: int) -> TrainConfig:
    """Derive ``accum_steps`` from ``global_batch`` when it is set."""
    if train.global_batch <= 0:
        return train
    per_pass = train.batch_size * world_size
    if train.global_batch % per_pass:
        raise ConfigError(
            f"train.global_batch={train.global_batch} is not a multiple of "
            f"train.batch_size x processes = {per_pass}"
        )
    return replace(train, accum_steps=train.global_batch // per_pass)


class Trainer:
    """Runs ``cfg.method`` for ``total_steps`` optimizer steps, resuming from ``output_dir`` if possible."""

    def __init__(self, cfg: PretrainConfig, dist_info: DistInfo) -> None:
        cfg = with_recipe(cfg)
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

        self.fsdp = train.parallel == "fsdp"
        if self.fsdp:
            check_fsdp(cfg.method, train.precision)
        self.state_type = ShardedPretrainState if self.fsdp else PretrainState
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.method: PretrainMethod = build_method(cfg).to(self.device)
        if dist_info.world_size > 1 and self.method.sync_batchnorm:
            # as the method's reference trains (FRA, BYOL); MCF's does not
            self.method = sync_batchnorm(self.method, self.device)
        if self.fsdp and dist_info.world_size > 1:
            model = wrap_fsdp(self.method, dist_info, train.precision)
        else:
            model = wrap_ddp(self.method, dist_info)
        # other training randomness (e.g. dropout) differs per rank
        torch.manual_seed(cfg.seed + dist_info.rank)
        random.seed(cfg.seed + dist_info.rank)

        groups = self.method.param_groups(train.weight_decay)
        if self.fsdp and dist_info.world_size > 1:
            groups = split_sharded(groups)
        optimizer = build_optimizer(
            train.optimizer,
            groups,
            self.base_lr,
            betas=train.betas,
            momentum=train.momentum,
            fused=self.device.type == "cuda",
        )
        self.loop = StepLoop(
            model,
            optimizer,
            self.device,
            precision=train.precision,
            accum_steps=train.accum_steps,
            clip_grad=train.clip_grad,
            compile=train.compile,
            compile_mode=train.compile_mode,
        )
        self.optimizer = optimizer
        self.step = 0
        self.skipped_before = 0  # distinct unreadable inputs counted before a resume
        self.skipped_seen: set[str] = set()  # distinct unreadable inputs met by this rank since start
        self.skipped_names: list[str] = []  # the first few, for the report
        self.loss_terms: list[str] | None = None  # the loss terms logged (for plots/loss.png)

    # ----------------------------------------------------------------------------------- set-up
    def _total_steps(self) -> int:
        train = self.cfg.train
        if train.max_steps > 0:
            return train.max_steps
        if train.epochs <= 0:
            raise ConfigError("set train.max_steps or train.epochs (> 0)")
        length = dataset_length(self.cfg.data)
        if length is None:
            raise ConfigError(f"data.source={self.cfg.data.source} has no known length: set train.max_steps")
        return max(1, math.ceil(train.epochs * length / self.images_per_step))

    def _warmup_steps(self) -> int:
        train = self.cfg.train
        if train.warmup_steps >= 0:
            return min(train.warmup_steps, self.total_steps - 1)
        if train.epochs > 0:
            per_epoch = self.total_steps / train.epochs
            return min(int(per_epoch), self.total_steps - 1)
        return int(0.05 * self.total_steps)

    def accumulation_note(self) -> str | None:
        """Why accumulation changes this method's training (its batch statistics see the micro-batch
        only), or ``None`` when it does not accumulate or nothing in it depends on the batch."""
        train, what = self.cfg.train, self.method.batch_statistics
        if train.accum_steps == 1 or not what:
            return None
        per_pass = train.batch_size * self.dist.world_size
        where = "BatchNorm over all processes" if self.method.sync_batchnorm else "BatchNorm per process"
        return (
            f"method={self.cfg.method} reaches {self.images_per_step} images per optimizer step by "
            f"accumulating {train.accum_steps} micro-batches: {what} see {per_pass} images at a time "
            f"({train.batch_size} per process, {where}), not {self.images_per_step}"
        )

    @property
    def checkpoint_path(self) -> Path:
        if self.fsdp:
            return ShardedPretrainState.directory(self.output_dir)
        return PretrainState.path(self.output_dir)

    def _gather_rng(self) -> list[dict]:
        state = capture_rng()
        if not is_distributed():
            return [state]
        states: list = [None] * self.dist.world_size
        dist.all_gather_object(states, state)
        return states

    def save(self, rng_states: list[dict] | None = None) -> None:
        """Write ``checkpoint.pt`` (fsdp: ``checkpoint/``) atomically (collective: every rank calls it)."""
        rng_states = rng_states or self._gather_rng()
        skipped_total = self._skipped_total()
        if not self.dist.is_main and not self.fsdp:
            return
        sharded = self.fsdp  # model and optimizer go to the DCP directory, written by every rank
        if sharded and self.dist.world_size > 1:
            self._broadcast_buffers()
        state = self.state_type(
            model={} if sharded else self.method.state_dict(),
            optimizer={} if sharded else self.optimizer.state_dict(),
            scaler=self.loop.scaler.state_dict(),
            rng=rng_states,
            config=to_dict(self.cfg),
            method=self.cfg.method,
            arch=arch_record(self.method.encoder.arch),
            step=self.step,
            total_steps=self.total_steps,
            samples_per_rank=self.step * self.cfg.train.accum_steps * self.cfg.train.batch_size,
            skipped={"count": skipped_total, "names": self.skipped_names},  # over all ranks
        )
        if sharded:
            state.save_sharded(self.output_dir, self.method, self.optimizer, self.dist.is_main)
        else:
            state.save(self.output_dir)

    def resume(self) -> bool:
        """Load ``output_dir/checkpoint.pt`` (fsdp: ``checkpoint/``) when present; returns whether it did."""
        state = self.state_type.load(self.output_dir)
        if state is None:
            other, mode = (
                (PretrainState.path(self.output_dir), "ddp")
                if self.fsdp
                else (ShardedPretrainState.path(self.output_dir), "fsdp")
            )
            if other.exists():
                raise ConfigError(
                    f"{other}: written by a run with train.parallel={mode}, this one has "
                    f"train.parallel={self.cfg.train.parallel}; resume it with its own config, or "
                    "start fresh in another output_dir"
                )
            return False
        if state.method != self.cfg.method:
            raise ConfigError(
                f"{self.checkpoint_path}: written by method={state.method}, not {self.cfg.method}; "
                "use another output_dir"
            )
        what = f"this config's {self.cfg.method} model (the run directory holds another)"
        free = RESUME_FREE
        if self.cfg.train.global_batch > 0:  # accum_steps follows the number of processes
            free = free | {"train.accum_steps"}
        state.restore(
            self.output_dir, config=self.cfg, free=free, model=self.method, optimizer=self.optimizer,
            scaler=self.loop.scaler, what=what, rank=self.dist.rank,
        )  # fmt: skip
        self.step = int(state.step)
        self.skipped_before = int(state.skipped["count"]) if self.dist.is_main else 0  # total on rank 0
        self.skipped_names = list(state.skipped["names"])
        return True

    # ----------------------------------------------------------------------------------- loop
    def _note_skipped(self, names: list[str]) -> None:
        new = [n for n in dict.fromkeys(names) if n not in self.skipped_seen]
        self.skipped_seen.update(new)
        room = MAX_SKIPPED_NAMES - len(self.skipped_names)
        self.skipped_names += new[: max(0, room)]

    def _compute(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._note_skipped(batch.get("skipped", []))
        return model(move_to(batch, self.device))

    def train_step(self, batches) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """One optimizer step over ``accum_steps`` micro-batches, then the method's once-per-step hook
        (e.g. MCF's momentum update); returns the mean loss, its terms and the hook's values."""
        try:
            loss, terms = self.loop.step(batches, self._compute)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err} at step {self.step + 1}: stopping without writing a checkpoint "
                f"(the last good one, if any, is {self.checkpoint_path}); "
                "lower train.blr or set train.clip_grad"
            ) from None
        self.step += 1
        return loss, terms, self.method.on_optimizer_step(self.step, self.total_steps)

    def fit(self) -> Path:
        """Train to ``total_steps``; returns the exported ``backbone.safetensors`` path."""
        cfg, train, main = self.cfg, self.cfg.train, self.dist.is_main
        if main:
            remove_interrupted_writes(self.output_dir)
            if self.fsdp:
                ShardedPretrainState.remove_interrupted(self.output_dir)
        barrier()
        resumed = self.resume()
        batches = iter(
            build_pretrain_loader(
                cfg.data,
                spec=self.method.batch_spec(cfg.data),
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
                to_yaml(cfg),
                f"{cfg.method} {where}: {self.total_steps} steps x {self.images_per_step} images "
                f"(lr {self.base_lr:.3g}, warm-up {self.warmup_steps}) on {self.device} "
                f"x{self.dist.world_size}",
            )
            if note := self.accumulation_note():
                print(f"[facerep] warning: {note}", flush=True)
        log = MetricsLog(self.output_dir, self.step) if main else None
        progress = Progress(self.total_steps, self.step, train.progress, enabled=main, desc=cfg.method)
        self.method.train()
        tick, tick_step = time.perf_counter(), self.step
        try:
            while self.step < self.total_steps:
                rng_at_step_start = capture_rng()
                lr = cosine_schedule(
                    self.step, self.total_steps, self.base_lr, train.min_lr, self.warmup_steps
                )
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                try:
                    loss, terms, extra = self.train_step(batches)
                except KeyboardInterrupt:
                    if self.dist.world_size == 1:  # keep everything up to the last finished step
                        self.save([rng_at_step_start])
                        print(f"\n[facerep] interrupted; saved step {self.step} to {self.checkpoint_path}")
                    raise
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
                    self.loss_terms = list(terms)
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

    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank, as DDP keeps them and as a checkpoint holds
        them: FSDP leaves buffers per rank, and DCP would save any one rank's copy."""
        for buffer in self.method.buffers():
            if buffer.dtype != torch.bool:
                dist.broadcast(buffer, 0)

    def _full_method(self) -> PretrainMethod | None:
        """The method with whole weights on the main process (``None`` elsewhere), for the export. Under
        FSDP (collective) a CPU copy built from the gathered full state dict, else the method itself."""
        if not (self.fsdp and self.dist.world_size > 1):
            return self.method if self.dist.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.method, options=options)  # rank 0 only; empty elsewhere
        if not self.dist.is_main:
            return None
        copy = build_method(self.cfg)
        copy.load_state_dict(full)
        return copy.eval()

    def _finish(self) -> Path:
        path = self.output_dir / "backbone.safetensors"
        skipped = self._skipped_total()
        method = self._full_method()
        if method is not None:
            path = export_backbone(
                method.encoder, self.output_dir, extra={"method": self.cfg.method, "step": self.step}
            )
            extra = method.export(self.output_dir)
            if extra is not None:
                print(f"[facerep] wrote {extra}", flush=True)
            title = f"{self.cfg.method} ({self.output_dir.name})"
            write_curves(self.output_dir, self.loss_terms, title=title)
            if skipped:
                print(
                    f"[facerep] skipped {skipped} unreadable or uncaptioned input(s), "
                    f"first: {', '.join(self.skipped_names)}",
                    flush=True,
                )
            print(f"[facerep] done: {path}", flush=True)
        barrier()
        return path


def pretrain(cfg: PretrainConfig) -> Path:
    """Run ``facerep pretrain``: the method's stages first (e.g. MCF's MAE teacher), then the method.
    Returns the path of the exported backbone."""
    dist_info = init_distributed(cfg.device, cfg.train.dist_timeout_s)

    def run_stage(what: str, stage: PretrainConfig) -> Path:
        if dist_info.is_main:
            print(f"[facerep] stage before {cfg.method}: {what}", flush=True)
        return pretrain(stage)

    cfg = METHODS.get(cfg.method).resolve_stages(cfg, run_stage)
    return Trainer(cfg, dist_info).fit()
