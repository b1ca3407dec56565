import json
import os
import subprocess
import sys

import pytest
import torch

from facerep.backbones.io import export_backbone
from facerep.commands.cli import main
from facerep.config import FinetuneConfig, load_config
from facerep.engine.finetune import finetune
from facerep.backbones.vit import build_vit

TASKS = {
    "alignment": ("synthetic_alignment", "nme"),
    "parsing": ("synthetic_parsing", "mean_f1"),
    "classification": ("synthetic_attributes", "mean_accuracy"),
}


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbone")
    return export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), out
    )


def small(tmp_path, backbone, task: str, *extra: str) -> FinetuneConfig:
    dataset = TASKS[task][0]
    return load_config(
        FinetuneConfig,
        None,
        [
            f"task={task}", f"dataset={dataset}", f"backbone={backbone}", f"output_dir={tmp_path / task}",
            "data.image_size=64", "data.num_workers=0", "data.options.size=64",
            "data.train_options.length=8", "data.test_options.length=4",
            "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=2", "train.batch_size=4",
            "train.progress=log", "train.ema=0.9", *extra,
        ],
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_finetune_writes_results_with_best_and_last(tmp_path, tiny_backbone, task):
    cfg = small(tmp_path, tiny_backbone, task)
    results = finetune(cfg)
    out = tmp_path / task
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    key = TASKS[task][1]
    assert saved["primary_metric"] == key
    assert saved["last"]["epoch"] == 2 and saved["best"]["epoch"] in (1, 2)
    assert key in saved["last"]["full"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert (out / "finetune.pt").exists() and (out / "config.yaml").exists()


@pytest.mark.slow
def test_resume_continues_after_the_last_epoch_and_evaluate_cli(tmp_path, tiny_backbone, capsys):
    finetune(small(tmp_path, tiny_backbone, "alignment", "train.epochs=1"))
    results = finetune(small(tmp_path, tiny_backbone, "alignment", "train.epochs=2"))
    assert [h for h in ("best", "last")] and results["last"]["epoch"] == 2
    ckpt = tmp_path / "alignment" / "finetune.pt"
    assert main(["evaluate", f"checkpoint={ckpt}", "overlays=2", f"output_dir={tmp_path / 'eval'}"]) == 0
    assert "nme" in capsys.readouterr().out
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 2
    assert "nme" in json.loads((tmp_path / "eval" / "results.json").read_text())["full"]


@pytest.mark.slow
def test_linear_probe_trains_only_the_head(tmp_path, tiny_backbone):
    results = finetune(small(tmp_path, tiny_backbone, "classification", "train.probe=true"))
    assert "mean_accuracy" in results["last"]["full"]


@pytest.mark.slow
def test_finetune_accepts_an_official_mcf_checkpoint(tmp_path):
    encoder = build_vit("vit_tiny_patch16_224", img_size=32, depth=4, embed_dim=64, num_heads=2)
    state = {f"online_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"target_encoder.{k}": v + 1 for k, v in encoder.state_dict().items()}
    state |= {"online_encoder.fc.0.weight": torch.zeros(8, 64), "mask_token": torch.zeros(1, 1, 32)}
    path = tmp_path / "mcf_official.pth"
    torch.save({"model": state}, path)
    cfg = small(tmp_path, path, "alignment", "train.epochs=1")  # fine-tuned at 64 px: pos embed resampled
    results = finetune(cfg)
    assert results["last"]["epoch"] == 1


@pytest.mark.slow
def test_finetune_under_torchrun_two_processes(tmp_path, tiny_backbone):
    cfg = small(tmp_path, tiny_backbone, "alignment")
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "facerep",
        "finetune", "task=alignment", "dataset=synthetic_alignment", f"backbone={tiny_backbone}",
        f"output_dir={out}", "device=cpu", "data.image_size=64", "data.num_workers=0", "data.options.size=64",
        "data.train_options.length=16", "data.test_options.length=4", "head.blocks=[0,1,2,3]",
        "head.channels=16", "train.epochs=2", "train.batch_size=4", "train.progress=log",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["last"]["epoch"] == cfg.train.epochs
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
