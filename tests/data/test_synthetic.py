"""Tests for the procedural synthetic face generator."""

from __future__ import annotations

import numpy as np
import pytest

from facerep.data.synthetic import (
    ATTRIBUTES,
    LAPA_CLASSES,
    SyntheticFace,
    SyntheticFaceDataset,
    measure_throughput,
    render_face,
)

N_FACES = 48


@pytest.fixture(scope="module")
def faces() -> list[SyntheticFace]:
    return [render_face(7, i, 96) for i in range(N_FACES)]


def test_class_names() -> None:
    assert len(LAPA_CLASSES) == 11
    assert LAPA_CLASSES[0] == "background" and LAPA_CLASSES[4] == "left_eye" and LAPA_CLASSES[10] == "hair"
    assert 6 <= len(ATTRIBUTES) <= 8 and len(set(ATTRIBUTES)) == len(ATTRIBUTES)


def test_deterministic() -> None:
    np.random.seed(0)  # the global RNG state must not matter
    a = render_face(3, 11, 64)
    np.random.seed(1)
    np.random.random(5)
    b = render_face(3, 11, 64)
    for name in ("image", "landmarks", "mask", "attributes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = render_face(3, 12, 64)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, render_face(4, 11, 64).image)


def test_geometry_independent_of_size() -> None:
    small, large = render_face(0, 5, 64), render_face(0, 5, 128)
    np.testing.assert_allclose(small.landmarks * (127 / 63), large.landmarks, atol=0.01)
    np.testing.assert_array_equal(small.attributes, large.attributes)


@pytest.mark.parametrize("size", [64, 96, 128])
def test_shapes_and_dtypes(size: int) -> None:
    face = render_face(0, 1, size)
    assert face.image.shape == (size, size, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    assert face.mask.shape == (size, size) and face.mask.dtype == np.uint8
    assert face.attributes.shape == (len(ATTRIBUTES),) and face.attributes.dtype == np.uint8
    assert set(np.unique(face.attributes)) <= {0, 1}
    assert isinstance(face.params, dict) and "yaw" in face.params


def test_dataset() -> None:
    ds = SyntheticFaceDataset(5, size=64, seed=2)
    assert len(ds) == 5
    np.testing.assert_array_equal(ds[3].image, render_face(2, 3, 64).image)
    np.testing.assert_array_equal(ds[-1].mask, ds[4].mask)
    with pytest.raises(IndexError):
        ds[5]
    assert len(list(ds)) == 5


def test_landmarks_inside_and_mask_range(faces: list[SyntheticFace]) -> None:
    for f in faces:
        size = f.image.shape[0]
        assert np.isfinite(f.landmarks).all()
        assert f.landmarks.min() >= 0 and f.landmarks.max() <= size - 1
        assert f.mask.max() <= 10


def test_all_classes_present(faces: list[SyntheticFace]) -> None:
    present = np.array([[np.any(f.mask == c) for c in range(11)] for f in faces])
    frac = present.mean(0)
    assert frac[0] > 0.9
    for c in (1, 2, 3, 4, 5, 6):
        assert frac[c] > 0.75, (LAPA_CLASSES[c], frac[c])
    assert frac[7] > 0.6 and frac[9] > 0.6  # lips (hidden under face masks / hands sometimes)
    assert 0.15 < frac[8] < 0.8  # inner mouth only when the mouth is open
    assert frac[10] > 0.6  # hair, absent when bald
    mouth_open = np.array([f.attributes[ATTRIBUTES.index("mouth_open")] for f in faces], bool)
    occluded = np.array([f.attributes[ATTRIBUTES.index("occluded")] for f in faces], bool)
    assert not present[~mouth_open, 8].any()
    assert present[mouth_open & ~occluded, 8].all()


def test_eye_landmarks_match_mask(faces: list[SyntheticFace]) -> None:
    skip = [ATTRIBUTES.index(a) for a in ("eyes_closed", "occluded")]
    checked = matched = 0
    for f in faces:
        if f.attributes[skip].any():
            continue
        for pts, label in ((f.landmarks[36:42], 4), (f.landmarks[42:48], 5)):
            x, y = np.rint(pts.mean(0)).astype(int)
            checked += 1
            assert 1 <= f.mask[y, x] <= 9, "eye centre must be labelled as a face part"
            matched += int(f.mask[y, x] == label)
    assert checked >= 40 and matched / checked > 0.95


def test_left_right_convention(faces: list[SyntheticFace]) -> None:
    frontal = [f for f in faces if abs(f.params["yaw"]) < 15 and abs(f.params["roll"]) < 20]
    assert len(frontal) >= 5
    for f in frontal:
        lm = f.landmarks
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()
        assert lm[17:22, 0].mean() < lm[22:27, 0].mean()
        assert lm[0, 0] < lm[8, 0] < lm[16, 0] and lm[48, 0] < lm[54, 0]
        for left, right in ((4, 5), (2, 3)):
            xl, xr = np.nonzero(f.mask == left)[1], np.nonzero(f.mask == right)[1]
            if len(xl) and len(xr):
                assert xl.mean() < xr.mean()


def test_variety(faces: list[SyntheticFace]) -> None:
    sub = faces[:32]
    means = np.array([f.image.reshape(-1, 3).mean(0) for f in sub])
    assert means.std(0).min() > 8.0
    skin = np.array([f.image[f.mask == 1].mean(0) for f in sub if (f.mask == 1).any()])
    assert skin.std(0).mean() > 15.0
    assert np.std([f.params["yaw"] for f in sub]) > 8.0
    assert np.std([f.params["roll"] for f in sub]) > 4.0
    attrs = np.array([f.attributes for f in faces])
    assert attrs.any(0).sum() >= len(ATTRIBUTES) - 1  # nearly every attribute occurs
    assert not attrs.all(0).any()
    assert len({f.params["hair_style"] for f in faces}) >= 4
    boxes = np.array([np.ptp(f.landmarks, 0) for f in sub])
    assert boxes.std(0).min() > 2.0


def test_throughput_positive() -> None:
    rate = measure_throughput(num_images=3, size=64)
    assert isinstance(rate, float) and rate > 0
