"""facerep's MTCNN against the reference implementation of the same network (facenet-pytorch's MTCNN, which
ships the same weights): on real photos that ship inside installed packages and on faces pasted into real
backgrounds at many sizes and angles, the same faces, boxes within 2 px (IoU >= 0.95), probabilities
within 0.01 at full resolution; and the default ``max_side`` loses none of the faces a full-resolution
pass finds (docs/prepare.md "Face detector")."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from matplotlib import cbook
from skimage import data as skdata

from facerep.data.detect import MTCNNDetector
from facerep.data.synthetic import render_face
from faces import iou

facenet_pytorch = pytest.importorskip("facenet_pytorch")  # dev extra (installed with --no-deps: Makefile)

MIN_FACE = 20  # facenet-pytorch's default


def rgb(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3])


def paste(background: np.ndarray, size: tuple[int, int], faces: list[np.ndarray], seed: int) -> np.ndarray:
    """``faces`` pasted side by side on ``background`` resized to ``size`` (w, h), rows filled in turn."""
    out = cv2.resize(background, size, interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(seed)
    x, y, row = 20, 20, 0
    for f in faces:
        h, w = f.shape[:2]
        if x + w > size[0] - 20:
            x, y, row = 20, y + row + 30, 0
        dy = int(rng.integers(0, 20))
        out[y + dy : y + dy + h, x : x + w] = f
        x, row = x + w + int(rng.integers(25, 60)), max(row, h + dy)
    return out


def rotated(face: np.ndarray, angle: float) -> np.ndarray:
    """``face`` turned by ``angle`` degrees about its centre, corners filled by edge replication."""
    h, w = face.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def photos() -> dict[str, np.ndarray]:
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    grace = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    gray = cv2.cvtColor(grace, cv2.COLOR_RGB2GRAY)
    portrait = cv2.copyMakeBorder(
        cv2.resize(gray, (256, 300), interpolation=cv2.INTER_AREA), 362, 362, 280, 281, cv2.BORDER_REFLECT
    )
    lfw = skdata.lfw_subset()[:100]  # the first 100 are faces, 25 x 25 gray
    faces = [
        rgb(cv2.resize((lfw[i] * 255).astype(np.uint8), (s, s), interpolation=cv2.INTER_CUBIC))
        for i, s in zip(range(0, 60, 5), (200, 170, 150, 130, 110, 100, 90, 80, 70, 60, 50, 40), strict=True)
    ]
    angles = (-30, -20, -10, 0, 10, 20, 30)
    turned = [rotated(faces[k % 6], a) for k, a in enumerate(angles)]
    synthetic = [render_face(3, i, size=s).image for i, s in enumerate((160, 128, 112, 96, 80, 64))]
    astronaut = cv2.resize(skdata.astronaut(), (400, 400), interpolation=cv2.INTER_AREA)
    return {
        "astronaut": skdata.astronaut(),
        "camera (gray)": rgb(skdata.camera()),
        "grace_hopper": grace,
        "grace gray 817x1024": rgb(cv2.resize(portrait, (817, 1024), interpolation=cv2.INTER_AREA)),
        "lfw sizes on coffee 1920": paste(skdata.coffee(), (1920, 1080), faces, 0),
        "lfw turned on chelsea 1280": paste(skdata.chelsea(), (1280, 720), turned, 1),
        "group on chelsea 1920": paste(skdata.chelsea(), (1920, 1080), [astronaut, grace[::2, ::2]], 2),
        "synthetic on rocket 1280": paste(skdata.rocket(), (1280, 720), synthetic, 3),
        "camera small": rgb(cv2.resize(skdata.camera(), (300, 300), interpolation=cv2.INTER_AREA)),
    }


@pytest.fixture(scope="module")
def pictures() -> dict[str, np.ndarray]:
    return photos()


def reference(image: np.ndarray, min_face: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """facenet-pytorch's boxes [N, 4] in facerep's frame, probabilities [N] and five points [N, 5, 2]."""
    torch.set_num_threads(1)
    net = facenet_pytorch.MTCNN(keep_all=True, device="cpu", min_face_size=min_face)
    with torch.no_grad():
        boxes, probs, points = net.detect(image, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    # facenet-pytorch's boxes are 1-based inclusive pixel indices and its points sit in a frame where pixel
    # i spans [i, i + 1]; facerep: pixel centres at integers, boxes spanning pixel edges (pixels 1..k of
    # a box read -0.5..k - 0.5 here)
    boxes = np.asarray(boxes, np.float64) - np.array([1.5, 1.5, 0.5, 0.5])
    return boxes, np.asarray(probs, np.float64), np.asarray(points, np.float64) - 0.5


def test_the_photos_hold_faces_of_many_sizes(pictures: dict[str, np.ndarray]) -> None:
    found = {name: len(reference(image, MIN_FACE)[0]) for name, image in pictures.items()}
    assert found["astronaut"] == 1 and found["grace_hopper"] >= 1
    assert found["lfw sizes on coffee 1920"] >= 8 and found["lfw turned on chelsea 1280"] >= 5
    assert found["synthetic on rocket 1280"] >= 1
    assert sum(found.values()) >= 25


@pytest.mark.slow
def test_same_faces_boxes_and_probabilities_as_facenet_pytorch(pictures: dict[str, np.ndarray]) -> None:
    detector = MTCNNDetector(min_face=MIN_FACE, max_side=None)
    for name, image in pictures.items():
        ref_boxes, ref_probs, ref_points = reference(image, MIN_FACE)
        found = detector(image)
        assert len(found) == len(ref_boxes), f"{name}: {len(found)} faces, facenet-pytorch {len(ref_boxes)}"
        for box, prob, pts in zip(ref_boxes, ref_probs, ref_points, strict=True):
            best = max(found, key=lambda d: iou(d.box, box))
            assert iou(best.box, box) >= 0.95, name
            assert np.abs(best.box - box).max() <= 2.0, f"{name}: {best.box} vs {box}"
            assert abs(best.score - prob) <= 0.01, f"{name}: p {best.score:.4f} vs {prob:.4f}"
            assert np.abs(best.points - pts).max() <= 2.0, name


@pytest.mark.slow
@pytest.mark.parametrize("min_face", [20, 40, 64])
def test_default_max_side_loses_no_face_a_full_resolution_pass_finds(
    pictures: dict[str, np.ndarray], min_face: int
) -> None:
    full, default = MTCNNDetector(min_face=min_face, max_side=None), MTCNNDetector(min_face=min_face)
    assert default.max_side is not None
    for name, image in pictures.items():
        shrunk = default(image)
        for face in full(image):
            if max(face.box[2:] - face.box[:2]) >= min_face:
                assert any(iou(d.box, face.box) > 0.5 for d in shrunk), f"{name}: lost {face.box}"


def test_max_side_keeps_min_face_at_48_px() -> None:
    detector = MTCNNDetector(min_face=64, max_side=320)
    assert detector.working_scale(1080, 1920) == pytest.approx(48 / 64)  # not 320 / 1920
    assert detector.working_scale(300, 200) == 1.0  # the image already fits max_side
    assert MTCNNDetector(min_face=400, max_side=320).working_scale(1080, 1920) == pytest.approx(320 / 1920)
    assert MTCNNDetector(min_face=40, max_side=320).working_scale(4000, 3000) == 1.0  # 48 / 40 > 1
