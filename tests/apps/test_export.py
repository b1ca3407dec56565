"""facerep export: ONNX (dynamic batch, onnxruntime parity), TorchScript and safetensors, each runnable by
facerep.Predictor with the same answers as the fine-tuning checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from facerep import Predictor
from facerep.apps.export import ExportError, FixedAdaptiveAvgPool2d, export_model, onnx_ready
from facerep.backbones import export_backbone
from facerep.backbones.vit import build_vit
from facerep.commands.cli import main
from facerep.config import ConfigError, FinetuneConfig, load_config
from facerep.data.detect import Detection
from facerep.data.scenes import render_scene
from facerep.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from facerep.train.finetune import finetune
from faces import ASTRONAUT_BOX, ASTRONAUT_POINTS

DATASETS = {"alignment": "synthetic_alignment", "parsing": "synthetic_parsing",
            "classification": "synthetic_attributes"}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny fine-tuning run per task (4-block, 64-wide ViT; 8 synthetic faces, two steps)."""
    root = tmp_path_factory.mktemp("export_runs")
    backbone = export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), root / "backbone"
    )
    for task, dataset in DATASETS.items():
        finetune(load_config(FinetuneConfig, None, [
            f"task={task}", f"dataset={dataset}", f"backbone={backbone}", f"output_dir={root / task}",
            "data.image_size=64", "data.num_workers=0", "data.options.size=64", "data.train_options.length=8",
            "data.test_options.length=2", "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=1",
            "train.batch_size=4", "train.progress=log",
        ]))  # fmt: skip
    return {task: root / task for task in DATASETS}


@pytest.mark.parametrize("size", [(7, 5), (2, 2), (13, 6)])
def test_the_onnx_friendly_adaptive_pool_equals_torchs(size):
    x = torch.randn(2, 3, *size)
    for out in (1, 2, 3, 6, (3, None)):
        assert torch.allclose(FixedAdaptiveAvgPool2d(out)(x), nn.AdaptiveAvgPool2d(out)(x), atol=1e-6)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.AdaptiveAvgPool2d(3)), nn.AdaptiveAvgPool2d(1))
    ready = onnx_ready(model)
    assert isinstance(ready[1][0], FixedAdaptiveAvgPool2d) and isinstance(ready[2], nn.AdaptiveAvgPool2d)
    assert isinstance(model[1][0], nn.AdaptiveAvgPool2d)  # the original is left as it was


@pytest.mark.parametrize("task", sorted(DATASETS))
def test_onnx_export_matches_pytorch_with_a_dynamic_batch(runs, task, capsys):
    out = runs[task] / "export" / "model.onnx"
    assert main(["export", f"checkpoint={runs[task]}", "format=onnx", "batches=[1,3]"]) == 0
    line = capsys.readouterr().out
    assert "onnxruntime vs PyTorch: max abs diff" in line and "over batches 1, 3" in line
    spec = json.loads((out.parent / "model.onnx.json").read_text())
    assert spec["format"] == "onnx" and spec["task"] == task and spec["parity"]["batches"] == [1, 3]
    assert spec["parity"]["max_abs_diff"] < 1e-4
    onnx_predictor = Predictor(out)
    torch_predictor = Predictor(runs[task])
    images = torch.randn(3, 3, 64, 64)
    got, ref = onnx_predictor._model(images), torch_predictor._model(images)
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4


def test_predict_with_the_onnx_model_gives_the_checkpoints_landmarks(runs, tmp_path):
    onnx_file = tmp_path / "aligner.onnx"
    report = export_model(runs["alignment"], "onnx", onnx_file)
    assert report["path"] == str(onnx_file) and report["max_abs_diff"] < 1e-4
    scene = render_scene(11, 0, faces=3)
    dets = [Detection(f.box, f.points, 1.0) for f in scene.faces]
    from_onnx = Predictor(onnx_file, detector=lambda image: dets)(scene.image)
    from_pt = Predictor(runs["alignment"] / "finetune.pt", detector=lambda image: dets)(scene.image)
    assert len(from_onnx["faces"]) == len(scene.faces)
    for a, b in zip(from_onnx["faces"], from_pt["faces"], strict=True):
        assert np.abs(np.asarray(a["landmarks"]) - np.asarray(b["landmarks"])).max() < 0.02  # px


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors"])
def test_torchscript_and_safetensors_round_trip_through_the_predictor(runs, tmp_path, fmt):
    scene = render_scene(11, 1, width=320, height=240, faces=2, face_size=(64, 96))
    dets = [Detection(f.box, f.points, 1.0) for f in scene.faces]
    for task in ("parsing", "classification"):
        report = export_model(runs[task], fmt, tmp_path / f"{task}.{fmt}")
        assert report["max_abs_diff"] == 0.0
        exported = Predictor(tmp_path / f"{task}.{fmt}", detector=lambda image: dets)(scene.image)
        original = Predictor(runs[task], detector=lambda image: dets)(scene.image)
        if task == "parsing":
            assert np.array_equal(exported["mask"], original["mask"])
        else:
            assert exported["faces"] == original["faces"]


def test_an_export_beyond_the_tolerance_is_refused_and_not_written(runs, tmp_path, capsys):
    with pytest.raises(
        ExportError, match=r"differs from PyTorch by .* > tolerance 1e-30 .*; nothing written"
    ):
        export_model(runs["classification"], "onnx", tmp_path / "model.onnx", tolerance=1e-30)
    assert not list(tmp_path.iterdir())
    assert main(["export", f"checkpoint={runs['classification']}", "format=tflite"]) == 2
    assert "format must be one of onnx, torchscript, safetensors, got 'tflite'" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(
        CheckpointError, match=r"bad.onnx: an exported model needs its spec bad.onnx.json beside it"
    ):
        Predictor(tmp_path / "bad.onnx")
    (tmp_path / "bad.onnx.json").write_text("{}")
    assert main(["predict", f"checkpoint={tmp_path / 'bad.onnx'}", f"input={tmp_path}"]) == 2
    assert "not a facerep export spec" in capsys.readouterr().err


