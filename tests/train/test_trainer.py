import json
import os
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from facerep.backbones import build_backbone, export_backbone
from facerep.commands.cli import main
from facerep.config import ConfigError, PretrainConfig, load_config
from facerep.methods.base import build_encoder
from facerep.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from facerep.runtime.distributed import init_distributed
from facerep.train.pretrain import NonFiniteLossError, Trainer, pretrain

DEAD_PID = 99_999_999  # above any pid_max (Linux: at most 2**22): no process has it


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "ratio"), [("mae", 0.9), ("mcf", 0.8)])
def test_loss_falls_on_synthetic_faces(tiny_config, method, ratio):
    cfg = tiny_config(
        f"method={method}",
        "train.max_steps=100",
        "train.warmup_steps=5",
        "train.batch_size=16",
        "train.lr=2e-3",
        "data.image_size=64",
    )
    pretrain(cfg)
    losses = [r["loss"] for r in _metrics(Path(cfg.output_dir))]
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < ratio * first, (first, last)


def test_run_writes_config_metrics_tensorboard_checkpoint_and_timm_backbone(tiny_config, tmp_path):
    cfg = tiny_config("method=mcf", "train.max_steps=3")
    path = pretrain(cfg)
    out = tmp_path / "run"
    assert (out / "config.yaml").read_text().startswith("method: mcf")
    records = _metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "feature", "contrastive", "lr", "momentum", "images_per_s"} <= set(records[0])
    assert any((out / "tensorboard").iterdir())
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    assert path == out / "backbone.safetensors"
    meta = json.loads((out / "backbone.json").read_text())
    arch = meta["arch"]
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=arch["img_size"],
        depth=arch["depth"],
        embed_dim=arch["embed_dim"],
        num_heads=arch["num_heads"],
        num_classes=0,
    )
    model.load_state_dict(load_file(path), strict=True)


FARL_TINY = ("text.width=64", "text.layers=1", "text.heads=1", "text.context_length=16", "text.embed_dim=32")


FRA_TINY = (
    "method=fra", "model.arch=resnet18", "model.depth=null", "model.embed_dim=null", "model.num_heads=null",
    "data.image_size=64", "byol.hidden_dim=32", "byol.proj_dim=16", "fra.num_regions=4",
    "fra.decoder_heads=2", "train.optimizer=lars", "train.lr=0.2",
)  # fmt: skip


@pytest.mark.parametrize(
    "method", [("method=mcf",), ("method=farl", *FARL_TINY), FRA_TINY], ids=["mcf", "farl", "fra"]
)
def test_resume_equals_uninterrupted_run(tiny_config, monkeypatch, method):
    common = (*method, "train.max_steps=6", "train.ckpt_every=2", "train.accum_steps=2")
    full = Trainer(tiny_config(*common, out="full"), init_distributed("cpu"))
    full.fit()

    calls = {"n": 0}
    original = Trainer.train_step

    def crash_on_fifth_step(self, batches):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(Trainer, "train_step", crash_on_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(*common, out="resumed"), init_distributed("cpu")).fit()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert load_checkpoint(tiny_config(*common, out="resumed").output_dir + "/checkpoint.pt")["step"] == 4

    resumed = Trainer(tiny_config(*common, out="resumed"), init_distributed("cpu"))
    resumed.fit()
    assert resumed.step == full.step == 6
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in _metrics(Path(resumed.cfg.output_dir))] == [1, 2, 3, 4, 5, 6]


def test_momentum_encoder_moves_only_at_optimizer_steps(tiny_config):
    trainer = Trainer(
        tiny_config("method=mcf", "train.max_steps=2", "train.accum_steps=3"), init_distributed("cpu")
    )
    method = trainer.method
    seen: list[torch.Tensor] = []
    forward = method.forward

    def spy(batch):
        seen.append(torch.cat([p.detach().flatten().clone() for p in method.target_encoder.parameters()]))
        return forward(batch)

    method.forward = spy
    trainer.fit()
    assert len(seen) == 6
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])  # within optimizer step 1
    assert not torch.equal(seen[2], seen[3])  # moved by the step
    assert torch.equal(seen[3], seen[4]) and torch.equal(seen[4], seen[5])


