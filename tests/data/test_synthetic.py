"""Tests for the procedural synthetic face generator."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from facerep.data.synthetic import (
    ATTRIBUTES,
    DRAW_STEPS,
    FEATURE_RANGES,
    HEAD_RANGES,
    LAPA_CLASSES,
    Canvas,
    FaceSpec,
    SyntheticFace,
    SyntheticFaceDataset,
    develop,
    draw_background,
    draw_glasses,
    draw_hat,
    draw_head,
    draw_occluder,
    face_attributes,
    frame_face,
    measure_throughput,
    render_face,
    render_spec,
    sample_face_spec,
    shading,
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


# --------------------------------------------------------------------------------------------- the steps


def _spec(seed: int, index: int = 0) -> FaceSpec:
    return sample_face_spec(np.random.default_rng([seed, index]))


def _blank(size: int) -> Canvas:
    return Canvas(Image.new("RGB", (2 * size, 2 * size), (0, 0, 0)), size)


def test_spec_sampling_deterministic_and_in_range() -> None:
    assert _spec(5, 2) == _spec(5, 2) and _spec(5, 2) != _spec(5, 3)
    for index in range(40):
        spec = _spec(9, index)
        for group, ranges in ((spec.head, HEAD_RANGES), (spec.features, FEATURE_RANGES)):
            for name, (lo, hi) in ranges.items():
                assert lo <= getattr(group, name) <= hi, name
        assert abs(spec.pose.yaw) <= 40 and abs(spec.pose.roll) <= 30 and 0.4 <= spec.pose.face_frac <= 0.6
        assert spec.features.smile == 0 or 0.3 <= spec.features.smile <= 1
        assert spec.hair.style in {"bald", "buzz", "short", "fringe", "medium", "long"}
        assert spec.accessories.occluder in {"none", "hand", "facemask"}
        for colour in (spec.head.skin, spec.hair.colour, spec.features.iris, spec.accessories.clothes):
            assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        assert 2 <= len(spec.background.grid) <= 4 and 3 <= len(spec.background.shapes) <= 9
    face = render_face(9, 7, 32)
    assert face.spec == _spec(9, 7) and face.params == _spec(9, 7).params()


def test_steps_compose_to_render_face() -> None:
    spec, size = _spec(4, 1), 48
    lay = frame_face(spec, size)
    cv = Canvas(draw_background(spec, size), size)
    for step in DRAW_STEPS:
        step(spec, lay, cv)
    face = render_face(4, 1, size)
    np.testing.assert_array_equal(develop(spec, lay, cv), face.image)
    np.testing.assert_array_equal(np.asarray(cv.mask), face.mask)
    np.testing.assert_array_equal(lay.landmarks.astype(np.float32), face.landmarks)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_draw_head_paints_only_the_head(seed: int) -> None:
    spec, size = _spec(seed), 64
    lay, cv = frame_face(spec, size), _blank(size)
    draw_head(spec, lay, cv)
    mask = np.asarray(cv.mask)
    assert set(np.unique(mask)) == {0, 1}  # skin and nothing else
    outline = np.concatenate(
        [
            lay.landmarks[:17],
            lay.project(lay.geo.head),
            lay.project(lay.geo.ear_r),
            lay.project(lay.geo.ear_l),
        ]
    )
    lo, hi = outline.min(0) - 1, outline.max(0) + 1
    ys, xs = np.nonzero(mask)
    assert (xs >= lo[0]).all() and (xs <= hi[0]).all() and (ys >= lo[1]).all() and (ys <= hi[1]).all()
    painted = np.asarray(cv.img).any(-1)  # [2S, 2S]
    assert painted[2 * ys, 2 * xs].mean() > 0.95  # skin labels are painted skin
    py, px = (np.nonzero(painted)[i] / 2 for i in (0, 1))  # native pixels
    level = py <= hi[1]  # beside the head: only the head; the neck and its shadow continue below
    assert py.min() >= lo[1] and (px[level] >= lo[0]).all() and (px[level] <= hi[0]).all()
    assert py.max() > lay.landmarks[8, 1] + 0.2 * lay.scale


def test_no_accessories_draws_none() -> None:
    base, size = _spec(3), 64
    steps = (draw_glasses, draw_hat, draw_occluder)
    for worn, changed in (
        (dict(glasses=False, hat=False, occluder="none"), False),
        (dict(glasses=True, hat=True, occluder="hand"), True),
    ):
        spec = replace(base, accessories=replace(base.accessories, **worn))
        lay = frame_face(spec, size)
        for step in steps:
            cv = _blank(size)
            before = np.asarray(cv.img).copy()
            step(spec, lay, cv)
            assert (np.asarray(cv.img) != before).any() == changed, step.__name__
        attrs = face_attributes(spec)
        assert all(attrs[ATTRIBUTES.index(a)] == changed for a in ("glasses", "hat", "occluded"))


def test_hat_and_hand_hide_labels() -> None:
    spec, size = _spec(3), 64
    bare = replace(spec, accessories=replace(spec.accessories, glasses=False, hat=False, occluder="none"))
    hat = replace(spec, accessories=replace(bare.accessories, hat=True))
    glasses = replace(spec, accessories=replace(bare.accessories, glasses=True))
    masks = {
        name: render_spec(s, size).mask for name, s in (("bare", bare), ("hat", hat), ("glasses", glasses))
    }
    assert (masks["hat"] == 0).sum() > (masks["bare"] == 0).sum()  # the hat is labelled background
    np.testing.assert_array_equal(masks["glasses"], masks["bare"])  # glasses are transparent to labels


def test_shading_gain() -> None:
    spec, size = _spec(6), 64
    lay = frame_face(spec, size)
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = 1
    gain = shading(spec, lay, mask)
    assert gain.shape == (size, size) and gain.min() >= 0.5 and gain.max() <= 1.5
    assert np.abs(gain[size // 2 :] - 1).max() <= 0.2 + 1e-6  # 0.4 of the gradient off the face
    cx, cy = np.rint(lay.centre).astype(int)
    assert abs(gain[cy, cx] - 1) < 0.05  # the gradient passes through the nose
