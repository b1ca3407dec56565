"""``train.parallel=fsdp`` (FSDP2) on 2 gloo processes on the CPU, against DDP: the same losses and final
backbone, a sharded (DCP) checkpoint, and resuming it on 2 and on 1 process (and a 1-process checkpoint on
2) continuing as the uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.tensor import DTensor

from conftest import TINY
from facerep.config import ConfigError, PretrainConfig, load_config
from facerep.runtime.distributed import barrier, init_distributed
from facerep.train.pretrain import Trainer
from gloo import gloo_group

TEXT = ["text.width=64", "text.layers=1", "text.heads=1", "text.context_length=16", "text.embed_dim=32"]
# 8 images per optimizer step on any number of processes: 2 processes x 4, or 1 x 2 micro-batches of 4;
# the data pipeline draws the same 8 images (and masks) either way
COMMON = ["device=cpu", "train.max_steps=4", "train.ckpt_every=2", "train.global_batch=8"]
WORLD_INVARIANT = {"mae"}  # no batch statistics: 1 x 2 micro-batches computes what 2 x 1 does
METHOD = {
    "mae": ["method=mae", "train.batch_size=2"],  # 2 micro-batches per process: FSDP's no-sync path
    "mcf": ["method=mcf"],
    "farl": ["method=farl", *TEXT],
}


def _train(out: Path, overrides: list[str], copy_at_2: Path | None = None) -> None:
    """Pre-train ``overrides`` into ``out`` (every rank calls it); ``copy_at_2``: keep the step-2 checkpoint
    there, as a run interrupted after step 2 would have left it."""
    cfg = load_config(PretrainConfig, None, [*TINY, *COMMON, *overrides, f"output_dir={out}"])
    trainer = Trainer(cfg, init_distributed("cpu"))
    if trainer.fsdp and trainer.dist.world_size > 1:  # really sharded
        assert isinstance(trainer.method.encoder.blocks[0].attn.qkv.weight, DTensor)
    if copy_at_2 is not None:
        save = trainer.save

        def save_and_copy(rng_states=None):
            save(rng_states)
            if trainer.step != 2:
                return
            full = _full_state(trainer)  # collective
            if trainer.dist.is_main:
                shutil.copytree(trainer.checkpoint_path, copy_at_2)
                torch.save(full, copy_at_2.with_name(copy_at_2.name + "_full.pt"))
            barrier()

        trainer.save = save_and_copy
    trainer.fit()


def _full_state(trainer: Trainer) -> dict:
    """Whole model and optimizer state (FQN keys) on the main process (collective)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model, optimizer = get_state_dict(trainer.method, trainer.optimizer, options=options)
    return {"model": model, "optimizer": optimizer.get("state", {})}  # empty off the main process


def _resume_dir(out: Path, checkpoint: Path) -> Path:
    """A fresh run directory holding only the step-2 sharded checkpoint."""
    out.mkdir(parents=True)
    shutil.copytree(checkpoint, out / "checkpoint")
    return out


def _worker(rank: int, world: int, init_file: str, jobs: list[tuple]) -> None:
    with gloo_group(rank, world, init_file):
        for out, overrides, copy_at_2, resume_from in jobs:
            if resume_from is not None and rank == 0:
                _resume_dir(Path(out), Path(resume_from))
            barrier()
            _train(Path(out), overrides, Path(copy_at_2) if copy_at_2 else None)


def _spawn(tmp_path: Path, jobs: list[tuple]) -> None:
    jobs = [tuple(str(v) if isinstance(v, Path) else v for v in job) for job in jobs]
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), jobs), nprocs=2, join=True)


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def _close(a: dict[int, float], b: dict[int, float], steps: list[int]) -> None:
    assert sorted(a) == steps and all(s in b for s in steps), (a, b)
    for s in steps:
        assert a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-6), (s, a, b)