def test_momentum_update_is_the_ema_formula(tiny_config):
    trainer = Trainer(tiny_config("method=mcf", "mcf.momentum=0.9"), init_distributed("cpu"))
    method = trainer.method
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_encoder.parameters()]
    assert method.on_optimizer_step(1, 10) == {"momentum": 0.9}
    for old, new, online in zip(
        before, method.target_encoder.parameters(), method.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)


def test_non_finite_loss_stops_without_overwriting_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config("method=mae", "train.max_steps=4", "train.ckpt_every=2")
    trainer = Trainer(cfg, init_distributed("cpu"))
    forward = trainer.method.forward
    calls = {"n": 0}

    def nan_on_third(batch):
        calls["n"] += 1
        loss, terms = forward(batch)
        return (loss * float("nan"), terms) if calls["n"] == 3 else (loss, terms)

    trainer.method.forward = nan_on_third
    with pytest.raises(NonFiniteLossError, match="step 3"):
        trainer.fit()
    assert load_checkpoint(cfg.output_dir + "/checkpoint.pt")["step"] == 2


def test_corrupt_inputs_are_skipped_counted_and_reported(tiny_config, tmp_path, capsys):
    from PIL import Image

    from facerep.data.synthetic import render_face

    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(render_face(0, i, 32).image).save(folder / f"{i}.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    cfg = tiny_config("method=mae", "data.source=folder", f"data.path={folder}", "train.max_steps=2")
    pretrain(cfg)  # 2 steps x 4 images = one pass over the 8 files
    records = _metrics(Path(cfg.output_dir))
    assert records[-1]["skipped"] == 2
    out = capsys.readouterr().out
    assert "skipped 2 unreadable or uncaptioned input(s)" in out and "empty.jpg" in out and "notes.png" in out


def test_default_teacher_is_pre_trained_by_an_mae_stage_first(tiny_config, tmp_path, capsys):
    cfg = tiny_config(
        "method=mcf", "teacher.checkpoint=mae_stage", "teacher.stage_steps=2", "train.max_steps=2"
    )
    pretrain(cfg)
    out, stage = tmp_path / "run", tmp_path / "run" / "teacher_mae"
    stage_state = load_checkpoint(stage / "checkpoint.pt")
    assert stage_state["method"] == "mae" and stage_state["step"] == 2
    teacher_file = stage / "backbone.safetensors"
    assert OmegaConf.load(out / "config.yaml").teacher.checkpoint == str(teacher_file)
    teacher = {
        k.removeprefix("teacher.backbone."): v
        for k, v in load_checkpoint(out / "checkpoint.pt")["model"].items()
        if k.startswith("teacher.backbone.")
    }
    exported = load_file(teacher_file)
    assert teacher.keys() == exported.keys() and all(torch.equal(teacher[k], exported[k]) for k in exported)
    assert "pre-training the MCF teacher with MAE (2 steps)" in capsys.readouterr().out
    pretrain(cfg)  # a rerun resumes both finished runs: nothing is trained again
    assert [json.loads(x)["step"] for x in (stage / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_run_resumes_only_under_its_own_config(tiny_config, tmp_path):
    """A changed recipe (or step budget) in a run directory is one line naming the key; reporting keys may
    change; a checkpoint without a stored config (older facerep) resumes unchecked."""
    pretrain(tiny_config("method=mae", "train.max_steps=2"))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    for change, key in (("train.lr=0.5", "train.lr"), ("train.max_steps=3", "train.max_steps")):
        with pytest.raises(ConfigError, match=rf"checkpoint.pt: written by a run with {key}=") as err:
            pretrain(tiny_config("method=mae", "train.max_steps=2", change))
        assert "\n" not in str(err.value) and "another output_dir" in str(err.value)
    assert load_checkpoint(ckpt)["step"] == 2  # the refused runs touched nothing
    pretrain(tiny_config("method=mae", "train.max_steps=2", "train.log_every=7", "train.progress=log"))
    state = load_checkpoint(ckpt)
    del state["config"]
    save_checkpoint(state, ckpt)
    pretrain(tiny_config("method=mae", "train.max_steps=3", "train.lr=0.5"))
    assert load_checkpoint(ckpt)["step"] == 3


def test_a_run_removes_the_temporaries_of_killed_writes_and_keeps_live_ones(tiny_config, tmp_path, capsys):
    """A run killed inside a checkpoint write leaves ``.checkpoint.pt.<pid>.<hex>.tmp`` (as big as the
    checkpoint); the next run in the directory deletes it, says so, and keeps a live process's write."""
    run = tmp_path / "run"
    run.mkdir()
    dead = run / f".checkpoint.pt.{DEAD_PID}.0123abcd.tmp"
    live = run / f".checkpoint.pt.{os.getppid()}.89abcdef.tmp"
    for path in (dead, live):
        path.write_bytes(b"half a checkpoint")
    pretrain(tiny_config("method=mae", "train.max_steps=1"))
    assert not dead.exists() and live.exists()
    assert f"removed 1 temporary file(s) of killed writes in {run}: {dead.name}" in capsys.readouterr().out


def test_a_run_directory_holding_another_model_is_one_line_naming_the_key_and_shapes(tiny_config, tmp_path):
    """Rerunning a directory with a wider model: refused by the stored config (model.embed_dim), and where
    there is none (older facerep) by the weights, naming the first mismatch and both shapes instead of
    torch's size-mismatch traceback; the finished checkpoint is untouched."""
    pretrain(tiny_config("method=mae", "train.max_steps=1"))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    wider = tiny_config("method=mae", "train.max_steps=2", "model.embed_dim=128")
    with pytest.raises(
        ConfigError, match="written by a run with model.embed_dim=64, this one has model.embed_dim=128"
    ):
        pretrain(wider)
    state = load_checkpoint(ckpt)
    del state["config"]
    save_checkpoint(state, ckpt)
    saved = ckpt.read_bytes()
    what = r"checkpoint.pt: weights do not fit this config's mae model \(the run directory holds another\)"
    shapes = r"shape mismatch \[encoder\.cls_token file \[1, 1, 64\] vs model \[1, 1, 128\], "
    with pytest.raises(CheckpointError, match=f"{what}: {shapes}") as err:
        pretrain(wider)
    message = str(err.value)
    assert "\n" not in message and message.endswith(
        f"start fresh in another output_dir (or delete {ckpt.parent})"
    )
    assert ckpt.read_bytes() == saved and load_checkpoint(ckpt)["step"] == 1


def test_model_init_refuses_a_depth_or_width_other_than_the_files(
    tiny_config, tiny_overrides, tmp_path, capsys
):
    """model.depth / model.embed_dim with model.init used to be ignored silently: the file fixes them, so a
    different value is one line naming the key, its value and the file's; model.num_heads is a load option
    (honoured for a ViT, refused for a ResNet)."""
    init = f"model.init={tmp_path / 'vit'}"
    vit = build_backbone("vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=64, num_heads=2)
    export_backbone(vit, tmp_path / "vit")
    assert build_encoder(tiny_config(init)).arch.depth == 2  # TINY's depth 2, width 64: the file's
    assert build_encoder(tiny_config(init, "model.num_heads=4")).arch.num_heads == 4
    for key, value, held in (("depth", 3, 2), ("embed_dim", 128, 64)):
        message = rf"model.{key}={value}, but model.init=.*vit holds {key}={held}"
        with pytest.raises(
            ConfigError, match=rf"{message}; the file fixes the architecture: leave model.{key}"
        ):
            build_encoder(tiny_config(init, f"model.{key}={value}"))
    export_backbone(build_backbone("resnet18", img_size=32), tmp_path / "resnet")
    with pytest.raises(
        ConfigError, match=r"model.num_heads=2, but model.init=.*resnet holds a ResNet \(no num_"
    ):
        build_encoder(
            load_config(PretrainConfig, None, [f"model.init={tmp_path / 'resnet'}", "model.num_heads=2"])
        )
    deeper = [*tiny_overrides, "method=mae", f"output_dir={tmp_path / 'deeper'}", init, "model.depth=3"]
    assert main(["pretrain", *deeper]) == 2
    assert "model.depth=3, but model.init=" in capsys.readouterr().err
    assert not (tmp_path / "deeper").exists()
