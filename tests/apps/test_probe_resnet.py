"""The fine-tuning linear probe (``train.probe=true``) with a ResNet backbone, from the command line: the
frozen backbone (BatchNorm statistics included) never moves."""

from __future__ import annotations

import json

import pytest
import torch

from facerep.commands.cli import main
from facerep.runtime.checkpoint import load_checkpoint
from facerep.train import finetune as finetune_module


@pytest.mark.slow
def test_finetune_probe_with_a_random_resnet18_from_the_cli(tmp_path, monkeypatch):
    initial: dict[str, torch.Tensor] = {}
    build = finetune_module.finetune_backbone

    def recording(cfg):  # the random backbone as the run starts
        backbone = build(cfg)
        initial.update({k: v.detach().clone() for k, v in backbone.state_dict().items()})
        return backbone

    monkeypatch.setattr(finetune_module, "finetune_backbone", recording)
    out = tmp_path / "probe"
    args = [
        "finetune", "task=classification", "dataset=synthetic_attributes", "backbone=random",
        "backbone_arch=resnet18", "train.probe=true", f"output_dir={out}", "data.image_size=64",
        "data.num_workers=0", "data.options.size=64", "data.train_options.length=8",
        "data.test_options.length=4", "train.epochs=1", "train.batch_size=4", "train.progress=log",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"] == "mean_accuracy" and results["last"]["epoch"] == 1
    assert "mean_accuracy" in results["last"]["full"]
    state = load_checkpoint(out / "finetune.pt")
    assert state["arch"]["family"] == "resnet"
    assert any("running_mean" in k for k in initial)  # BatchNorm statistics are checked too
    for weights in (state["model"], state["ema"]):
        backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
        assert backbone.keys() == initial.keys()
        assert all(torch.equal(backbone[k], initial[k]) for k in initial)  # the backbone never moved
    assert set(state["model"]) - {f"backbone.{k}" for k in initial} == {"head.weight", "head.bias"}
