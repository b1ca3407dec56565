"""The path a newcomer takes, end to end through ``facerep`` (``facerep.commands.cli.main``) with the default
settings but for sizes and steps: a folder of 30 photos -> ``prepare`` (the built-in MTCNN; one shard) ->
``pretrain`` (the CPU MCF recipe on those crops, with its default 2 loader workers) -> ``predict`` on that
run (a one-line pointer to ``finetune``) -> ``finetune`` (a tiny synthetic set) from the backbone ->
``predict`` on a photo with its overlay -> ``export format=onnx`` -> the ONNX run by onnxruntime alone on
:func:`facerep.preprocess`'s input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import facerep
from facerep.commands.cli import main
from facerep.data.scenes import render_scene

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PHOTOS = 30


def write_photos(folder: Path) -> None:
    """30 photos with real and rendered faces: the astronaut (scikit-image) and its mirror image at three
    scales, and synthetic scenes of one or two faces of 96 to 128 px."""
    folder.mkdir()
    astronaut = Image.fromarray(skdata.astronaut())
    for i, side in enumerate((256, 320, 384)):
        photo = astronaut.resize((side, side), Image.Resampling.BILINEAR)
        photo.save(folder / f"astronaut_{i}.jpg", quality=92)
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"mirrored_{i}.png")
    for i in range(PHOTOS - 6):
        scene = render_scene(3, i, width=320, height=240, faces=(1, 2), face_size=(96, 128))
        Image.fromarray(scene.image).save(folder / f"scene_{i:02d}.jpg", quality=92)


def run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


@pytest.mark.slow
def test_photos_to_crops_to_backbone_to_a_model_on_photos_and_onnx(tmp_path, capsys):
    import onnxruntime

    from facerep.apps.export import onnx_contract

    photos, crops, backbone_run, ft_run = (tmp_path / n for n in ("photos", "crops", "mcf", "ft"))
    write_photos(photos)
    assert len(list(photos.iterdir())) == PHOTOS

    run("prepare", f"input={photos}", f"output_dir={crops}", "crop.size=96")
    summary = json.loads((crops / "summary.json").read_text())
    assert summary["crops"] >= 20, summary
    assert [p.name for p in crops.glob("crops-*.tar")] == ["crops-00000.tar"]  # under 1,000 photos: one shard
    capsys.readouterr()

    run("pretrain", "-c", str(CONFIGS / "mcf_cpu_tiny.yaml"), f"output_dir={backbone_run}",
        "data.source=webdataset", f"data.path={crops / 'crops-00000.tar'}", "train.batch_size=8",
        "train.max_steps=2", "teacher.stage_steps=2", "train.warmup_steps=1",
        "train.progress=log")  # fmt: skip
    out = capsys.readouterr().out
    assert "1 loader worker(s) per rank instead of data.num_workers=2" in out  # one shard, said once
    assert out.count("data.num_workers=2") == 2  # (once per stage: the teacher's MAE, then MCF)
    backbone = backbone_run / "backbone.safetensors"
    assert backbone.is_file()

    assert main(["predict", f"checkpoint={backbone_run}", f"input={photos}"]) == 2  # not fine-tuned yet
    err = capsys.readouterr().err
    assert err.startswith(f"facerep: error: checkpoint={backbone_run} is a pre-trained backbone without")
    assert f"facerep finetune backbone={backbone} task=" in err and err.count("\n") == 1

    run("finetune", "task=alignment", "dataset=synthetic_alignment", f"backbone={backbone}",
        f"output_dir={ft_run}", "data.image_size=96", "data.options.size=96", "data.train_options.length=8",
        "data.test_options.length=4", "train.epochs=1", "train.batch_size=4", "head.channels=16",
        "train.progress=log")  # fmt: skip
    assert (ft_run / "finetune.pt").is_file()

    photo = photos / "astronaut_1.jpg"
    run("predict", f"checkpoint={ft_run}", f"input={photo}", f"output_dir={tmp_path / 'predict'}")
    result = json.loads((tmp_path / "predict" / "astronaut_1.json").read_text())
    assert result["task"] == "alignment" and len(result["faces"]) >= 1
    assert (tmp_path / "predict" / result["overlay"]).is_file()

    run("export", f"checkpoint={ft_run}", "format=onnx")
    model = ft_run / "export" / "model.onnx"
    contract = onnx_contract(model)
    assert (
        contract["channel_order"] == "RGB" and contract["layout"] == "NCHW" and contract["image_size"] == 96
    )
    face = result["faces"][0]
    x = facerep.preprocess(photo, (face["box"], face["points"]), model)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (landmarks,) = session.run(None, {contract["input"]: x.numpy()})
    assert landmarks.shape[0] == 1 and landmarks.shape[2] == 2 and np.isfinite(landmarks).all()
    again = facerep.Predictor(model)(photo, detections=[_detection(face)])
    assert np.allclose(again["faces"][0]["landmarks"], face["landmarks"], atol=0.1)  # ONNX = the run


def _detection(face: dict):
    from facerep.data.detect import Detection

    return Detection(np.asarray(face["box"]), np.asarray(face["points"]), face["score"])