def _same_backbone(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = load_file(a / "backbone.safetensors"), load_file(b / "backbone.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD))
def test_fsdp_matches_ddp_and_resumes_on_2_and_1_processes(tmp_path, method):
    over = METHOD[method]
    fsdp = [*over, "train.parallel=fsdp"]
    ddp_dir, fsdp_dir, at2 = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "at2"
    _spawn(tmp_path, [
        (ddp_dir, over, None, None),
        (fsdp_dir, fsdp, at2, None),
        (tmp_path / "resume2", fsdp, None, at2),
    ])  # fmt: skip
    # the same run: losses and final (exported, full) backbone as DDP's
    reference = _losses(fsdp_dir)
    _close(_losses(ddp_dir), reference, [1, 2, 3, 4])
    _same_backbone(ddp_dir, fsdp_dir)
    # a DCP checkpoint: metadata, one shard file per rank, the small record
    ckpt = fsdp_dir / "checkpoint"
    assert (ckpt / ".metadata").is_file() and (ckpt / "meta.pt").is_file()
    assert len(list(ckpt.glob("*.distcp"))) == 2 and not (fsdp_dir / "checkpoint.pt").exists()
    assert torch.load(ckpt / "meta.pt", weights_only=True)["step"] == 4
    # resumed on 2 processes from step 2: steps 3 and 4 as the uninterrupted run, the same weights
    _close(_losses(tmp_path / "resume2"), reference, [3, 4])
    _same_backbone(tmp_path / "resume2", fsdp_dir, atol=1e-6)
    # resumed on 1 process: exactly the step-2 weights and optimizer state the 2 processes held
    resume1 = _resume_dir(tmp_path / "resume1", at2)
    _check_loaded(resume1, fsdp, tmp_path / "at2_full.pt")
    _train(resume1, fsdp)
    if method in WORLD_INVARIANT:  # 2 micro-batches of the same 8 images: the same steps again
        _close(_losses(resume1), reference, [3, 4])
        _same_backbone(resume1, fsdp_dir)
    else:  # BatchNorm and contrastive negatives see 4 images at a time instead of 8: it only goes on
        assert sorted(_losses(resume1)) == [3, 4] and (resume1 / "backbone.safetensors").is_file()


def _check_loaded(out: Path, overrides: list[str], full: Path) -> None:
    """Resuming ``out`` on this (single) process loads exactly the saved whole state."""
    cfg = load_config(PretrainConfig, None, [*TINY, *COMMON, *overrides, f"output_dir={out}"])
    trainer = Trainer(cfg, init_distributed("cpu"))
    assert trainer.resume() and trainer.step == 2
    loaded, saved = _full_state(trainer), torch.load(full, weights_only=False)
    assert loaded["model"].keys() == saved["model"].keys()
    for key, value in saved["model"].items():
        assert torch.equal(loaded["model"][key], value), key
    assert loaded["optimizer"].keys() == saved["optimizer"].keys()
    for key, moments in saved["optimizer"].items():
        for name, value in moments.items():
            assert torch.equal(loaded["optimizer"][key][name], value), (key, name)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two(tmp_path):
    """A 1-process fsdp run's checkpoint (unsharded, but DCP) continues on 2 processes."""
    fsdp = [*METHOD["mae"], "train.parallel=fsdp"]
    one, at2 = tmp_path / "one", tmp_path / "at2"
    _train(one, fsdp, copy_at_2=at2)
    _spawn(tmp_path, [(tmp_path / "resume2", fsdp, None, at2)])
    _close(_losses(tmp_path / "resume2"), _losses(one), [3, 4])
    _same_backbone(tmp_path / "resume2", one)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [(["method=byol"], "method=byol"), (["method=mae", "train.precision=fp16"], "fp16")],
)
def test_fsdp_refuses_what_it_does_not_support(tiny_config, overrides, needle):
    cfg = tiny_config(*overrides, "train.parallel=fsdp", "device=cpu")
    with pytest.raises(ConfigError, match=needle):
        Trainer(cfg, init_distributed("cpu"))


def test_parallel_is_ddp_or_fsdp(tiny_config):
    assert tiny_config().train.parallel == "ddp"
    with pytest.raises(ConfigError, match="train.parallel"):
        tiny_config("train.parallel=zero3")


def test_a_run_does_not_switch_between_ddp_and_fsdp(tiny_config, tmp_path):
    """A ddp run's checkpoint.pt is not silently restarted over by an fsdp run (nor the other way)."""
    Trainer(tiny_config("train.max_steps=1", "device=cpu"), init_distributed("cpu")).fit()
    fsdp = tiny_config("train.max_steps=1", "device=cpu", "train.parallel=fsdp")
    with pytest.raises(ConfigError, match="train.parallel=ddp"):
        Trainer(fsdp, init_distributed("cpu")).fit()
