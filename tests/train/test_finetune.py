import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed

from facerep.backbones import build_backbone, export_backbone
from facerep.backbones.resnet import ResNet
from facerep.backbones.vit import build_vit
from facerep.commands.cli import main
from facerep.config import ConfigError, FinetuneConfig, load_config
from facerep.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from facerep.runtime.distributed import init_distributed
from facerep.train.finetune import Finetuner, finetune

DEAD_PID = 99_999_999  # above any pid_max (Linux: at most 2**22): no process has it
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.schedule=linear", "train.schedule must be one of step, cosine"),
        ("train.milestones=[200,100]", "train.milestones must be sorted epochs >= 1"),
        ("train.sync_bn=maybe", "train.sync_bn must be one of auto, true, false"),
        ("head.heatmap_size=0", "head.heatmap_size must be >= 1"),
        ("head.dropout=1.0", r"head.dropout must be in \[0.0, 1.0\)"),
        ("data.backbone_size=0", "data.backbone_size must be >= 1"),
    ],
)
def test_finetune_config_rejects_bad_protocol_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(FinetuneConfig, None, [override])


def test_backbone_size_is_for_dense_tasks_and_sync_bn_takes_yaml_booleans():
    classification = ["task=classification", "data.image_size=224", "data.backbone_size=192"]
    with pytest.raises(ConfigError, match="data.backbone_size is for the dense tasks"):
        load_config(FinetuneConfig, None, classification)
    assert load_config(FinetuneConfig, None, ["train.sync_bn=true"]).train.sync_bn == "true"


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
def test_resume_continues_after_the_last_epoch_and_evaluate_cli(tmp_path, tiny_backbone, capsys, monkeypatch):
    finetune(small(tmp_path, tiny_backbone, "alignment", "train.epochs=1"))
    ckpt = tmp_path / "alignment" / "finetune.pt"
    after_one = load_checkpoint(ckpt)
    with pytest.raises(ConfigError, match=r"finetune.pt: written by a run with train.lr_head=0.01, this one"):
        finetune(small(tmp_path, tiny_backbone, "alignment", "train.epochs=2", "train.lr_head=0.5"))
    steps, original = [], Finetuner._step

    def counting(self, batch, step):
        if not steps:  # the resumed run starts from the weights saved after epoch 1
            for key, value in self.model.state_dict().items():
                assert torch.equal(value, after_one["model"][key]), key
        steps.append(step)
        return original(self, batch, step)

    monkeypatch.setattr(Finetuner, "_step", counting)
    results = finetune(small(tmp_path, tiny_backbone, "alignment", "train.epochs=2"))
    assert steps == [2, 3]  # epoch 2 only: 8 images / batch 4 = steps 2 and 3 of the schedule
    assert results["last"]["epoch"] == 2 and [
        h["epoch"] for h in json.loads(load_checkpoint(ckpt)["history"])
    ] == [1, 2]
    assert main(["evaluate", f"checkpoint={ckpt}", "overlays=2", f"output_dir={tmp_path / 'eval'}"]) == 0
    assert "nme" in capsys.readouterr().out
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 2
    assert "nme" in json.loads((tmp_path / "eval" / "results.json").read_text())["full"]


@pytest.mark.slow
def test_linear_probe_trains_only_the_head(tmp_path, tiny_backbone):
    cfg = small(tmp_path, tiny_backbone, "classification", "train.probe=true")
    initial_head = Finetuner(cfg, init_distributed("cpu")).model.head.weight.detach().clone()
    results = finetune(cfg)
    assert "mean_accuracy" in results["last"]["full"]
    state = load_checkpoint(tmp_path / "classification" / "finetune.pt")
    source = load_file(tiny_backbone)
    for weights in (state["model"], state["ema"]):
        backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
        assert backbone.keys() == source.keys()
        assert all(torch.equal(backbone[k], source[k]) for k in source)  # the backbone never moved
    assert not torch.allclose(state["model"]["head.weight"], initial_head)  # while the head trained


