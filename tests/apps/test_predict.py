"""facerep.Predictor: faces cropped as each task was trained and predictions mapped back to the photo.

The mapping is checked with oracle models (they answer the truth in crop coordinates, so whatever comes
back in photo coordinates must be the truth again) on synthetic scenes with known landmarks and masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facerep import Predictor
from facerep.apps.predict import (
    MEAN_SHAPE_68,
    NON_FINITE,
    SYNTHETIC_FIVE_POINTS,
    draw_result,
    estimate_box,
    mean_shape_landmarks,
)
from facerep.backbones import export_backbone
from facerep.backbones.vit import build_vit
from facerep.config import ConfigError, FinetuneConfig, load_config
from facerep.data.detect import Detection
from facerep.data.downstream.transforms import (
    FIVE_POINT_TEMPLATE,
    five_points,
    points_to_crop,
    sampling_grid,
    similarity,
    warp_mask,
)
from facerep.data.scenes import render_scene
from facerep.data.synthetic import ATTRIBUTES, LAPA_CLASSES, render_face
from facerep.data.transforms import BadImage
from facerep.train.finetune import finetune

DATASETS = {"alignment": "synthetic_alignment", "parsing": "synthetic_parsing",
            "classification": "synthetic_attributes"}  # fmt: skip


def tiny_run(root, backbone, task: str, *extra: str):
    """A fine-tuning run of a 4-block, 64-wide ViT on 8 synthetic faces (one epoch, two steps)."""
    cfg = load_config(FinetuneConfig, None, [
        f"task={task}", f"dataset={DATASETS[task]}", f"backbone={backbone}", f"output_dir={root / task}",
        "data.image_size=64", "data.num_workers=0", "data.options.size=64", "data.train_options.length=8",
        "data.test_options.length=2", "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=1",
        "train.batch_size=4", "train.progress=log", *extra,
    ])  # fmt: skip
    finetune(cfg)
    return root / task


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_runs")
    backbone = export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), root / "backbone"
    )
    return {
        "alignment": tiny_run(root, backbone, "alignment"),
        # a 128 px tanh-warped crop (FaRL's LaPa recipe) fed to the backbone at 64
        "parsing": tiny_run(root, backbone, "parsing", "data.image_size=128", "data.backbone_size=64"),
        "classification": tiny_run(root, backbone, "classification"),
        # CelebAMask-HQ's protocol: the whole (here: canvas-framed) image, no warp
        "parsing_image": tiny_run(
            root / "image",
            backbone,
            "parsing",
            "data.image_size=128",
            "data.backbone_size=64",
            "augment.align=image",
            "augment.warp=affine",
        ),
    }


def truth_detections(scene) -> list[Detection]:
    return [Detection(f.box, f.points, 1.0 - 0.1 * i) for i, f in enumerate(scene.faces)]


def nme(pred: np.ndarray, face) -> float:
    """Mean point error over the outer-eye-corner distance (synthetic_alignment's unit)."""
    unit = np.linalg.norm(face.landmarks[36] - face.landmarks[45])
    return float(np.linalg.norm(pred - face.landmarks, axis=1).mean() / unit)


def test_constants_are_the_synthetic_generators():
    shapes, fives = [], []
    for i in range(2000):
        landmarks = render_face(1000, i, 32).landmarks.astype(np.float64)
        pts = five_points(landmarks)
        m = similarity(pts, FIVE_POINT_TEMPLATE)
        shapes.append(landmarks @ m[:2, :2].T + m[:2, 2])
        fives.append((pts + 0.5) / 32)
    assert np.abs(np.mean(shapes, 0) - MEAN_SHAPE_68).max() < 1e-3  # rounded to 3 decimals; size-free
    assert np.abs(np.mean(fives, 0) - SYNTHETIC_FIVE_POINTS).max() < 4e-3  # measured at 128 px


def test_the_box_estimated_from_five_points_is_near_the_landmarks_box():
    ious, errors = [], []
    for i in range(10):
        for face in render_scene(3, i).faces:
            est, box = estimate_box(face.points), face.box
            inter = np.prod(np.clip(np.minimum(est[2:], box[2:]) - np.maximum(est[:2], box[:2]), 0, None))
            ious.append(inter / (np.prod(est[2:] - est[:2]) + np.prod(box[2:] - box[:2]) - inter))
            errors.append(nme(mean_shape_landmarks(face.points), face))
    assert min(ious) > 0.5 and np.mean(ious) > 0.7  # yawed faces shift their landmarks' box
    assert np.mean(errors) < 0.1  # the trivial mean-shape baseline on the true five points
    est = estimate_box(face.points)
    assert np.allclose(
        estimate_box(face.points, 2.0), [*(1.5 * est[:2] - 0.5 * est[2:]), *(1.5 * est[2:] - 0.5 * est[:2])]
    )


@pytest.mark.parametrize(
    "face_size", [(96, 192), (40, 60)]
)  # crops that shrink the photo (box filter) or not
def test_oracle_landmarks_come_back_to_the_photo_exactly(runs, face_size):
    scene = render_scene(7, 1, faces=3, face_size=face_size)
    dets = truth_detections(scene)
    predictor = Predictor(runs["alignment"], detector=lambda image: dets, batch_size=2)
    prepared = predictor.prepare(scene.image, dets)
    answers = []
    for face, truth in zip(prepared, scene.faces, strict=True):  # the truth in the crop's [0, 1] frame
        on_fed = truth.landmarks.astype(np.float64) @ face.to_fed[:2, :2].T + face.to_fed[:2, 2]
        to_crop = np.linalg.inv(np.vstack([face.back.numpy().astype(np.float64), [0, 0, 1]]))[:2]
        answers.append(
            points_to_crop(torch.from_numpy(on_fed), torch.from_numpy(to_crop), predictor.size).numpy()
        )
    queue = list(answers)
    predictor._model = lambda batch: np.stack([queue.pop(0) for _ in range(len(batch))])  # the oracle
    result = predictor(scene.image)
    assert result["task"] == "alignment" and (result["width"], result["height"]) == (640, 480)
    assert len(result["faces"]) == len(scene.faces) >= 2
    for face, truth in zip(result["faces"], scene.faces, strict=True):
        landmarks = np.asarray(face["landmarks"])
        assert landmarks.shape == (68, 2)
        assert np.abs(landmarks - truth.landmarks).max() < 0.01  # rounding to 1/100 px only
        assert nme(landmarks, truth) < 1e-3
        assert face["score"] <= 1.0 and len(face["box"]) == 4 and len(face["points"]) == 5


@pytest.mark.parametrize(
    ("run", "rule", "warp"), [("parsing", "five_point", "tanh"), ("parsing_image", "canvas", "affine")]
)
def test_oracle_parsing_masks_come_back_to_the_photo(runs, run, rule, warp):
    scene = render_scene(7, 2, faces=3, face_size=(96, 160))
    dets = truth_detections(scene)
    predictor = Predictor(runs[run], detector=lambda image: dets)
    assert predictor.rule == rule and predictor.spec["augment"]["warp"] == warp
    prepared = predictor.prepare(scene.image, dets)
    answers, agreement = [], []
    truth = torch.from_numpy(scene.mask.astype(np.int64))
    for face in prepared:  # the scene's labels as the model would see them in this face's crop, one-hot
        photo_to_crop = np.vstack([face.back.numpy().astype(np.float64), [0, 0, 1]]) @ face.to_fed
        grid = sampling_grid(photo_to_crop, scene.mask.shape, predictor.size, face.warp_factor)
        crop = warp_mask(truth, grid)
        answers.append(
            torch.nn.functional.one_hot(crop, len(LAPA_CLASSES)).permute(2, 0, 1).float().numpy() * 10
        )
    queue = list(answers)
    predictor._model = lambda batch: np.stack([queue.pop(0) for _ in range(len(batch))])
    result = predictor(scene.image)
    combined = result["mask"]
    assert combined.shape == scene.mask.shape and combined.dtype == np.uint8
    for face, planted in zip(result["faces"], scene.faces, strict=True):
        assert face["mask"].shape == scene.mask.shape
        x1, y1, x2, y2 = (round(float(v)) for v in planted.box)
        region = (slice(max(y1, 0), y2), slice(max(x1, 0), x2))
        agreement.append((face["mask"][region] == scene.mask[region]).mean())
    faces = scene.mask > 0
    agreement += [(combined[faces] == scene.mask[faces]).mean(), (combined[~faces] == 0).mean()]
    assert min(agreement) > 0.99  # measured 0.996-1.0 (nearest resampling into the crop and back)


@pytest.mark.parametrize("run", ["parsing", "parsing_image"])
def test_parsing_warps_faces_at_image_size_and_feeds_the_backbone_backbone_size(runs, run):
    """FaRL's parsing framing (augmenters/{lapa,celebm}/test.yaml, FaRLVisualFeatures.forward): each face is
    warped at data.image_size (FaRL 512; 128 here), the model resizes it to data.backbone_size (448; 64 here)
    for the ViT and returns logits at image_size, which go back to the photo."""
    scene = render_scene(7, 2, faces=2, face_size=(96, 160))
    dets = truth_detections(scene)
    predictor = Predictor(runs[run], detector=lambda image: dets)
    faces = predictor.prepare(scene.image, dets)
    assert predictor.size == 128 and all(tuple(face.input.shape) == (3, 128, 128) for face in faces)
    seen = []
    backbone = predictor._model.module.model.dense.backbone
    backbone.patch_embed.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    outputs = predictor._run(faces)
    assert seen == [(64, 64)] and all(out.shape == (len(LAPA_CLASSES), 128, 128) for out in outputs)


def test_classification_and_parsing_run_on_the_tiny_models(runs):
    scene = render_scene(5, 0, faces=2)
    dets = truth_detections(scene)
    classify = Predictor(runs["classification"], detector=lambda image: dets)
    assert (
        classify.rule == "canvas" and classify.framing.kind == "points" and classify.framing.size == [64, 64]
    )
    result = classify(scene.image)
    for face in result["faces"]:
        probs = face["probabilities"]
        assert list(probs) == list(ATTRIBUTES) and all(0.0 <= p <= 1.0 for p in probs.values())
        assert face["labels"] == [n for n, p in probs.items() if p >= 0.5]
    parse = Predictor(runs["parsing"], detector=lambda image: dets)
    parsed = parse.predict([scene.image, scene.image])
    assert len(parsed) == 2 and parsed[0]["mask"].shape == (480, 640)
    assert np.array_equal(parsed[0]["mask"], parsed[1]["mask"])
    image = draw_result(scene.image, parsed[0], parse.spec)
    assert image.size[0] > 640 and image.size[1] == 480  # the legend on the right


def test_faces_batch_across_images_with_the_same_answers(runs):
    scenes = [render_scene(9, i, faces=(1, 3)) for i in range(3)]
    dets = [truth_detections(s) for s in scenes]
    one = Predictor(runs["alignment"], batch_size=1)
    many = Predictor(runs["alignment"], batch_size=16)
    calls = []
    model = many._model
    many._model = lambda batch: calls.append(len(batch)) or model(batch)
    a = one.predict([s.image for s in scenes], dets)
    b = many.predict([s.image for s in scenes], dets)
    assert calls == [sum(len(d) for d in dets)]  # one model call for the faces of all three photos
    for ra, rb in zip(a, b, strict=True):
        for fa, fb in zip(ra["faces"], rb["faces"], strict=True):
            assert np.allclose(fa["landmarks"], fb["landmarks"], atol=0.02)


def test_no_face_detections_without_points_and_bad_arguments(runs):
    image = np.full((60, 80, 3), 127, np.uint8)
    predictor = Predictor(runs["alignment"], detector=lambda im: [])
    assert predictor(image) == {"width": 80, "height": 60, "task": "alignment", "faces": [],
                                "message": "no face found", "reason": "no_face"}  # fmt: skip
    scene = render_scene(2, 0, faces=1)
    unsure = [Detection(scene.faces[0].box, None, 0.83), Detection(scene.faces[0].box, None, 0.615)]
    strict = Predictor(runs["alignment"], detector=lambda im: unsure, min_score=0.9)
    result = strict(scene.image)
    assert result["faces"] == [] and (result["reason"], result["score"]) == ("low_score", 0.83)
    assert (
        len(Predictor(runs["alignment"], detector=lambda im: unsure, min_score=0.8)(scene.image)["faces"])
        == 1
    )
    with pytest.raises(ConfigError, match="min_score must lie in"):
        Predictor(runs["alignment"], min_score=2)
    box_only = [Detection(scene.faces[0].box, None, 0.9)]  # e.g. a Haar cascade: the box is cropped as given
    face = predictor(scene.image, box_only)["faces"][0]
    assert face["points"] is None and np.allclose(face["crop_box"], scene.faces[0].box, atol=0.01)
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        Predictor(runs["alignment"], batch_size=0)
    with pytest.raises(ConfigError, match="unknown framing option"):
        Predictor(runs["classification"], framing={"zoom": 2})
    with pytest.raises(ConfigError, match="no such file"):
        Predictor(runs["alignment"] / "missing.pt")


def test_the_names_saved_in_the_checkpoint_label_the_outputs(runs, tmp_path):
    """A run stores what its outputs mean, so a dataset that is gone (a generic set) still names them."""
    state = torch.load(runs["classification"] / "finetune.pt", weights_only=False)
    assert state["outputs"]["attribute_names"] == list(ATTRIBUTES)
    names = [f"trait_{i}" for i in range(len(ATTRIBUTES))]
    state["outputs"]["attribute_names"] = names
    torch.save(state, tmp_path / "finetune.pt")
    scene = render_scene(5, 0, faces=1)
    result = Predictor(tmp_path / "finetune.pt", detector=lambda image: truth_detections(scene))(scene.image)
    assert list(result["faces"][0]["probabilities"]) == names


def _same_faces(a: dict, b: dict) -> bool:
    """The same landmarks, up to rounding and batching (faces of several images run in one batch)."""
    return len(a["faces"]) == len(b["faces"]) and all(
        np.allclose(fa["landmarks"], fb["landmarks"], atol=0.02)
        for fa, fb in zip(a["faces"], b["faces"], strict=True)
    )


def test_image_arrays_of_every_kind_become_rgb8_by_the_documented_rules(runs):
    scene = render_scene(2, 0, faces=1)
    dets = truth_detections(scene)
    predictor = Predictor(runs["alignment"], detector=lambda image: dets)
    rgb, grey = scene.image, scene.image[:, :, 1]
    reference, grey_reference = predictor(rgb), predictor(np.repeat(grey[:, :, None], 3, axis=2))
    opaque = np.full(grey.shape, 255, np.uint8)
    assert _same_faces(predictor(grey), grey_reference)  # [H, W]
    assert _same_faces(predictor(grey[:, :, None]), grey_reference)  # [H, W, 1]
    assert _same_faces(predictor(np.dstack([rgb, 0 * opaque])), reference)  # RGBA: alpha dropped
    assert _same_faces(predictor(rgb.astype(np.uint16) * 257), reference)  # 16-bit: v / 257
    for dtype in (np.float32, np.float64):  # float in [0, 1]: v * 255
        assert _same_faces(predictor((rgb / 255.0).astype(dtype)), reference)
    one = predictor(rgb[:1, :1], [])  # 1 pixel: a result (no face)
    assert (one["width"], one["height"], one["faces"]) == (1, 1, [])
    assert predictor(rgb[:1, :1], dets)["faces"][0]["landmarks"] is not None  # a face outside: still mapped


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (
            np.zeros((0, 0, 3), np.uint8),
            r"image 0: empty image \(width 0, height 0\)",
        ),  # was ZeroDivisionError
        (np.zeros((5, 0), np.uint8), r"empty image \(width 0, height 5\)"),
        (np.zeros((4, 4, 2), np.uint8), r"expected an image \[H, W\] or \[H, W, 1 \| 3 \| 4\], got shape"),
        (np.zeros(7, np.uint8), r"got shape \(7,\)"),
        (np.zeros((4, 4, 3), np.int64), "pixel type int64 is not uint8, uint16 or float in"),
        (np.full((4, 4, 3), 200.0), r"float image must hold values in \[0, 1\], got \[200, 200\]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN or infinite pixels"),
    ],
)
def test_images_that_cannot_be_read_as_rgb_are_one_line_errors(runs, image, reason):
    predictor = Predictor(runs["alignment"])  # the default detector: it never sees these images
    with pytest.raises(BadImage, match=reason):
        predictor(image)


