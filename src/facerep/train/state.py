"""A run directory's checkpoint as one typed record, for both trainers.

Pre-training writes ``checkpoint.pt`` (:class:`PretrainState`), fine-tuning ``finetune.pt``
(:class:`FinetuneState`). On disk each is a plain dict of tensors and builtins (loaded with
``weights_only``), one key per field: the keys are the file format, read also by ``backbones.io`` (a
pre-training run's ``method`` and ``arch``) and by predict (a fine-tuning run's ``kind``, ``task``,
``outputs``), so a field is only ever added, never renamed. Resuming is :meth:`RunState.restore`: the
same config (``check_same_run``), then model, optimizer, scaler and this rank's RNG.

Under ``train.parallel=fsdp`` a pre-training run's checkpoint is :class:`ShardedPretrainState`: a
``torch.distributed.checkpoint`` (DCP) directory ``checkpoint/`` holding model and optimizer as each rank's
shards (read back on any number of ranks), and ``checkpoint/meta.pt``, the same record as ``checkpoint.pt``
with ``model`` and ``optimizer`` left empty.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from facerep.backbones.base import load_strict
from facerep.config import check_same_run, fresh_run
from facerep.runtime.checkpoint import CheckpointError, load_checkpoint, restore_rng, save_checkpoint
from facerep.runtime.distributed import barrier, is_distributed
from facerep.runtime.errors import one_line

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
        check_same_run(self.config, config, self.path(run_dir), free)
        self.load_weights(run_dir, model, optimizer, what)
        scaler.load_state_dict(self.scaler)
        restore_rng(self.rng[rank] if rank < len(self.rng) else self.rng[0])

    def load_weights(self, run_dir: str | Path, model: nn.Module, optimizer: Any, what: str) -> None:
        """The model (strictly) and optimizer part of :meth:`restore`."""
        path = self.path(run_dir)
        load_strict(model, self.model, str(path), what, f"; {fresh_run(path)}")
        optimizer.load_state_dict(self.optimizer)


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
class ShardedPretrainState(PretrainState):
    """A pre-training run under ``train.parallel=fsdp`` (module docstring): ``checkpoint/`` is a DCP directory
    (``.metadata`` and one ``__<rank>_0.distcp`` file per writing rank) of ``{"model", "optimizer"}`` as
    ``torch.distributed.checkpoint.state_dict.get_state_dict`` gives them (keyed by parameter names, so any
    world size, one process without FSDP included, reads them back), plus ``meta.pt``: this record, whose
    ``model`` and ``optimizer`` stay empty. Written into ``checkpoint.partial/`` and renamed into place."""

    FILE: ClassVar[str] = "checkpoint/meta.pt"
    DIR: ClassVar[str] = "checkpoint"

    @classmethod
    def directory(cls, run_dir: str | Path) -> Path:
        return Path(run_dir) / cls.DIR

    @classmethod
    def remove_interrupted(cls, run_dir: str | Path) -> None:
        """Undo what a killed write left (main process, before a run starts): a partial directory is
        deleted; a previous checkpoint moved aside but not yet replaced is put back."""
        final = cls.directory(run_dir)
        partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
        if partial.exists():
            shutil.rmtree(partial)
            print(f"[facerep] removed the partial checkpoint of a killed write: {partial}", flush=True)
        if old.exists():
            if final.exists():
                shutil.rmtree(old)
            else:
                old.rename(final)

    def save_sharded(self, run_dir: str | Path, model: nn.Module, optimizer: Any, is_main: bool) -> Path:
        """Write model and optimizer shards and this record (collective: every rank calls it with its own
        ``model`` and ``optimizer``; ``self`` is read on the main process only)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        final = self.directory(run_dir)
        partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
        if is_main:
            shutil.rmtree(partial, ignore_errors=True)
        barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        with _single_process_quiet():
            dcp.save(
                {"model": model_state, "optimizer": optim_state},
                checkpoint_id=str(partial),
                no_dist=not is_distributed(),
            )
        if is_main:
            meta = {**self.to_dict(), "model": {}, "optimizer": {}}
            save_checkpoint(meta, partial / Path(self.FILE).name)
            if final.exists():
                final.rename(old)
            partial.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load_weights(self, run_dir: str | Path, model: nn.Module, optimizer: Any, what: str) -> None:
        """:meth:`RunState.restore`'s model and optimizer from the DCP directory (collective): every rank
        reads the parts of the shards its own parameters hold, whatever the world size that wrote them."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        try:
            with _single_process_quiet():
                dcp.load(state, checkpoint_id=str(self.directory(run_dir)), no_dist=not is_distributed())
            set_state_dict(
                model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
            )
        except Exception as err:  # a missing key, a shape that does not fit: one line
            raise CheckpointError(
                f"{self.directory(run_dir)} does not fit {what} ({one_line(err, 300)}); "
                f"{fresh_run(self.path(run_dir))}"
            ) from None


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every save and load without a process group that it assumes one process: it does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled, unavailable or uninit")
        yield


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
