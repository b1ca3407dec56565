"""The optimizer step every loop shares: pre-training, fine-tuning and ``facerep bench``.

One call of :meth:`StepLoop.step` runs ``accum_steps`` micro-batches under autocast (bf16 on GPU by
default; fp16 with a loss scaler), accumulates gradients (DDP and FSDP2 synchronise only on the last
one), stops on a non-finite loss before the optimizer moves, clips the gradient norm if asked, steps and
clears the gradients. ``torch.compile`` is tried on the first call and falls back to eager if compilation
fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from facerep.runtime.errors import FacerepError, one_line

# compute(model, batch) -> (loss, named terms): the only part that differs between loops
Compute = Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLossError(FacerepError):
    """The loss became NaN/inf; the run stopped before the optimizer step (and before any checkpoint)."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.precision`` (``None``: full fp32); ``auto`` is bf16 on GPU, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors (also inside lists) on ``device``; everything else as it is."""

    def move(value: Any) -> Any:
        if torch.is_tensor(value):
            return value.to(device, non_blocking=True)
        if isinstance(value, list) and value and all(torch.is_tensor(v) for v in value):
            return [v.to(device, non_blocking=True) for v in value]
        return value

    return {key: move(value) for key, value in batch.items()}


class StepLoop:
    """One optimizer step over micro-batches (see the module docstring).

    Args:
        model: the module to call, possibly wrapped in DDP; its parameters are clipped.
        optimizer: steps ``model``'s parameters.
        device: where the batches run.
        precision: ``train.precision`` (``auto``, ``bf16``, ``fp16``, ``fp32``).
        accum_steps: micro-batches per optimizer step.
        clip_grad: max gradient norm (0: off).
        compile: ``torch.compile`` the model (eager fallback on failure).
        compile_mode: ``torch.compile``'s ``mode`` (``default``; ``reduce-overhead``: CUDA graphs).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        precision: str = "auto",
        accum_steps: int = 1,
        clip_grad: float = 0.0,
        compile: bool = False,
        compile_mode: str = "default",
    ) -> None:
        self.eager_model = model
        mode = None if compile_mode == "default" else compile_mode
        self.model = torch.compile(model, mode=mode) if compile else model
        self.compile_pending = compile
        self.optimizer = optimizer
        self.device = device
        self.accum_steps = accum_steps
        self.clip_grad = clip_grad
        self.amp_dtype = autocast_dtype(precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this loop's precision."""
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=enabled)

    def forward(
        self, compute: Compute, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``compute(model, batch)`` under autocast; a first compiled call that fails falls back to eager."""
        with self.autocast():
            if not self.compile_pending:
                return compute(self.model, batch)
            self.compile_pending = False
            try:
                return compute(self.model, batch)
            except Exception as err:  # any compiler failure: run eager instead
                print(f"[facerep] torch.compile failed ({type(err).__name__}: {one_line(err, 200)}); "
                      "running eager", flush=True)  # fmt: skip
                self.model = self.eager_model
                return compute(self.model, batch)

    def step(
        self, batches: Iterator[dict[str, Any]], compute: Compute
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step over the next ``accum_steps`` batches; returns the mean loss and terms.

        Raises :class:`NonFiniteLossError` (gradients cleared, parameters untouched) on a NaN/inf loss.
        """
        accum = self.accum_steps
        ddp = self.eager_model if isinstance(self.eager_model, DistributedDataParallel) else None
        fsdp = self.eager_model if isinstance(self.eager_model, FSDPModule) else None
        total = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = next(batches)
            last = micro == accum - 1
            if fsdp is not None and accum > 1:  # FSDP2: reduce-scatter on the last micro-batch only
                fsdp.set_requires_gradient_sync(last)
            with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
                loss, parts = self.forward(compute, batch)
                self.scaler.scale(loss / accum).backward()
            total += loss.detach() / accum
            for name, value in parts.items():
                terms[name] = terms.get(name, 0) + value.float() / accum
        if not torch.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss is {total.item()}")
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.eager_model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, terms
