"""facerep.geometry: affine maps, points and boxes on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerep.geometry import (
    FIVE_POINT_TEMPLATE,
    MEAN_SHAPE_68,
    apply_transform,
    apply_transform_tensor,
    box_corners,
    box_from_center_scale,
    box_matrix,
    centre_box,
    estimate_box,
    eyes_box,
    face_side,
    five_point_matrix,
    five_points,
    image_matrix,
    invert,
    landmarks_box,
    mean_shape_landmarks,
    on_reduced,
    reduction_matrix,
    rotation_scale_about,
    scale_box,
    similarity,
    square_box,
    square_boxes,
    template_points,
    template_to_photo,
    to_3x3,
    transform_scale,
)


def _similarity_matrix(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("shift_from_scale", [False, True])
def test_box_matrix_maps_the_box_edges_onto_the_crop_edges(shift_from_scale):
    m = box_matrix(np.array([10.0, 20.0, 50.0, 60.0]), 80, shift_from_scale=shift_from_scale)
    assert m.shape == (3, 3) and m.dtype == np.float64
    np.testing.assert_array_equal(m[2], [0.0, 0.0, 1.0])
    # pixel-edge corners -> the crop's pixel-edge corners (-0.5 and S - 0.5)
    np.testing.assert_allclose(apply_transform(m, [[10, 20], [50, 60]]), [[-0.5, -0.5], [79.5, 79.5]])
    # expand 2: the box fills the middle half of the crop
    wide = box_matrix(np.array([10.0, 20.0, 50.0, 60.0]), 80, expand=2.0, shift_from_scale=shift_from_scale)
    np.testing.assert_allclose(apply_transform(wide, [[10, 20], [50, 60]]), [[19.5, 19.5], [59.5, 59.5]])


def test_box_matrix_square_or_stretched():
    box = np.array([0.0, 0.0, 40.0, 20.0])  # 40 x 20
    stretched = box_matrix(box, 100, square=False)
    np.testing.assert_allclose(
        apply_transform(stretched, box_corners(box)), box_corners([-0.5, -0.5, 99.5, 99.5])
    )
    square = box_matrix(box, 100, square=True)  # the longer side (40) on both axes: y spans the middle half
    np.testing.assert_allclose(apply_transform(square, [[0, 0], [40, 20]]), [[-0.5, 24.5], [99.5, 74.5]])
    assert transform_scale(square) == pytest.approx(2.5)


def test_box_matrix_shift_orders_agree_up_to_rounding():
    rng = np.random.default_rng(0)
    for _ in range(100):
        x1, y1 = rng.uniform(-50, 500, 2)
        box = np.array([x1, y1, x1 + rng.uniform(1, 300), y1 + rng.uniform(1, 300)])
        a, b = box_matrix(box, 224), box_matrix(box, 224, shift_from_scale=True)
        np.testing.assert_array_equal(a[:, :2], b[:, :2])
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_image_matrix_maps_the_image_edges_onto_the_crop_edges():
    m = image_matrix((30, 60), 120)  # H = 30, W = 60
    np.testing.assert_allclose(
        apply_transform(m, [[-0.5, -0.5], [59.5, 29.5]]), [[-0.5, -0.5], [119.5, 119.5]]
    )
    np.testing.assert_allclose(apply_transform(m, [[0, 0]]), [[0.5, 1.5]])  # pixel 0's centre: 2x, 4x


def test_to_3x3_and_invert_round_trip():
    m = _similarity_matrix(1.7, 0.3, 12.0, -4.0)[:2]
    full = to_3x3(m)
    np.testing.assert_array_equal(full[:2], m)
    np.testing.assert_array_equal(full[2], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(invert(m) @ full, np.eye(3), atol=1e-12)
    pts = np.array([[1.0, 2.0], [-30.0, 7.5]])
    np.testing.assert_allclose(apply_transform(invert(m), apply_transform(m, pts)), pts, atol=1e-12)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(-10, 10, (7, 2))
    truth = _similarity_matrix(2.5, -0.8, 3.0, 40.0)
    np.testing.assert_allclose(similarity(src, apply_transform(truth, src)), truth, atol=1e-10)
    # a reflection is not a similarity: the best one has no reflection (positive determinant)
    mirrored = src * np.array([-1.0, 1.0])
    assert np.linalg.det(similarity(src, mirrored)[:2, :2]) >= 0


def test_template_points_and_five_point_matrix():
    np.testing.assert_array_equal(template_points(224), ((FIVE_POINT_TEMPLATE + 1.0) * 224 - 1.0) / 2.0)
    centre = np.full(2, 111.5)
    np.testing.assert_allclose(template_points(224, 2.0) - centre, (template_points(224) - centre) / 2)
    np.testing.assert_allclose(five_point_matrix(template_points(224), 224), np.eye(3), atol=1e-12)
    truth = _similarity_matrix(0.5, 0.2, -7.0, 9.0)  # photo -> crop
    photo = apply_transform(invert(truth), template_points(112))
    np.testing.assert_allclose(five_point_matrix(photo, 112), truth, atol=1e-10)
    np.testing.assert_allclose(
        apply_transform(template_to_photo(photo), FIVE_POINT_TEMPLATE), photo, atol=1e-10
    )


def test_reduction_matrix_is_the_inverse_of_the_reduced_pixel_positions():
    for r in (1, 2, 4, 8):
        reduced = np.array([[0.0, 0.0], [3.0, 5.0], [-0.5, -0.5]])
        full = r * reduced + (r - 1) / 2  # the old on_reduced formula: reduced x' sits at r x' + (r - 1) / 2
        np.testing.assert_allclose(apply_transform(reduction_matrix(r), full), reduced, atol=1e-12)
        m = _similarity_matrix(0.3, 0.4, 5.0, -2.0)[:2]
        np.testing.assert_allclose(
            apply_transform(on_reduced(m, r), reduced), apply_transform(m, full), atol=1e-12
        )
        np.testing.assert_allclose(on_reduced(m, r), m @ invert(reduction_matrix(r)), atol=1e-12)
    # the reduced image's edges are the full image's: -0.5 stays -0.5
    np.testing.assert_array_equal(apply_transform(reduction_matrix(2), [[-0.5, 0.5]]), [[-0.5, 0.0]])


def test_numpy_and_torch_apply_agree():
    m = _similarity_matrix(1.3, 0.7, 2.0, -5.0)
    pts = np.random.default_rng(2).uniform(-100, 100, (9, 2))
    want = apply_transform(m, pts)
    assert want.dtype == np.float64
    assert apply_transform(m[:2], pts.astype(np.float32)).dtype == np.float64  # numpy: always float64
    got = apply_transform_tensor(torch.from_numpy(m[:2]), torch.from_numpy(pts))
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    got32 = apply_transform_tensor(torch.from_numpy(m[:2]), torch.from_numpy(pts).float())
    assert got32.dtype == torch.float32  # torch: the dtype of the points
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-5, atol=1e-4)
    batched = apply_transform_tensor(
        torch.from_numpy(np.stack([m[:2], invert(m)[:2]])), torch.from_numpy(pts)
    )
    np.testing.assert_allclose(batched[1].numpy(), apply_transform(invert(m), pts), rtol=1e-12)


def test_transform_scale_and_rotation_about_a_centre():
    assert transform_scale(_similarity_matrix(0.25, 1.1, 4.0, 4.0)) == pytest.approx(0.25)
    m = rotation_scale_about(10.0, math.pi / 2, 2.0, (1.0, -1.0))
    np.testing.assert_allclose(apply_transform(m, [[10.0, 10.0], [11.0, 10.0]]), [[11.0, 9.0], [11.0, 11.0]])


def test_boxes():
    np.testing.assert_array_equal(landmarks_box([[3, 4], [1, 9], [2, -1]]), [1, -1, 3, 9])
    assert landmarks_box([[3, 4]]).dtype == np.float32
    np.testing.assert_array_equal(box_corners([1, 2, 3, 4]), [[1, 2], [3, 2], [1, 4], [3, 4]])
    assert face_side(np.array([0, 0, 4, 7])) == 7.0
    np.testing.assert_array_equal(scale_box([0, 0, 10, 20], 2.0), [-5, -10, 15, 30])
    np.testing.assert_array_equal(centre_box(100, 60), [0, 20, 60, 80])
    np.testing.assert_array_equal(centre_box(60, 100), [20, 0, 80, 60])


def test_square_boxes():
    boxes = np.array([[0.0, 0.0, 4.0, 2.0], [10.0, 10.0, 11.0, 14.0]], dtype=np.float32)
    out = square_boxes(boxes)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, -1, 4, 3], [8.5, 10, 12.5, 14]])
    np.testing.assert_array_equal(square_box([0.0, 0.0, 4.0, 2.0]), [0, -1, 4, 3])
    np.testing.assert_array_equal(box_from_center_scale(100.0, 50.0, 1.0), [0, -50, 200, 150])


def test_eyes_box():
    box = eyes_box(np.array([10.0, 20.0]), np.array([30.0, 20.0]))  # 20 apart: side 50, eyes at 40 %
    assert box.dtype == np.float32
    np.testing.assert_array_equal(box, [-5, 0, 45, 50])
    np.testing.assert_array_equal(eyes_box(np.array([3.0, 3.0]), np.array([3.0, 3.0])), np.zeros(4))


def test_five_points():
    lms68 = np.arange(136, dtype=np.float64).reshape(68, 2)
    pts = five_points(lms68)
    np.testing.assert_array_equal(pts[0], lms68[36:42].mean(0))
    np.testing.assert_array_equal(pts[2:], lms68[[30, 48, 54]])
    np.testing.assert_array_equal(five_points(lms68[:5]), lms68[:5])
    assert five_points(np.zeros((7, 2))) is None


def test_mean_shape_on_the_template_is_the_mean_shape():
    np.testing.assert_allclose(mean_shape_landmarks(FIVE_POINT_TEMPLATE), MEAN_SHAPE_68, atol=1e-12)
    photo = apply_transform(_similarity_matrix(100.0, 0.0, 300.0, 200.0), FIVE_POINT_TEMPLATE)
    np.testing.assert_allclose(
        estimate_box(photo), landmarks_box(MEAN_SHAPE_68) * 100 + [300, 200] * 2, atol=1e-3
    )
    est = estimate_box(photo)
    np.testing.assert_allclose(estimate_box(photo, 2.0), scale_box(est, 2.0), atol=1e-3)
