"""A run directory's checkpoint as one typed record, for both trainers.

Pre-training writes ``checkpoint.pt`` (:class:`PretrainState`), fine-tuning ``finetune.pt``
(:class:`FinetuneState`). On disk each is a plain dict of tensors and builtins (loaded with
``weights_only``), one key per field: the keys are the file format, read also by ``backbones.io`` (a
pre-training run's ``method`` and ``arch``) and by predict (a fine-tuning run's ``kind``, ``task``,
``outputs``), so a field is only ever added, never renamed. Resuming is :meth:`RunState.restore`: the
same config (``check_same_run``), then model, optimizer, scaler and this rank's RNG.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from facerep.backbones.base import load_strict
from facerep.config import check_same_run, fresh_run
from facerep.runtime.checkpoint import CheckpointError, load_checkpoint, restore_rng, save_checkpoint

S = TypeVar("S", bound="RunState")


@dataclass
class RunState:
    """What every run's checkpoint holds; subclasses add their progress fields."""

    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[dict[str, Any]]  # capture_rng() of each rank
    config: dict[str, Any] | None  # to_dict(cfg); None in files written before configs were saved

    FILE: ClassVar[str]
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"config"})  # keys older files may lack

    @classmethod
    def path(cls, run_dir: str | Path) -> Path:
        return Path(run_dir) / cls.FILE

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict: one key per field."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[S], state: Mapping[str, Any], path: Path) -> S:
        """Inverse of :meth:`to_dict`; a missing key is a one-line CheckpointError naming it."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in state and n not in cls.OPTIONAL]
        if missing:
            keys = ", ".join(missing)
            raise CheckpointError(f"{path}: not a {cls.FILE} of this facerep version (no {keys})")
        return cls(**{n: state.get(n) for n in names})

    def save(self, run_dir: str | Path) -> Path:
        """Write atomically to ``run_dir/FILE``."""
        return save_checkpoint(self.to_dict(), self.path(run_dir))

    @classmethod
    def load(cls: type[S], run_dir: str | Path) -> S | None:
        """The run's checkpoint, or None when it has none yet."""
        path = cls.path(run_dir)
        if not path.exists():
            return None
        return cls.from_dict(load_checkpoint(path), path)

    def restore(self, run_dir: str | Path, *, config: Any, free: Collection[str], model: nn.Module,
                optimizer: Any, scaler: Any, what: str, rank: int = 0) -> None:  # fmt: skip
        """Resume in place: refuse another recipe (``config`` against the saved one, ``free`` keys may
        differ), load ``model`` strictly (``what`` names it in the error), then optimizer, scaler and the
        RNG of ``rank`` (rank 0's when the run had fewer ranks)."""
        path = self.path(run_dir)
        check_same_run(self.config, config, path, free)
        load_strict(model, self.model, str(path), what, f"; {fresh_run(path)}")
        optimizer.load_state_dict(self.optimizer)
        scaler.load_state_dict(self.scaler)
        restore_rng(self.rng[rank] if rank < len(self.rng) else self.rng[0])


@dataclass
class PretrainState(RunState):
    """A pre-training run (``train.pretrain``)."""

    method: str
    arch: dict[str, Any]  # backbones.arch_record of the encoder
    step: int
    total_steps: int
    samples_per_rank: int  # where each rank's data stream resumes
    skipped: dict[str, Any]  # {"count": distinct unreadable inputs over all ranks, "names": the first few}

    FILE: ClassVar[str] = "checkpoint.pt"


@dataclass
class FinetuneState(RunState):
    """A fine-tuning run (``train.finetune``)."""

    task: str
    arch: dict[str, Any]
    outputs: dict[str, Any] | None  # Task.layout(...).to_record(); None in files written before layouts
    ema: dict[str, Tensor] | None
    epoch: int
    history: str  # the per-epoch records as JSON
    kind: str = "finetune"

    FILE: ClassVar[str] = "finetune.pt"
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"config", "outputs", "kind"})
