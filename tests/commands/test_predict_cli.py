"""``facerep predict`` end to end: a model fine-tuned from the command line, run on a folder of rendered
scenes (the default MTCNN detector), a photo without a face, an unreadable file and a short video; image
files of other modes (grey, 16-bit, RGBA) and a model answering NaN (strict JSON, counted)."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

import facerep.apps.predict as engine_predict
from facerep.apps.predict import NON_FINITE
from facerep.backbones import export_backbone
from facerep.backbones.vit import build_vit
from facerep.commands.cli import main
from facerep.data.detect import Detection
from facerep.data.scenes import render_scene

TINY = [
    "data.image_size=64", "data.num_workers=0", "data.options.size=64", "data.train_options.length=16",
    "data.test_options.length=2", "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=2",
    "train.batch_size=4", "train.progress=log",
]  # fmt: skip
DATASETS = {"alignment": "synthetic_alignment", "parsing": "synthetic_parsing",
            "classification": "synthetic_attributes"}  # fmt: skip


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_cli_backbone")
    return export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), root
    )


def fine_tune(tmp_path, backbone, task: str):
    out = tmp_path / task
    args = [
        "finetune",
        f"task={task}",
        f"dataset={DATASETS[task]}",
        f"backbone={backbone}",
        f"output_dir={out}",
    ]
    assert main([*args, *TINY]) == 0
    return out


def write_video(path, scenes) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for scene in scenes:
            for packet in stream.encode(av.VideoFrame.from_ndarray(scene.image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def matched(face: dict, scene) -> object | None:
    """The planted face whose box holds the detected box's centre."""
    cx, cy = (face["box"][0] + face["box"][2]) / 2, (face["box"][1] + face["box"][3]) / 2
    hits = [f for f in scene.faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
    return hits[0] if hits else None


@pytest.mark.slow
def test_predict_alignment_on_photos_a_folder_and_a_video(tmp_path, backbone, capsys):
    run = fine_tune(tmp_path, backbone, "alignment")
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    scenes = {"a.jpg": render_scene(0, 0), "more/b.png": render_scene(0, 9)}
    for name, scene in scenes.items():
        Image.fromarray(scene.image).save(photos / name)
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(photos / "more" / "empty.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    frames = [render_scene(1, k, width=320, height=240, faces=1, face_size=(100, 120)) for k in range(4)]
    write_video(photos / "clip.mp4", frames)
    out = tmp_path / "out"
    assert main(["predict", f"checkpoint={run}", f"input={photos}", f"output={out}", "frame_step=2"]) == 0
    printed = capsys.readouterr().out
    assert (
        "3 images (skipped: no_face 1, unreadable 1), 1 videos (2 frames)" in printed
        and "1 unreadable files skipped" in printed
    )
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["failures"][0]["path"].endswith("broken.jpg")
        and "not an image" in summary["failures"][0]["error"]
    )
    assert summary["skipped"] == [
        {"path": str(photos / "broken.jpg"), "reason": "unreadable"},
        {"path": str(photos / "more" / "empty.png"), "reason": "no_face"},
    ]
    assert summary["skipped_images"] == {"no_face": 1, "unreadable": 1}
    errors = []
    for name, scene in scenes.items():
        stem = name.rsplit(".", 1)[0]
        doc = json.loads((out / f"{stem}.json").read_text())
        assert doc["image"] == str(photos / name) and (doc["width"], doc["height"], doc["task"]) == (
            640, 480, "alignment")  # fmt: skip
        assert 1 <= len(doc["faces"]) <= len(scene.faces)
        for face in doc["faces"]:
            assert set(face) == {"box", "points", "score", "landmarks", "crop_box"}
            truth = matched(face, scene)
            assert truth is not None  # every detection is a planted face
            landmarks = np.asarray(face["landmarks"])
            assert landmarks.shape == (68, 2)
            unit = np.linalg.norm(truth.landmarks[36] - truth.landmarks[45])
            errors.append(np.linalg.norm(landmarks - truth.landmarks, axis=1).mean() / unit)
        overlay = Image.open((out / stem).parent / doc["overlay"])  # file names are relative to the JSON
        assert overlay.size == (640, 480)
    # a 2-epoch model on 16 faces has not learned landmarks (NME 0.54 on the 4 faces MTCNN finds), but they
    # are in photo coordinates, on the face (exactness of the mapping: tests/apps/test_predict.py)
    assert np.mean(errors) < 0.8
    empty = json.loads((out / "more" / "empty.json").read_text())
    assert empty["faces"] == [] and empty["message"] == "no face found"
    video = json.loads((out / "clip.json").read_text())
    assert [f["index"] for f in video["frames"]] == [0, 2] and video["fps"] == 5.0
    assert all(len(f["faces"]) <= 1 for f in video["frames"]) and any(f["faces"] for f in video["frames"])
    with av.open(str(out / video["overlay"])) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2


@pytest.mark.slow
def test_predict_parsing_and_classification_write_masks_and_probabilities(tmp_path, backbone):
    scene = render_scene(0, 7)
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    parse_out, classify_out = tmp_path / "parsed", tmp_path / "classified"
    for task, out in (("parsing", parse_out), ("classification", classify_out)):
        run = fine_tune(tmp_path, backbone, task)
        args = [
            "predict",
            f"checkpoint={run / 'finetune.pt'}",
            f"input={tmp_path / 'scene.png'}",
            f"output_dir={out}",
        ]
        assert main([*args, "batch_size=2", "overlays=false"]) == 0
    doc = json.loads((parse_out / "scene.json").read_text())
    assert doc["faces"] and doc["classes"][0] == "background" and "overlay" not in doc
    combined = np.asarray(Image.open(parse_out / doc["mask"]))
    assert combined.shape == (480, 640) and combined.max() < len(doc["classes"])
    for face in doc["faces"]:
        assert np.asarray(Image.open(parse_out / face["mask"])).shape == (480, 640)
    doc = json.loads((classify_out / "scene.json").read_text())
    for face in doc["faces"]:
        probs = face["probabilities"]
        assert len(probs) == 8 and all(0 <= p <= 1 for p in probs.values())  # independent attributes
        assert face["labels"] == [name for name, p in probs.items() if p >= 0.5]


def test_predict_one_line_errors(tmp_path, capsys):
    assert main(["predict", f"input={tmp_path}"]) == 2
    assert "facerep predict needs checkpoint=" in capsys.readouterr().err
    assert main(["predict", f"checkpoint={tmp_path}", f"input={tmp_path / 'nothing'}"]) == 2
    assert "finetune.pt" in capsys.readouterr().err
    assert main(["predict", f"checkpoint={tmp_path}", f"input={tmp_path}", "frame_step=0"]) == 2
    assert "frame_step, batch_size and max_frames must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def alignment_run(tmp_path_factory, backbone):
    return fine_tune(tmp_path_factory.mktemp("predict_cli_run"), backbone, "alignment")


@pytest.fixture
def planted_faces(monkeypatch):
    """The detector finds the faces of ``render_scene(2, 0)`` wherever it looks (no MTCNN)."""
    dets = [Detection(f.box, f.points, 0.9) for f in render_scene(2, 0).faces]
    monkeypatch.setattr(engine_predict, "build_detector", lambda name, **options: lambda image: dets)
    return dets


def strict_json(path):
    """``path`` read as standard JSON: NaN / Infinity fail the test."""
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path}: {name} in JSON"))


