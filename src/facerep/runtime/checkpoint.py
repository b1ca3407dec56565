"""Training checkpoints: everything needed to resume exactly (model, optimizer, scaler, step, RNG)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from facerep.runtime.atomic import atomic_torch_save, remove_stale_temporaries
from facerep.runtime.errors import FacerepError, one_line

CHECKPOINT_FORMAT = "facerep-checkpoint"


class CheckpointError(FacerepError):
    """A checkpoint file is missing, unreadable, of an unknown layout, or does not fit the model."""


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA when present, Python ``random``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``state`` (tagged with the facerep checkpoint format) to ``path``."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, "version": 1, **state}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only`` unpickling)."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({one_line(err)})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a facerep training checkpoint (no format={CHECKPOINT_FORMAT!r})")
    return state


def remove_interrupted_writes(run_dir: Path) -> None:
    """Delete the temporaries that writes killed mid-way left in ``run_dir`` (a half-written checkpoint is
    never read, but it holds disk), saying which; call it on the writing process before a run starts."""
    removed = remove_stale_temporaries(run_dir)
    if removed:
        names = ", ".join(p.name for p in removed)
        print(f"[facerep] removed {len(removed)} temporary file(s) of killed writes in {run_dir}: {names}")