def test_grey_16_bit_and_transparent_image_files_are_predicted(runs, tmp_path):
    scene = render_scene(2, 0, faces=1)
    dets = truth_detections(scene)
    predictor = Predictor(runs["alignment"], detector=lambda image: dets)
    grey = scene.image[:, :, 1]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # I;16
    Image.fromarray(np.dstack([scene.image, np.full(grey.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    grey8, grey16, rgba = predictor.predict(
        [tmp_path / "grey.png", tmp_path / "grey16.png", tmp_path / "rgba.png"]
    )
    assert _same_faces(grey16, grey8) and _same_faces(grey8, predictor(grey))
    assert _same_faces(rgba, predictor(scene.image))


@pytest.mark.parametrize("task", ["alignment", "parsing", "classification"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_model_output_gives_null_predictions_and_a_reason(runs, task, bad):
    scene = render_scene(2, 0, faces=2)
    dets = truth_detections(scene)
    predictor = Predictor(runs[task], detector=lambda image: dets)
    model = predictor._model

    def broken_second_face(batch):
        out = model(batch)
        out[1] = bad
        return out

    predictor._model = broken_second_face
    result = predictor(scene.image)
    good, broken = result["faces"]
    assert "error" not in good and broken["error"] == NON_FINITE
    keys = {"alignment": ["landmarks"], "parsing": ["mask"], "classification": ["probabilities", "labels"]}
    for key in keys[task]:
        assert good[key] is not None and broken[key] is None
    if task == "parsing":  # the combined map holds the good face only
        assert np.array_equal(result["mask"], good["mask"])
    draw_result(scene.image, result, predictor.spec)  # the overlay says so instead of failing
