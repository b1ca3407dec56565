"""The crop rule of ``facerep prepare``: filters, geometry, reduced decoding, the warp's pixel convention."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from PIL import Image

from facerep.config import ConfigError
from facerep.data.crop import (
    CropConfig,
    apply_transform,
    crop_transform,
    decode_bgr,
    encode_jpeg,
    on_reduced,
    reduction_for,
    select_faces,
    skip_reason,
    template_points,
    transform_scale,
    warp_face,
)
from facerep.data.downstream.transforms import FIVE_POINT_TEMPLATE
from facerep.data.transforms import BadImage


@dataclass
class Face:
    box: np.ndarray
    points: np.ndarray | None = None
    score: float = 1.0


def _face(x1: float, y1: float, x2: float, y2: float, score: float = 1.0, points=None) -> Face:
    return Face(np.array([x1, y1, x2, y2], np.float32), points, score)


def test_box_rule_centres_and_expands_the_box() -> None:
    cfg = CropConfig(size=100, expand=2.0, align="box")
    m, rule = crop_transform(_face(10, 20, 50, 40), cfg)  # 40 x 20: square uses 40
    assert rule == "box"
    corners = apply_transform(m, np.array([[10, 20], [50, 40]]))
    c = (100 - 1) / 2  # the crop's centre pixel position; a 40 px side spans 100 / 2 px
    np.testing.assert_allclose(corners, [[c - 25, c - 12.5], [c + 25, c + 12.5]], atol=1e-9)
    assert m[0, 0] == m[1, 1] and m[0, 1] == m[1, 0] == 0
    stretched, _ = crop_transform(_face(10, 20, 50, 40), CropConfig(size=100, expand=2.0, square=False))
    np.testing.assert_allclose(apply_transform(stretched, np.array([[10, 20], [50, 40]])),
                               [[c - 25, c - 25], [c + 25, c + 25]], atol=1e-9)  # fmt: skip


def test_five_point_rule_is_the_similarity_onto_farl_template() -> None:
    size = 128
    target = template_points(size)
    np.testing.assert_allclose(target, ((FIVE_POINT_TEMPLATE + 1) * size - 1) / 2)  # downstream's convention
    angle, scale, shift = 0.3, 0.5, np.array([40.0, -7.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = target @ rot.T + shift  # the template moved by a known similarity
    m, rule = crop_transform(_face(0, 0, 1, 1, points=points), CropConfig(size=size, align="five_point"))
    assert rule == "five_point"
    np.testing.assert_allclose(apply_transform(m, points), target, atol=1e-6)
    assert transform_scale(m) == pytest.approx(1 / scale)
    wider, _ = crop_transform(_face(0, 0, 1, 1, points=points), CropConfig(size=size, align="five_point",
                                                                              align_scale=2.0))  # fmt: skip
    centre = (size - 1) / 2
    np.testing.assert_allclose(apply_transform(wider, points) - centre, (target - centre) / 2, atol=1e-6)
    # no points: the box rule
    _, fallback = crop_transform(_face(0, 0, 10, 10), CropConfig(align="five_point"))
    assert fallback == "box"


def test_filters_count_reasons_and_keep_the_best_faces() -> None:
    faces = [
        _face(0, 0, 100, 100, 0.95),
        _face(0, 0, 100, 100, 0.5),  # low score
        _face(0, 0, 30, 60, 0.99),  # small: longer side 60 < 64
        _face(0, 0, 64, 20, 0.97),  # longer side 64: kept
        _face(0, 0, 200, 200, float("nan")),  # a NaN score is low
        _face(0, 0, 80, 80, 0.99),
    ]
    kept, rejected = select_faces(faces, CropConfig(min_face=64, min_score=0.9, max_faces=2))
    assert kept == [5, 3]  # highest scores first
    assert rejected == {"low_score": 2, "small": 1, "faces_per_image": 1}
    kept, rejected = select_faces(faces, CropConfig(min_face=0, min_score=0.0, max_faces=0))
    assert kept == [2, 5, 3, 0, 1] and rejected == {"low_score": 1}


def test_an_image_without_a_crop_is_skipped_for_one_named_reason() -> None:
    cfg = CropConfig(min_face=64, min_score=0.9)

    def why(faces: list, config: CropConfig = cfg) -> dict | None:
        return skip_reason(faces, *select_faces(faces, config))

    assert why([]) == {"reason": "no_face"}
    assert why([_face(0, 0, 100, 100, 0.62), _face(0, 0, 90, 90, 0.81)]) == {
        "reason": "low_score",
        "score": 0.81,
    }
    assert why([_face(0, 0, 100, 100, float("nan"))]) == {"reason": "low_score", "score": None}
    # one face sure but small, another large but unsure: the sure one was too small
    assert why([_face(0, 0, 40, 40, 0.99), _face(0, 0, 100, 100, 0.5)]) == {"reason": "too_small"}
    assert why([_face(0, 0, 100, 100, 0.95)]) is None
    two = [_face(0, 0, 100, 100, 0.95), _face(0, 0, 80, 80, 0.97)]
    assert why(two) is None  # max_faces 3 keeps both
    single = CropConfig(min_face=64, min_score=0.9, single_face=True)
    assert select_faces(two, single) == ([], {"faces_per_image": 2})
    assert why(two, single) == {"reason": "too_many"}
    assert why([*two[:1], _face(0, 0, 100, 100, 0.3)], single) is None  # one face passes: kept


def test_config_values_are_checked_with_the_key_named() -> None:
    for kwargs, key in [({"align": "eyes"}, "crop.align"), ({"jpeg_quality": 0}, "crop.jpeg_quality"),
                        ({"expand": 0.0}, "crop.expand"), ({"max_faces": -1}, "crop.max_faces"),
                        ({"border": "wrap"}, "crop.border"), ({"size": 4}, "crop.size")]:  # fmt: skip
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            CropConfig(**kwargs)


def _blob_image(width: int, height: int, centre: tuple[float, float], sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    blob = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 250).astype(np.uint8)[:, :, None], 3, axis=2)


def _centroid(image: np.ndarray) -> np.ndarray:
    w = image[:, :, 0].astype(np.float64)
    ys, xs = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


def test_the_warp_puts_a_source_point_where_the_transform_says() -> None:
    image = _blob_image(120, 90, (47.3, 41.6), sigma=3.0)
    face = _face(30, 25, 70, 65)
    cfg = CropConfig(size=64, expand=1.3)
    m, _ = crop_transform(face, cfg)
    crop = warp_face(image, m, cfg)
    np.testing.assert_allclose(_centroid(crop), apply_transform(m, np.array([47.3, 41.6])), atol=0.05)


def test_reduced_decode_matches_the_full_size_crop() -> None:
    image = _blob_image(640, 480, (301.7, 222.2), sigma=24.0)
    image[:, :, 1] = np.linspace(0, 255, 640, dtype=np.float32)[None, :].astype(np.uint8)
    data = encode_jpeg(image, 95)
    cfg = CropConfig(size=64, expand=1.2)
    m, _ = crop_transform(_face(200, 120, 400, 320), cfg)  # 240 px of source -> 64 px: scale 0.27
    assert reduction_for([m]) == 2 and reduction_for([m * 0.4]) == 8 and reduction_for([m * 4]) == 1
    full, r1 = decode_bgr(data, "x.jpg", 1)
    reduced, r4 = decode_bgr(data, "x.jpg", 2)
    assert r1 == 1 and r4 == 2 and reduced.shape == (240, 320, 3)
    a = warp_face(full, m, cfg).astype(np.float64)
    b = warp_face(reduced, on_reduced(m, 2), cfg).astype(np.float64)
    assert np.abs(a - b).mean() < 2.0  # same geometry; differences are resampling only
    np.testing.assert_allclose(_centroid(b), _centroid(a), atol=0.1)


def test_decode_handles_formats_and_reports_corrupt_data() -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    bgr, r = decode_bgr(png.getvalue(), "a.png", 4)  # not a JPEG: decoded at full size
    assert r == 1 and bgr.shape == (20, 30, 3) and bgr[0, 0].tolist() == [0, 0, 200]
    gray = io.BytesIO()
    Image.fromarray(rgb[..., 0]).save(gray, "JPEG")
    assert decode_bgr(gray.getvalue(), "g.jpg")[0].shape == (20, 30, 3)
    gif = io.BytesIO()
    Image.fromarray(rgb).save(gif, "GIF")
    assert decode_bgr(gif.getvalue(), "a.gif")[0].shape == (20, 30, 3)
    jpg = encode_jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 90)
    bad = [(b"", "empty"), (b"not an image", "not an image"), (jpg[: len(jpg) // 2], "truncated")]
    for data, what in bad:
        with pytest.raises(BadImage, match=what):
            decode_bgr(data, "bad.jpg")
