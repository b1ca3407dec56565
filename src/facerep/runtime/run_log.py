"""Run logging: ``metrics.jsonl``, TensorBoard events, and a progress bar or plain log lines."""

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
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A tqdm bar on a terminal (``mode=auto``/``bar``), else one plain line per logged step."""

    def __init__(
        self, total: int, initial: int, mode: str = "auto", enabled: bool = True, desc: str = ""
    ) -> None:
        if mode not in ("auto", "bar", "log"):
            raise FacerepError(f"train.progress must be auto, bar or log, got {mode!r}")
        self.total = total
        self.enabled = enabled
        self.start_time = time.monotonic()
        self.start_step = initial
        self.desc = desc
        use_bar = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if use_bar else None

    def update(self, step: int, summary: dict[str, float]) -> None:
        """Report progress at optimizer step ``step`` with a few headline values."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()}, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        done = step - self.start_step
        elapsed = time.monotonic() - self.start_time
        eta = timedelta(seconds=round(elapsed / done * (self.total - step))) if done else "?"
        values = " ".join(f"{k} {v:.4g}" for k, v in summary.items())
        print(f"{self.desc} step {step}/{self.total} {values} eta {eta}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