def test_a_wrong_shape_checkpoint_names_the_key_and_both_shapes(runs, tmp_path):
    state = load_checkpoint(runs["classification"] / "finetune.pt")
    key = "backbone.blocks.0.attn.qkv.weight"
    for weights in ("model", "ema"):
        state[weights][key] = torch.zeros(5, 5)
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"bad.pt: .*{key} file \[5, 5\] vs model \[192, 64\]"):
        export_model(tmp_path / "bad.pt", "safetensors", tmp_path / "model.safetensors")


# --- the preprocessing contract ------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["alignment", "classification"])
def test_preprocess_feeds_the_onnx_export_what_the_predictor_feeds_it(runs, task, tmp_path):
    """``facerep.preprocess`` + a bare onnxruntime session = the Predictor, on a real photo; the ONNX file
    carries the contract in its metadata."""
    import onnxruntime
    from skimage import data as skdata

    import facerep
    from facerep.apps.export import onnx_contract

    photo = skdata.astronaut()
    face = Detection(ASTRONAUT_BOX, ASTRONAUT_POINTS, 1.0)
    out = tmp_path / "model.onnx"
    export_model(runs[task], "onnx", out)
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    contract = onnx_contract(out)
    assert contract == sidecar["contract"]
    assert (
        contract["layout"] == "NCHW" and contract["channel_order"] == "RGB" and contract["scale"] == "1/255"
    )
    assert contract["image_size"] == sidecar["image_size"] == 64 and contract["input"] == "image"
    assert contract["mean"] == sidecar["mean"] and contract["std"] == sidecar["std"]
    assert contract["crop_rule"] == sidecar["crop"]["rule"] == ("box" if task == "alignment" else "canvas")
    assert contract["box_scale"] == 1.0 and contract["framing"] == sidecar["crop"]["framing"]

    x = facerep.preprocess(photo, face, out)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    predictor = Predictor(out, detector=lambda image: [face])
    (crop,) = predictor.prepare(photo, [face])
    assert torch.equal(x[0], crop.input)  # Predictor's own crop, not a copy of it
    assert torch.equal(facerep.preprocess(photo, face, runs[task]), x)  # the run dir: the same input
    assert torch.equal(facerep.preprocess(photo, face, predictor), x)

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {contract["input"]: x.numpy()})
    mine = predictor._read(crop, output[0], photo.shape[:2])
    (theirs,) = predictor(photo)["faces"]
    key = "landmarks" if task == "alignment" else "probabilities"
    if task == "alignment":
        assert np.allclose(mine[key], theirs[key], atol=1e-4)
    else:
        assert mine[key].keys() == theirs[key].keys()
        assert np.allclose(list(mine[key].values()), list(theirs[key].values()), atol=1e-5)
    torch_out = Predictor(runs[task])._model(x)
    assert np.allclose(output, torch_out, atol=1e-4)


def test_preprocess_takes_a_box_five_points_or_both(runs):
    from skimage import data as skdata

    import facerep

    photo = skdata.astronaut()
    predictor = Predictor(runs["alignment"])
    both = facerep.preprocess(photo, (ASTRONAUT_BOX, ASTRONAUT_POINTS), predictor)
    assert torch.equal(
        both, facerep.preprocess(photo, Detection(ASTRONAUT_BOX, ASTRONAUT_POINTS, 0.5), predictor)
    )
    points = facerep.preprocess(photo, ASTRONAUT_POINTS, predictor)
    assert torch.equal(points, both)  # alignment crops by the box estimated from the points
    box = facerep.preprocess(photo, ASTRONAUT_BOX.tolist(), predictor)
    assert box.shape == both.shape and not torch.equal(box, both)
    with pytest.raises(ConfigError, match="a face is a Detection, a box"):
        facerep.preprocess(photo, [1, 2, 3], predictor)


def test_predict_and_export_of_a_pretrained_backbone_say_to_fine_tune_it(runs, tmp_path, capsys):
    backbone = runs["alignment"].parent / "backbone" / "backbone.safetensors"
    run = tmp_path / "pretrain_run"  # what facerep pretrain leaves: checkpoint.pt + backbone.safetensors
    run.mkdir()
    shutil.copy(backbone, run / "backbone.safetensors")
    shutil.copy(backbone.with_suffix(".json"), run / "backbone.json")
    save_checkpoint({"method": "mcf", "arch": {}, "step": 1, "model": {}}, run / "checkpoint.pt")
    copied = run / "backbone.safetensors"
    for checkpoint, named in [(run, copied), (run / "checkpoint.pt", copied), (backbone, backbone)]:
        assert main(["predict", f"checkpoint={checkpoint}", f"input={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"facerep: error: checkpoint={checkpoint} is a pre-trained backbone without a task head; "
            f"fine-tune it first: facerep finetune backbone={named} task=alignment|parsing|classification "
            "dataset=NAME output_dir=RUN_DIR, then facerep predict checkpoint=RUN_DIR\n"
        )
    assert main(["export", f"checkpoint={run}"]) == 2
    assert "then facerep export checkpoint=RUN_DIR" in capsys.readouterr().err
