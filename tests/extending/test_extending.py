"""A third method and a new task, each written in its own module outside facerep and registered with one
line, run end to end from facerep's command line (README: "Adding a method, adding a task")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _run(tmp_path: Path, plugin: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys, {plugin}; from facerep.commands.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.slow
def test_a_two_view_momentum_method_on_a_resnet(tmp_path):
    out = tmp_path / "byol"
    result = _run(
        tmp_path, "toy_byol", "pretrain", "method=toy_byol", "model.arch=resnet18", "toy.momentum=0.5",
        "data.image_size=32", "data.num_workers=0", "data.synthetic_length=64", "train.batch_size=4",
        "train.max_steps=3", "train.log_every=1", "train.progress=log", f"output_dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all("byol" in r for r in records)
    # the momentum base's cosine schedule 0.5 -> 1 over 3 steps, applied after each optimizer step
    assert [r["momentum"] for r in records] == pytest.approx([0.625, 0.875, 1.0])
    assert "toy:" in (out / "config.yaml").read_text()  # the method's own config section
    meta = json.loads((out / "backbone.json").read_text())
    assert meta["family"] == "resnet" and meta["method"] == "toy_byol" and meta["timm_model"] == "resnet18"


@pytest.mark.slow
def test_a_new_task_fine_tunes_and_evaluates(tmp_path):
    out = tmp_path / "pose"
    result = _run(
        tmp_path, "toy_pose", "finetune", "task=head_pose", "dataset=synthetic_yaw", "backbone=random",
        "backbone_arch=resnet18", "data.image_size=64", "data.num_workers=0", "data.options.size=64",
        "data.train_options.length=8", "data.test_options.length=4", "train.epochs=2", "train.batch_size=4",
        "train.progress=log", f"output_dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"] == "yaw_mae" and results["last"]["epoch"] == 2
    assert results["last"]["full"]["yaw_mae"] >= 0
