"""A third method and a new task, each written in its own module outside facerep and registered with one
line, run end to end from facerep's command line (docs/development.md: "Adding a method", "Adding a task")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from facerep.data.scenes import render_scene

HERE = Path(__file__).parent
POSE_RUN = (  # the toy task on 8 + 4 synthetic faces, a random ResNet-18 at 64 px
    "task=head_pose", "dataset=synthetic_yaw", "backbone=random", "backbone_arch=resnet18",
    "data.image_size=64", "data.num_workers=0", "data.options.size=64", "data.train_options.length=8",
    "data.test_options.length=4", "train.batch_size=4", "train.progress=log",
)  # fmt: skip


def _run_all(tmp_path: Path, plugin: str, *commands: list[str]) -> subprocess.CompletedProcess:
    """``facerep <command>`` for each command in one process that imported ``plugin`` first; stops at the
    first that fails."""
    code = (
        f"import json, sys, {plugin}; from facerep.commands.cli import main\n"
        "for args in json.loads(sys.argv[1]):\n    if rc := main(args): sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps([list(c) for c in commands])],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )


def _run(tmp_path: Path, plugin: str, *args: str) -> subprocess.CompletedProcess:
    return _run_all(tmp_path, plugin, list(args))


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
    result = _run(tmp_path, "toy_pose", "finetune", *POSE_RUN, "train.epochs=2", f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"] == "yaw_mae" and results["last"]["epoch"] == 2
    assert results["last"]["full"]["yaw_mae"] >= 0


@pytest.mark.slow
def test_a_new_task_predicts_and_exports(tmp_path):
    """The toy task, from its own module, through ``facerep evaluate`` (with overlays), ``predict`` on a
    photo of faces (with an overlay) and ``export`` to ONNX, whose predictions are PyTorch's."""
    run, photo, onnx = tmp_path / "pose", tmp_path / "scene.png", tmp_path / "pose" / "export" / "model.onnx"
    Image.fromarray(render_scene(3, 0, faces=2, face_size=(128, 160)).image).save(photo)  # MTCNN finds both
    result = _run_all(
        tmp_path, "toy_pose",
        ["finetune", *POSE_RUN, "train.epochs=1", f"output_dir={run}"],
        ["evaluate", f"checkpoint={run / 'finetune.pt'}", "overlays=2"],
        ["predict", f"checkpoint={run}", f"input={photo}", f"output_dir={tmp_path / 'torch'}"],
        ["export", f"checkpoint={run}", "format=onnx"],
        ["predict", f"checkpoint={onnx}", f"input={photo}", f"output_dir={tmp_path / 'onnx'}"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((run / "eval" / "results.json").read_text())
    assert evaluated["full"]["yaw_mae"] >= 0 and len(list((run / "eval" / "overlays").glob("*.png"))) == 2
    spec = json.loads(onnx.with_name("model.onnx.json").read_text())
    assert (spec["task"], spec["output_name"], spec["attribute_names"]) == ("head_pose", "yaw", None)
    docs = {name: json.loads((tmp_path / name / "scene.json").read_text()) for name in ("torch", "onnx")}
    faces = docs["torch"]["faces"]
    assert docs["torch"]["task"] == "head_pose" and faces and len(docs["onnx"]["faces"]) == len(faces)
    assert all(isinstance(face["yaw"], float) and "error" not in face for face in faces)
    assert (tmp_path / "torch" / docs["torch"]["overlay"]).is_file()
    assert [f["yaw"] for f in docs["onnx"]["faces"]] == pytest.approx([f["yaw"] for f in faces], abs=0.05)