def test_grey_16_bit_and_rgba_files_are_predicted_like_their_8_bit_rgb(
    tmp_path, alignment_run, planted_faces
):
    image = render_scene(2, 0).image
    grey = image[:, :, 1]
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(image).save(photos / "rgb.png")
    Image.fromarray(np.dstack([image, np.full(grey.shape, 255, np.uint8)])).save(photos / "rgba.png")
    Image.fromarray(grey).save(photos / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(photos / "grey16.png")
    out = tmp_path / "out"
    assert (
        main(
            ["predict", f"checkpoint={alignment_run}", f"input={photos}", f"output_dir={out}", "batch_size=1"]
        )
        == 0
    )
    faces = {name: strict_json(out / f"{name}.json")["faces"] for name in ("rgb", "rgba", "grey", "grey16")}
    assert len(faces["rgb"]) == len(planted_faces) and strict_json(out / "summary.json")["failures"] == []
    assert faces["rgba"] == faces["rgb"] and faces["grey16"] == faces["grey"] != faces["rgb"]


def test_a_model_answering_nan_writes_null_with_a_reason_and_counts_it(
    tmp_path, alignment_run, planted_faces, monkeypatch, capsys
):
    image = render_scene(2, 0).image
    Image.fromarray(image).save(tmp_path / "scene.png")
    monkeypatch.setattr(
        engine_predict._TorchRunner,
        "__call__",
        lambda self, batch: np.full((len(batch), 68, 2), np.nan, np.float32),
    )
    out = tmp_path / "out"
    assert (
        main(
            ["predict", f"checkpoint={alignment_run}", f"input={tmp_path / 'scene.png'}", f"output_dir={out}"]
        )
        == 0
    )
    doc = strict_json(out / "scene.json")
    assert doc["faces"] and all(f["landmarks"] is None and f["error"] == NON_FINITE for f in doc["faces"])
    summary = strict_json(out / "summary.json")
    assert summary["non_finite_faces"] == len(doc["faces"]) and summary["non_finite"] == [
        str(tmp_path / "scene.png")
    ]
    assert (
        f"{len(doc['faces'])} faces ({len(doc['faces'])} with a non-finite model output)"
        in capsys.readouterr().out
    )
