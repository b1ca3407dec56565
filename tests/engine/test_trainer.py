import json
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from facerep.config import ConfigError
from facerep.engine.trainer import NonFiniteLossError, Trainer, pretrain
from facerep.runtime.checkpoint import load_checkpoint, save_checkpoint
from facerep.runtime.distributed import init_distributed


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
