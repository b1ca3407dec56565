"""Face detection: MTCNN on a real photo and on synthetic scenes, exact rescaling, the alternatives, the
registry's errors, Detection JSON and LAION-Face's released detection files."""

from __future__ import annotations

import datetime
import json
import pickle
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

import facerep.data.detect as detect
from facerep.config import ConfigError
from facerep.data.detect import DETECTORS, Detection, build_detector, load_laion_face_detections
from facerep.data.scenes import render_scene
from facerep.runtime.errors import FacerepError
from faces import ASTRONAUT_BOX, ASTRONAUT_POINTS, iou


def nme(points: np.ndarray, truth: np.ndarray) -> float:
    """Mean five-point error over the truth's eye-centre distance."""
    return float(np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[1] - truth[0]))


@pytest.fixture(scope="module")
def mtcnn() -> detect.FaceDetector:
    return build_detector()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


def test_mtcnn_finds_the_astronaut(mtcnn: detect.FaceDetector, astronaut: np.ndarray) -> None:
    dets = mtcnn(astronaut)
    assert isinstance(mtcnn, detect.FaceDetector) and mtcnn.name == "mtcnn"
    assert len(dets) == 1  # one face, nothing else in the photo
    d = dets[0]
    assert d.box.dtype == np.float32 and d.box.shape == (4,) and d.points.shape == (5, 2)
    assert 0.7 < d.score <= 1.0
    assert iou(d.box, ASTRONAUT_BOX) > 0.55  # MTCNN's box takes in the forehead and stops above the chin
    assert nme(d.points, ASTRONAUT_POINTS) < 0.06  # about 2 px at a 42 px eye distance


def test_mtcnn_finds_synthetic_scene_faces(mtcnn: detect.FaceDetector) -> None:
    """Scene 0 of set 0 (three faces, 640 x 480): every face found once, points near the truth."""
    scene = render_scene(0, 0, faces=(2, 3))
    dets = mtcnn(scene.image)
    assert len(scene.faces) == 3 and len(dets) == 3
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for face in scene.faces:
        best = max(dets, key=lambda d: iou(d.box, face.box))
        assert iou(best.box, face.box) > 0.5
        assert nme(best.points, face.points) < 0.15


class _WholeImage(detect._ScaledDetector):
    """A stand-in detector that 'finds' its whole working image, with points on its corner pixels."""

    name = "whole"
    shrink_floor = 1.0  # shrink to max_side whatever min_face says

    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        self.seen = (w, h, min_face)
        box = np.array([[-0.5, -0.5, w - 0.5, h - 0.5]])
        corners = np.array([[[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]]])
        return box, corners, np.array([1.0])


def test_max_side_maps_boxes_and_points_back_exactly() -> None:
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    det = _WholeImage(min_face=40, max_side=100)
    (d,) = det(image)
    assert det.seen == (100, 75, 12.0)  # 4x smaller; a 40 px face is 10 px there, below MTCNN's 12 px floor
    np.testing.assert_allclose(d.box, [-0.5, -0.5, 399.5, 299.5], atol=1e-4)  # the whole image, pixel edges
    # the first small pixel covers original pixels 0..3, so its centre is at 1.5; the last one's at 397.5
    np.testing.assert_allclose(
        d.points, [[1.5, 1.5], [397.5, 1.5], [1.5, 297.5], [397.5, 297.5], [199.5, 149.5]], atol=1e-4
    )
    (same,) = _WholeImage(min_face=40, max_side=None)(image)
    np.testing.assert_array_equal(same.box, d.box)


def test_mtcnn_agrees_with_itself_across_scales(astronaut: np.ndarray) -> None:
    """The astronaut blown up 2x by pixel replication and shrunk back by max_side=512 (area averaging gives
    the original pixels again): the detections are the original's mapped to the 2x image."""
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_NEAREST)
    (small,) = build_detector("mtcnn", max_side=None, min_face=48)(astronaut)
    (scaled,) = build_detector("mtcnn", max_side=512, min_face=96)(big)  # 48 px at the working scale
    np.testing.assert_allclose(scaled.box, (small.box + 0.5) * 2 - 0.5, atol=1e-3)
    np.testing.assert_allclose(scaled.points, (small.points + 0.5) * 2 - 0.5, atol=1e-3)
    assert scaled.score == small.score


