from __future__ import annotations

import pytest

from facerep.config import PretrainConfig, load_config

TINY = [
    "model.arch=vit_tiny_patch16_224",
    "model.depth=2",
    "model.embed_dim=64",
    "model.num_heads=2",
    "data.image_size=32",
    "data.synthetic_length=256",
    "data.num_workers=0",
    "decoder.embed_dim=32",
    "decoder.depth=1",
    "decoder.num_heads=2",
    "mcf.proj_hidden_dim=64",
    "mcf.proj_dim=32",
    "teacher.checkpoint=random",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.warmup_steps=1",
    "train.blr=1e-3",
    "train.log_every=1",
    "train.ckpt_every=100",
    "train.progress=log",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config(tmp_path):
    """A few-second CPU config; extra ``KEY=VALUE`` strings override it."""

    def make(*overrides: str, out: str = "run") -> PretrainConfig:
        return load_config(PretrainConfig, None, [*TINY, f"output_dir={tmp_path / out}", *overrides])

    return make
