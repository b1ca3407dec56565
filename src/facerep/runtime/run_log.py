"""Run logging: ``metrics.jsonl``, TensorBoard events, and a progress bar or plain log lines.

TensorBoard tags: a record's training scalars under ``train/<key>``, its evaluation metrics (keys written
``test/<metric>``) under ``test/<metric>``; ``step`` is the x axis and ``epoch`` is not a scalar of its own.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from facerep.runtime.atomic import atomic_write_bytes
from facerep.runtime.errors import FacerepError


def start_run(output_dir: Path, config_yaml: str, banner: str) -> None:
    """Create ``output_dir``, write the resolved config as ``config.yaml``, print a one-line ``banner``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output_dir / "config.yaml", config_yaml.encode())
    print(f"[facerep] {banner} -> {output_dir}", flush=True)


NOT_SCALARS = frozenset({"step", "epoch"})  # a record's position, not a value to plot


def tensorboard_tag(key: str) -> str:
    """``test/<metric>`` as it is, every other key of a record under ``train/``."""
    return key if key.startswith("test/") else f"train/{key}"


class MetricsLog:
    """Append one JSON object per logged step to ``metrics.jsonl`` and mirror scalars to TensorBoard.

    On resume, records beyond ``start_step`` (logged after the last checkpoint of a crashed run) are
    dropped so the file reads as one uninterrupted run.
    """

    def __init__(self, output_dir: Path, start_step: int = 0, tensorboard: bool = True) -> None:
        self.path = output_dir / "metrics.jsonl"
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= start_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in NOT_SCALARS and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(tensorboard_tag(key), value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A tqdm bar over optimizer steps on a terminal (``mode=auto``/``bar``), else plain lines.

    ``total`` and ``initial`` are optimizer steps (a resumed run starts at its resumed step, so the rate
    and the ETA count only this process's steps). Plain lines (``mode=log``, or ``auto`` off a terminal) are
    printed at steps that are multiples of ``every``, at the last step, and when an update is forced.
    """

    def __init__(
        self,
        total: int,
        initial: int,
        mode: str = "auto",
        enabled: bool = True,
        desc: str = "",
        every: int = 1,
    ) -> None:
        if mode not in ("auto", "bar", "log"):
            raise FacerepError(f"train.progress must be auto, bar or log, got {mode!r}")
        self.total = total
        self.enabled = enabled
        self.start_time = time.monotonic()
        self.start_step = initial
        self.desc = desc
        self.every = max(1, every)
        use_bar = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if use_bar else None

    def due(self, step: int) -> bool:
        """Whether :meth:`update` at ``step`` shows values (a plain line, or the bar's postfix)."""
        return step % self.every == 0 or step >= self.total

    def update(self, step: int, summary: dict[str, float] | None = None, force: bool = False) -> None:
        """Report progress at optimizer step ``step`` with a few headline values (``None``: advance the bar
        only; a plain line is printed when the step is :meth:`due` or ``force``)."""
        if not self.enabled:
            return
        if self.bar is not None:
            if summary:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()}, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        if summary is None or not (force or self.due(step)):
            return
        done = step - self.start_step
        elapsed = time.monotonic() - self.start_time
        eta = timedelta(seconds=round(elapsed / done * (self.total - step))) if done else "?"
        values = " ".join(f"{k} {v:.4g}" for k, v in summary.items())
        print(f"{self.desc} step {step}/{self.total} {values} eta {eta}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