def test_mtcnn_pickles_for_worker_processes(mtcnn: detect.FaceDetector, astronaut: np.ndarray) -> None:
    again = pickle.loads(pickle.dumps(mtcnn))
    assert again(astronaut) == mtcnn(astronaut)


def test_haar_has_no_points(astronaut: np.ndarray) -> None:
    dets = build_detector("haar")(astronaut)
    assert dets and dets[0].points is None
    assert iou(dets[0].box, ASTRONAUT_BOX) > 0.4


def test_dlib_hog_or_its_install_hint(astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    if detect.dlib is not None:
        dets = build_detector("dlib_hog")(astronaut)
        assert dets and dets[0].points is None and iou(dets[0].box, ASTRONAUT_BOX) > 0.5
    monkeypatch.setattr(detect, "dlib", None)
    with pytest.raises(ConfigError, match=r"^face detector 'dlib_hog' needs dlib: pip install dlib-bin$"):
        build_detector("dlib_hog")


def test_unknown_names_options_and_images_are_one_line_errors() -> None:
    assert {"mtcnn", "haar", "dlib_hog"} <= set(DETECTORS)
    with pytest.raises(ConfigError) as e:
        build_detector("yolo")
    assert str(e.value).startswith("unknown face detector 'yolo'; available: mtcnn, haar, dlib_hog")
    with pytest.raises(ConfigError, match="has no option max_size; its options: min_face, max_side"):
        build_detector("mtcnn", max_size=320)
    with pytest.raises(ConfigError, match="max_side must be >= 32"):
        build_detector("mtcnn", max_side=8)
    with pytest.raises(FacerepError, match=r"\[H, W, 3\] uint8 RGB image, got \(4, 4\) uint8"):
        build_detector("haar")(np.zeros((4, 4), dtype=np.uint8))


def test_a_detector_plugs_in_by_name(monkeypatch: pytest.MonkeyPatch, astronaut: np.ndarray) -> None:
    class Centre:
        name = "centre"

        def __init__(self, size: float = 10.0) -> None:
            self.size = size

        def __call__(self, image: np.ndarray) -> list[Detection]:
            cx, cy = image.shape[1] / 2, image.shape[0] / 2
            return [Detection([cx - self.size, cy - self.size, cx + self.size, cy + self.size], None, 1.0)]

    monkeypatch.setitem(DETECTORS._entries, "centre", Centre)  # as DETECTORS.add("centre", Centre), undone
    det = build_detector("centre", size=4)
    assert isinstance(det, detect.FaceDetector)
    assert det(astronaut)[0].box.tolist() == [252, 252, 260, 260]


def test_detection_json_round_trip() -> None:
    with_points = Detection(
        np.array([1.25, 2.5, 30.1, 40.7]), np.arange(10).reshape(5, 2) / 3, np.float32(0.9)
    )
    without = Detection([0, 0, 10, 10], None, 0.5)
    for d in (with_points, without):
        back = Detection.from_json(json.loads(json.dumps(d.to_json())))
        assert back == d and back.box.dtype == np.float32
    assert without.to_json() == {"box": [0.0, 0.0, 10.0, 10.0], "points": None, "score": 0.5}
    assert with_points.box.flags.writeable is False
    with pytest.raises(FacerepError, match="box, points, score"):
        Detection.from_json({"box": [0, 0, 1, 1]})
    with pytest.raises(FacerepError, match=r"shape \[5, 2\]"):
        Detection([0, 0, 1, 1], np.zeros((4, 2)), 1.0)


def _laion_faces(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray, np.float32]]:
    """``n`` faces as batch-face's RetinaFace gives them: float box [4], landmarks [5, 2], score."""
    faces = []
    for _ in range(n):
        x, y = rng.uniform(0, 400, 2)
        box = np.array([x, y, x + 80, y + 100], dtype=np.float32)
        faces.append(
            (box, rng.uniform(x, x + 80, (5, 2)).astype(np.float32), np.float32(rng.uniform(0.5, 1)))
        )
    return sorted(faces, key=lambda f: -f[2])


