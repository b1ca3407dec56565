"""The checkpoint record (train/state.py): the on-disk keys are the file format, resume restores in place."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from facerep.config import ConfigError, PretrainConfig, load_config, to_dict
from facerep.runtime.checkpoint import CheckpointError, capture_rng, load_checkpoint, save_checkpoint
from facerep.train.state import FinetuneState, PretrainState


def _pretrain_state(model: nn.Module, opt: torch.optim.Optimizer, cfg: PretrainConfig) -> PretrainState:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return PretrainState(
        model=model.state_dict(), optimizer=opt.state_dict(), scaler=scaler.state_dict(), rng=[capture_rng()],
        config=to_dict(cfg), method="mae", arch={"family": "vit"}, step=7, total_steps=10,
        samples_per_rank=56, skipped={"count": 1, "names": ["a.jpg"]},
    )  # fmt: skip


def test_the_files_keys_are_todays_format_and_read_back_equal(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = load_config(PretrainConfig, None, ["method=mae"])
    path = _pretrain_state(model, opt, cfg).save(tmp_path)
    assert path == tmp_path / "checkpoint.pt"
    raw = load_checkpoint(path)
    assert set(raw) == {
        "format", "version", "method", "arch", "model", "optimizer", "scaler", "step", "total_steps",
        "samples_per_rank", "rng", "skipped", "config",
    }  # fmt: skip
    back = PretrainState.load(tmp_path)
    assert back is not None and back.step == 7 and back.skipped == {"count": 1, "names": ["a.jpg"]}
    assert torch.equal(back.model["weight"], model.weight)
    assert PretrainState.load(tmp_path / "nothing") is None


def test_restore_loads_model_optimizer_and_rng_and_refuses_another_recipe(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    cfg = load_config(PretrainConfig, None, ["method=mae"])
    random.seed(5)
    _pretrain_state(model, opt, cfg).save(tmp_path)
    expected = random.random()

    fresh = nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    state = PretrainState.load(tmp_path)
    assert state is not None
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state.restore(tmp_path, config=cfg, free=(), model=fresh, optimizer=fresh_opt, scaler=scaler, what="it")
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["momentum_buffer"].equal(
        opt.state_dict()["state"][0]["momentum_buffer"]
    )
    assert random.random() == expected  # the RNG is where it was at save time
    other = load_config(PretrainConfig, None, ["method=mae", "train.max_steps=99"])
    with pytest.raises(ConfigError, match="max_steps"):
        state.restore(
            tmp_path, config=other, free=(), model=fresh, optimizer=fresh_opt, scaler=scaler, what="it"
        )
    with pytest.raises(CheckpointError, match="the model"):
        small = nn.Linear(3, 5)
        state.restore(
            tmp_path, config=cfg, free=(), model=small, optimizer=fresh_opt, scaler=scaler, what="the model"
        )


def test_finetune_files_keep_their_kind_older_ones_load_and_a_missing_key_is_one_line(tmp_path):
    model = nn.Linear(3, 2)
    common = dict(model=model.state_dict(), optimizer={}, scaler={}, rng=[capture_rng()], config=None)
    FinetuneState(
        **common, task="classification", arch={}, outputs=None, ema=None, epoch=2, history="[]"
    ).save(tmp_path)
    raw = load_checkpoint(tmp_path / "finetune.pt")
    assert raw["kind"] == "finetune" and raw["history"] == "[]" and raw["epoch"] == 2
    del raw["outputs"], raw["config"]  # written before layouts and configs were saved
    save_checkpoint(raw, tmp_path / "finetune.pt")
    old = FinetuneState.load(tmp_path)
    assert old is not None and old.outputs is None and old.config is None
    del raw["epoch"]
    save_checkpoint(raw, tmp_path / "finetune.pt")
    with pytest.raises(
        CheckpointError, match=r"finetune.pt: not a finetune.pt of this facerep version \(no epoch\)"
    ):
        FinetuneState.load(tmp_path)
