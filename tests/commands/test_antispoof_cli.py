"""task=antispoof from the command line: fine-tune on synthetic_antispoof and evaluate; the recipes."""

import json
from pathlib import Path

import pytest
from PIL import Image

from facerep import Predictor
from facerep.commands.cli import main
from facerep.config import FinetuneConfig, load_config
from facerep.data.detect import Detection
from facerep.data.scenes import render_scene

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROWS = ("full", "frame")
COLUMNS = ("hter", "auc", "eer", "tpr_at_fpr_1", "apcer", "bpcer", "acer", "hter_at_0.5")


@pytest.mark.slow
def test_finetune_and_evaluate_antispoof_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "finetune", "task=antispoof", "dataset=synthetic_antispoof", "backbone=random",
        "backbone_arch=resnet18",
        "data.image_size=32", "data.options.size=32", "data.options.frames=2", "data.train_options.length=12",
        "data.test_options.length=8", "data.num_workers=0", "train.epochs=1", "train.batch_size=8",
        "train.progress=log", f"output_dir={out}",
    ]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"] == "hter" and results["higher_is_better"] is False
    assert set(ROWS) <= set(results["best"]) and 0.0 <= results["best"]["full"]["hter"] <= 1.0
    capsys.readouterr()

    assert (
        main(
            ["evaluate", f"checkpoint={out / 'finetune.pt'}", "overlays=2", f"output_dir={tmp_path / 'eval'}"]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["epoch", "subset", "hter", "auc"] and set(COLUMNS) <= set(
        table[0].split()
    )
    assert [line.split()[2] for line in table[1:]] == list(ROWS)  # "epoch 1  full ...": subset is column 3
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["full"]["hter"] == pytest.approx(results["last"]["full"]["hter"])
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 2

    # the run on a photo: detected faces get a liveness score, from the checkpoint and from its ONNX export
    scene = render_scene(4, 0, faces=2)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(scene.image).save(photos / "scene.png")
    detections = [Detection(f.box, f.points, 1.0) for f in scene.faces]
    result = Predictor(out, detector=lambda image: detections)(scene.image)
    assert len(result["faces"]) == 2
    for face in result["faces"]:
        probs = face["probabilities"]
        assert list(probs) == ["spoof", "live"] and face["liveness"] == probs["live"]
        assert face["label"] == max(probs, key=probs.get)
    assert main(["export", f"checkpoint={out}", "format=onnx", f"output={tmp_path / 'model.onnx'}"]) == 0
    exported = Predictor(tmp_path / "model.onnx", detector=lambda image: detections)(scene.image)
    for a, b in zip(result["faces"], exported["faces"], strict=True):
        assert a["liveness"] == pytest.approx(b["liveness"], abs=1e-3)
    assert main(["predict", f"checkpoint={out}", f"input={photos}", f"output_dir={tmp_path / 'pred'}"]) == 0
    written = json.loads((tmp_path / "pred" / "scene.json").read_text())
    assert written["task"] == "antispoof" and all("liveness" in f for f in written["faces"])


def test_synthetic_recipe_resolves():
    cfg = load_config(FinetuneConfig, CONFIGS / "finetune_antispoof_synthetic.yaml")
    assert cfg.task == "antispoof" and cfg.dataset == "synthetic_antispoof"


@pytest.mark.parametrize("protocol", ["OCI_M", "OMI_C", "OCM_I", "ICM_O"])
def test_ocim_recipes_resolve(protocol):
    cfg = load_config(FinetuneConfig, CONFIGS / f"finetune_ocim_{protocol}.yaml")
    assert cfg.task == "antispoof" and cfg.dataset == "ocim" and cfg.data.options["protocol"] == protocol
    assert cfg.data.image_size == 224 and cfg.data.test_options["frames"] == 2  # SSDG: 2 test frames a video
    assert cfg.output_dir == f"runs/finetune_ocim_{protocol}"