def test_laion_face_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    original = {123456789: _laion_faces(rng, 2), 42: _laion_faces(rng, 1), 7: []}
    original[8] = [(torch.tensor([1.0, 2, 3, 4]), [[1, 2]] * 5, 0.75)]  # tensors and lists are read too
    path = tmp_path / "sample2detect_0.pth"
    torch.save(original, path)
    got = load_laion_face_detections(path)
    assert sorted(got) == [7, 8, 42, 123456789] and got[7] == []
    for key in (42, 123456789):
        assert len(got[key]) == len(original[key])
        for det, (box, points, score) in zip(got[key], original[key], strict=True):
            np.testing.assert_array_equal(det.box, box)
            np.testing.assert_array_equal(det.points, points)
            assert det.score == float(score)
    assert got[8] == [Detection([1, 2, 3, 4], [[1, 2]] * 5, 0.75)]


def test_laion_face_file_pickled_under_numpy_1_loads(tmp_path: Path) -> None:
    """The released files predate numpy 2, whose arrays pickle as numpy._core.multiarray; a file naming
    numpy.core.multiarray (as numpy 1 wrote it) loads too, still weights-only."""
    rng = np.random.default_rng(1)
    original = {5: _laion_faces(rng, 2)}
    torch.save(original, tmp_path / "new.pth")
    with zipfile.ZipFile(tmp_path / "new.pth") as src, zipfile.ZipFile(tmp_path / "old.pth", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):  # protocol-2 GLOBAL opcodes are plain text lines
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(name, data)
    got = load_laion_face_detections(tmp_path / "old.pth")
    assert got == {5: [Detection(*face) for face in original[5]]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "holds a list; expected LAION-Face's"),
        ({"a": []}, "key 'a' is not an int SAMPLE_ID"),
        ({1: "faces"}, "sample 1 holds a str"),
        ({1: [(np.zeros(4), np.zeros(5))]}, "sample 1 face 0 is not (box, landmarks, score)"),
        ({1: [(np.zeros(4), np.zeros((4, 2)), 0.9)]}, "sample 1 face 0: five points have shape [5, 2]"),
        ({1: [(np.zeros(4), np.zeros((5, 2)), datetime.date(2022, 1, 1))]}, "datetime.date"),
        (b"not a torch file", "unreadable as a torch.save file"),
    ],
)
def test_malformed_laion_face_file_is_a_one_line_error(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "sample2detect_3.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(FacerepError) as e:
        load_laion_face_detections(path)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text
    with pytest.raises(FacerepError, match="no such LAION-Face detections file"):
        load_laion_face_detections(tmp_path / "missing.pth")


@pytest.mark.parametrize("name", ["mtcnn", "haar"])
def test_an_empty_image_is_a_one_line_error(name: str) -> None:
    with pytest.raises(FacerepError, match=r"at least 1 x 1 pixels, got 0 x 5"):
        build_detector(name)(np.zeros((5, 0, 3), np.uint8))


def test_detector_weights_key_joins_the_detector_options() -> None:
    assert detect.with_weights({"min_face": 20}, None) == {"min_face": 20}
    assert detect.with_weights({"min_face": 20}, "r50.pth") == {"min_face": 20, "weights": "r50.pth"}
    assert detect.with_weights({"weights": "r50.pth"}, "r50.pth") == {"weights": "r50.pth"}
    with pytest.raises(ConfigError, match="both given"):
        detect.with_weights({"weights": "a.pth"}, "b.pth")