@pytest.mark.slow
def test_finetune_accepts_an_official_mcf_checkpoint(tmp_path):
    torch.manual_seed(3)
    encoder = build_vit("vit_tiny_patch16_224", img_size=32, depth=4, embed_dim=64, num_heads=2)
    state = {f"online_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"target_encoder.{k}": v + 1 for k, v in encoder.state_dict().items()}
    state |= {"online_encoder.fc.0.weight": torch.zeros(8, 64), "mask_token": torch.zeros(1, 1, 32)}
    path = tmp_path / "mcf_official.pth"
    torch.save({"model": state}, path)
    cfg = small(tmp_path, path, "alignment", "train.epochs=1")  # fine-tuned at 64 px: pos embed resampled
    start = Finetuner(cfg, init_distributed("cpu")).backbone.state_dict()
    for key, value in encoder.state_dict().items():  # the online encoder's weights, not the target's
        expected = (
            resample_abs_pos_embed(value, [4, 4], [2, 2], num_prefix_tokens=1)
            if key == "pos_embed"
            else value
        )
        torch.testing.assert_close(start[key], expected, msg=key)
    results = finetune(cfg)
    assert results["last"]["epoch"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_finetune_a_random_resnet50_from_the_cli(tmp_path, task, capsys):
    dataset, key = TASKS[task]
    out = tmp_path / task
    args = [
        "finetune", f"task={task}", f"dataset={dataset}", "backbone=random", "backbone_arch=resnet50",
        f"output_dir={out}", "data.image_size=64", "data.num_workers=0", "data.options.size=64",
        "data.train_options.length=8", "data.test_options.length=4", "head.channels=16", "train.epochs=1",
        "train.batch_size=4", "train.progress=log",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert key in results["last"]["full"] and results["last"]["epoch"] == 1
    state = load_checkpoint(out / "finetune.pt")
    assert state["arch"]["family"] == "resnet"
    assert main(["evaluate", f"checkpoint={out / 'finetune.pt'}", f"output_dir={tmp_path / 'eval'}"]) == 0
    assert key in capsys.readouterr().out


@pytest.mark.slow
def test_finetune_from_a_resnet_file_and_head_levels(tmp_path, capsys):
    torch.manual_seed(0)
    path = export_backbone(build_backbone("resnet18", img_size=64), tmp_path / "r18")
    cfg = small(tmp_path, path, "parsing", "head.blocks=null", "head.levels=[1,2,3,4]")
    tuner = Finetuner(cfg, init_distributed("cpu"))
    assert isinstance(tuner.backbone, ResNet) and tuner.model.dense.levels == [1, 2, 3, 4]
    source = load_file(path)
    assert all(torch.equal(tuner.backbone.state_dict()[k], v) for k, v in source.items())
    assert main(["finetune", "task=parsing", "dataset=synthetic_parsing", f"backbone={path}",
                 f"output_dir={tmp_path / 'vit_key'}", "head.blocks=[3,5,7,11]"]) == 2  # fmt: skip
    assert "head.blocks names ViT blocks; for a resnet backbone set head.levels" in capsys.readouterr().err


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


def test_reruns_clean_killed_writes_and_refuse_another_model_in_one_line(tmp_path, capsys):
    """A killed write's temporary is removed at start; a rerun after the backbone file changed width, and
    evaluating a finetune.pt holding a wrong-shape tensor, are one line naming the first mismatching key
    and both shapes (torch's size-mismatch traceback before), and the finished checkpoint is kept."""
    backbone = tmp_path / "backbone"
    export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), backbone
    )
    run = tmp_path / "alignment"
    run.mkdir()
    stale = run / f".finetune.pt.{DEAD_PID}.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    finetune(small(tmp_path, backbone, "alignment", "train.epochs=1"))
    assert (
        not stale.exists()
        and f"removed 1 temporary file(s) of killed writes in {run}" in capsys.readouterr().out
    )

    ckpt = run / "finetune.pt"
    saved = ckpt.read_bytes()
    export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=96, num_heads=2), backbone
    )
    what = (
        r"finetune.pt: weights do not fit this config's alignment model \(the run directory holds another\)"
    )
    shapes = r"shape mismatch \[dense.backbone.cls_token file \[1, 1, 64\] vs model \[1, 1, 96\], "
    with pytest.raises(CheckpointError, match=f"{what}: {shapes}") as err:
        finetune(small(tmp_path, backbone, "alignment", "train.epochs=2"))
    assert "\n" not in str(err.value) and str(err.value).endswith(f"(or delete {run})")
    assert ckpt.read_bytes() == saved

    state = load_checkpoint(ckpt)
    key = "dense.backbone.blocks.0.attn.qkv.weight"
    state["ema"][key] = torch.zeros(5, 5)
    save_checkpoint(state, tmp_path / "bad.pt")
    assert main(["evaluate", f"checkpoint={tmp_path / 'bad.pt'}"]) == 2
    assert capsys.readouterr().err == (
        f"facerep: error: {tmp_path / 'bad.pt'}: weights do not fit the alignment model its config and arch "
        f"record build: shape mismatch [{key} file [5, 5] vs model [192, 64]]\n"
    )
