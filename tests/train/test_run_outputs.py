"""What every run directory holds besides the weights: per-step progress with a right total, TensorBoard tags
under ``train/`` and ``test/``, and ``plots/`` (loss, test metrics, predictions); a failing picture is one
warning line and never a lost run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from facerep.backbones import export_backbone
from facerep.backbones.vit import build_vit
from facerep.config import FinetuneConfig, load_config
from facerep.runtime import plots
from facerep.runtime.run_log import MetricsLog, Progress
from facerep.train import finetune as finetune_module
from facerep.train.finetune import finetune
from facerep.train.pretrain import pretrain

LINE = re.compile(r"^alignment step (\d+)/(\d+) .*eta \S+$")


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    out = tmp_path_factory.mktemp("backbone")
    return export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), out
    )


def small(out: Path, backbone: Path, *extra: str) -> FinetuneConfig:
    """8 training images in batches of 2: 4 optimizer steps an epoch."""
    return load_config(
        FinetuneConfig,
        None,
        [
            "task=alignment", "dataset=synthetic_alignment", f"backbone={backbone}", f"output_dir={out}",
            "data.image_size=64", "data.num_workers=0", "data.options.size=64",
            "data.train_options.length=8", "data.test_options.length=3",
            "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=2", "train.batch_size=2",
            "train.progress=log", "train.ema=0.9", *extra,
        ],
    )  # fmt: skip


def progress_lines(text: str) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for m in map(LINE.match, text.splitlines()) if m]


def tags(run: Path) -> set[str]:
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return set(events.Tags()["scalars"])


def assert_png(path: Path, min_size: int = 100) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        assert min(image.size) >= min_size, image.size
        # not a blank canvas: a drawn picture has many colours
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 20


def test_log_lines_count_optimizer_steps_from_the_resumed_step(capsys):
    progress = Progress(total=10, initial=4, mode="log", desc="alignment", every=3)
    for step in range(5, 11):
        progress.update(step, {"loss": 1.0} if progress.due(step) else None)
    progress.update(7, {"loss": 1.0}, force=True)
    assert progress_lines(capsys.readouterr().out) == [(6, 10), (9, 10), (10, 10), (7, 10)]


def test_metrics_log_tags_training_scalars_train_and_test_metrics_test(tmp_path):
    log = MetricsLog(tmp_path)
    log.write({"step": 4, "epoch": 1, "loss": 0.5, "lr_head": 0.01, "test/nme": 0.2})
    log.close()
    assert tags(tmp_path) == {"train/loss", "train/lr_head", "test/nme"}


@pytest.mark.slow
def test_finetune_progress_per_step_tensorboard_plots_and_resume(
    tmp_path, tiny_backbone, capsys, monkeypatch
):
    out = tmp_path / "ft"
    finetune(small(out, tiny_backbone, "train.epochs=1"))
    lines = progress_lines(capsys.readouterr().out)
    assert lines == [(1, 4), (2, 4), (3, 4), (4, 4)]  # one line per optimizer step, not per epoch

    started = []

    class Recording(Progress):
        def __init__(self, total, initial, *args, **kwargs):
            started.append((total, initial))
            super().__init__(total, initial, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "Progress", Recording)
    finetune(small(out, tiny_backbone, "train.epochs=2"))  # resumes after epoch 1
    assert started == [(8, 4)]
    assert progress_lines(capsys.readouterr().out) == [(5, 8), (6, 8), (7, 8), (8, 8)]

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in records] == [(4, 1), (8, 2)]
    assert all("test/nme" in r for r in records)
    found = tags(out)
    assert {"train/loss", "train/lr_head", "test/nme"} <= found
    assert all(t.startswith(("train/", "test/")) for t in found)
    assert not any(t.startswith("train/test") for t in found)

    assert_png(out / "plots" / "loss.png")
    assert_png(out / "plots" / "metrics.png")
    assert_png(out / "plots" / "predictions.png")
    with Image.open(out / "plots" / "predictions.png") as sheet:  # 3 test faces side by side, enlarged
        assert sheet.width >= 3 * 128 and 128 <= sheet.height < 2 * 128


def test_pretrain_writes_loss_plot_with_each_term(tiny_config, tmp_path, monkeypatch):
    drawn = []
    original = plots.plot_losses

    def spy(records, path, terms=None, title=""):
        drawn.append(plots.loss_keys(records, terms))
        return original(records, path, terms, title)

    monkeypatch.setattr(plots, "plot_losses", spy)
    pretrain(tiny_config("method=mcf", "train.max_steps=3", "train.log_every=1", "train.progress=log"))
    out = tmp_path / "run"
    assert drawn == [["loss", "feature", "contrastive"]]  # not lr, momentum, images/s
    assert_png(out / "plots" / "loss.png")
    assert not (out / "plots" / "metrics.png").exists()  # pre-training evaluates nothing
    found = tags(out)
    assert {"train/loss", "train/feature", "train/contrastive", "train/lr"} <= found
    assert all(t.startswith("train/") for t in found)


def test_a_failing_plot_is_one_warning_line_and_the_run_completes(tiny_config, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts\nat all")

    monkeypatch.setattr(plots, "plot_losses", broken)
    path = pretrain(tiny_config("method=mae", "train.max_steps=2", "train.progress=log"))
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "warning" in line]
    assert warnings == [
        "[facerep] warning: plots/loss.png not written (RuntimeError: no fonts at all); the run is complete"
    ]
    assert path.exists() and "[facerep] done:" in out
    assert not (tmp_path / "run" / "plots" / "loss.png").exists()


@pytest.mark.slow
def test_a_failing_predictions_sheet_leaves_the_finetune_complete(
    tmp_path, tiny_backbone, capsys, monkeypatch
):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(finetune_module, "save_predictions_sheet", broken)
    out = tmp_path / "ft"
    results = finetune(small(out, tiny_backbone, "train.epochs=1"))
    text = capsys.readouterr().out
    assert [line for line in text.splitlines() if "warning" in line] == [
        "[facerep] warning: plots/predictions.png not written (OSError: disk full); the run is complete"
    ]
    assert results["last"]["epoch"] == 1 and (out / "results.json").exists()
    assert (out / "plots" / "loss.png").exists() and not (out / "plots" / "predictions.png").exists()


def test_curves_of_a_finetune_like_log_group_per_class_scores(tmp_path):
    records = [
        {"step": 5 * e, "epoch": e, "loss": 1.0 / e, "ce": 0.5 / e, "lr_head": 0.01, "images_per_s": 9.0,
         "test/accuracy": 0.5 + e / 10, "test/f1_a": 0.1 * e, "test/f1_b": 0.2 * e}
        for e in (1, 2, 3)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plots.loss_keys(records) == ["loss", "ce"]
    written = plots.write_curves(tmp_path, title="t")
    assert written == [tmp_path / "plots" / "loss.png", tmp_path / "plots" / "metrics.png"]
    for path in written:
        assert_png(path)
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # atomic writes leave no temporaries
