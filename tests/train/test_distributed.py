"""A real 2-process DDP run under torchrun (gloo on CPU)."""

import json
import os
import subprocess
import sys

import pytest

from facerep.runtime.checkpoint import load_checkpoint


def _torchrun_pretrain(out, *overrides: str) -> subprocess.CompletedProcess:
    """``facerep pretrain`` under 2-process ``torchrun`` on the CPU (gloo): 3 steps x 2 micro-batches."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "facerep", "pretrain", *overrides, "device=cpu", "train.max_steps=3", "train.accum_steps=2",
        f"output_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, tiny_overrides):
    out = tmp_path / "ddp"
    result = _torchrun_pretrain(out, *tiny_overrides, "method=mcf")
    assert result.stdout.count("[facerep] done") == 1  # only rank 0 reports and writes
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and len(state["rng"]) == 2  # each rank's RNG saved for exact resume
    assert state["samples_per_rank"] == 3 * 2 * 4
    assert (out / "backbone.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes_farl(tmp_path, tiny_overrides):
    """FaRL under DDP: the image tower shared by the CLIP model and the method, features gathered with
    gradients; rank 0 alone writes both towers."""
    out = tmp_path / "farl"
    text = ["text.width=64", "text.layers=1", "text.heads=1", "text.context_length=16", "text.embed_dim=32"]
    result = _torchrun_pretrain(out, *tiny_overrides, *text, "method=farl")
    assert result.stdout.count("[facerep] done") == 1 and result.stdout.count("clip.safetensors") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all({"itc", "mim"} <= set(r) for r in records)
    assert (out / "clip.safetensors").exists() and (out / "backbone.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes_fra(tmp_path, tiny_overrides):
    """FRA under DDP: mask embeddings averaged over the global batch with gradients, Sinkhorn and the
    mean-entropy term over all ranks' pixels, LARS; rank 0 alone writes the ResNet."""
    out = tmp_path / "fra"
    fra = ["model.arch=resnet18", "model.depth=null", "model.embed_dim=null", "model.num_heads=null",
           "data.image_size=64", "byol.hidden_dim=32", "byol.proj_dim=16",
           "fra.num_regions=4", "fra.decoder_heads=2", "train.optimizer=lars", "train.lr=0.2"]  # fmt: skip
    result = _torchrun_pretrain(out, *tiny_overrides, *fra, "method=fra")
    assert result.stdout.count("[facerep] done") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"global", "region", "cluster", "momentum"} <= set(r) for r in records)
    assert json.loads((out / "backbone.json").read_text())["timm_model"] == "resnet18"
