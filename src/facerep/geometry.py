"""2-D face geometry: affine maps between a photo and its crops, points, boxes, the five-point template.

Coordinates are pixel-centre ones everywhere (OpenCV's, the detectors', the downstream transforms'): the
centre of pixel ``(i, j)`` is ``(i, j)``, so a ``W x H`` image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``;
a box is the pixel-edge extent ``(x1, y1, x2, y2)``. An affine map is a float64 ``[3, 3]`` matrix (or its
top ``[2, 3]``) with ``out_xy = M @ (x, y, 1)``.

Some maps exist in two arithmetic orders (:func:`box_matrix`'s ``shift_from_scale``, :func:`square_box` and
:func:`square_boxes`): equal up to rounding, each kept so that its callers' outputs stay bit-identical.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "FIVE_POINT_INDICES",
    "FIVE_POINT_TEMPLATE",
    "MEAN_SHAPE_68",
    "apply_transform",
    "apply_transform_tensor",
    "box_corners",
    "box_from_center_scale",
    "box_matrix",
    "centre_box",
    "estimate_box",
    "eyes_box",
    "face_side",
    "five_point_matrix",
    "five_points",
    "image_matrix",
    "invert",
    "landmarks_box",
    "mean_shape_landmarks",
    "on_reduced",
    "reduction_matrix",
    "rotation_scale_about",
    "scale_box",
    "similarity",
    "square_box",
    "square_boxes",
    "template_points",
    "template_to_photo",
    "to_3x3",
    "transform_scale",
]

# Five-point template (eye centres, nose tip, mouth corners; image-left first) in [-1, 1] crop units:
# blueprint's ``_standard_face_pts``: (196, 226), (316, 226), (256, 286), (220, 360.4), (292, 360.4)
# divided by 256, minus 1.
FIVE_POINT_TEMPLATE = (
    np.array(
        [[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]], dtype=np.float64
    )
    / 256.0
    - 1.0
)

# Landmark layouts -> the five points (an int is one landmark, a tuple is the mean of several).
FIVE_POINT_INDICES: dict[int, tuple[Any, ...]] = {
    106: (104, 105, 54, 84, 90),  # LaPa / JD-106 (FaRL's farl/datasets/prepare.py)
    98: (96, 97, 54, 76, 82),  # WFLW
    68: (tuple(range(36, 42)), tuple(range(42, 48)), 30, 48, 54),  # iBUG 68
    5: (0, 1, 2, 3, 4),  # the five points themselves (a detector's: eye centres, nose tip, mouth corners)
}

# The mean synthetic 68-point face in FaRL's five-point template units ([-1, 1] crop coordinates, the frame of
# FIVE_POINT_TEMPLATE): each of render_face(1000, i, 128), i < 2000 (synthetic_alignment's train split)
# moved by the least-squares similarity from its five points (five_points: eye centres 36-41 / 42-47, nose
# tip 30, mouth corners 48 / 54) onto the template, then averaged; rounded to 3 decimals
# (tests/apps/test_predict.py recomputes it).
MEAN_SHAPE_68 = np.array([
    [-0.565, -0.058], [-0.553, 0.137], [-0.520, 0.279], [-0.467, 0.402], [-0.399, 0.506],
    [-0.320, 0.593], [-0.231, 0.659], [-0.132, 0.701], [-0.001, 0.716], [0.131, 0.701],
    [0.231, 0.659], [0.320, 0.593], [0.400, 0.506], [0.469, 0.401], [0.522, 0.278],
    [0.555, 0.136], [0.567, -0.059], [-0.370, -0.277], [-0.314, -0.282], [-0.257, -0.281],
    [-0.200, -0.271], [-0.143, -0.255], [0.144, -0.256], [0.201, -0.272], [0.258, -0.281],
    [0.314, -0.283], [0.371, -0.277], [0.000, -0.122], [-0.000, -0.026], [-0.000, 0.071],
    [-0.001, 0.167], [-0.111, 0.196], [-0.056, 0.223], [-0.001, 0.235], [0.055, 0.223],
    [0.110, 0.196], [-0.336, -0.091], [-0.270, -0.128], [-0.204, -0.125], [-0.138, -0.083],
    [-0.204, -0.056], [-0.270, -0.059], [0.139, -0.083], [0.205, -0.126], [0.271, -0.129],
    [0.337, -0.092], [0.271, -0.060], [0.205, -0.057], [-0.199, 0.356], [-0.124, 0.317],
    [-0.050, 0.305], [-0.000, 0.315], [0.049, 0.305], [0.123, 0.317], [0.199, 0.356],
    [0.123, 0.430], [0.049, 0.448], [-0.000, 0.451], [-0.050, 0.448], [-0.124, 0.430],
    [-0.171, 0.361], [-0.080, 0.353], [-0.000, 0.352], [0.079, 0.353], [0.171, 0.361],
    [0.079, 0.389], [-0.000, 0.395], [-0.080, 0.389],
])  # fmt: skip


# ------------------------------------------------------------------------------------------ affine maps


def to_3x3(matrix: np.ndarray) -> np.ndarray:
    """A ``[2, 3]`` (or ``[3, 3]``) affine as float64 ``[3, 3]`` (last row ``0, 0, 1``)."""
    full = np.eye(3)
    full[:2] = matrix[:2]
    return full


def invert(matrix: np.ndarray) -> np.ndarray:
    """The ``[3, 3]`` inverse of a ``[2, 3]`` (or ``[3, 3]``) affine."""
    return np.linalg.inv(to_3x3(matrix))


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[..., 2]`` points mapped by a ``[2, 3]`` (or ``[3, 3]``) affine, in float64."""
    m = np.asarray(matrix, np.float64)[:2]
    return np.asarray(points, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def apply_transform_tensor(matrix: Tensor, points: Tensor) -> Tensor:
    """``[..., K, 2]`` points mapped by ``[..., 2, 3]`` (or ``[..., 3, 3]``) affines, in the dtype of
    ``points``."""
    m = matrix.to(points.dtype)
    return points @ m[..., :2, :2].transpose(-1, -2) + m[..., :2, 2].unsqueeze(-2)


def transform_scale(matrix: np.ndarray) -> float:
    """Output pixels per source pixel of a ``[2, 3]`` or ``[3, 3]`` affine (``sqrt |det|`` of its linear
    part); ``< 1`` means the face shrinks."""
    return math.sqrt(abs(float(np.linalg.det(np.asarray(matrix, np.float64)[:2, :2]))))


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The ``[3, 3]`` least-squares similarity (rotation, uniform scale, translation; no reflection) taking
    points ``src`` ``[K, 2]`` onto ``dst`` ``[K, 2]``."""
    ms, md = src.mean(0), dst.mean(0)
    p, q = src - ms, dst - md
    denom = max(float((p**2).sum()), 1e-12)
    a = float((p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]).sum()) / denom
    b = float((p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]).sum()) / denom
    t = md - np.array([a * ms[0] - b * ms[1], b * ms[0] + a * ms[1]])
    return np.array([[a, -b, t[0]], [b, a, t[1]], [0.0, 0.0, 1.0]])


def template_points(size: int, align_scale: float = 1.0) -> np.ndarray:
    """:data:`FIVE_POINT_TEMPLATE` in a ``size x size`` crop (pixels) ``[5, 2]``, shrunk about its centre by
    ``align_scale``."""
    return ((FIVE_POINT_TEMPLATE / float(align_scale) + 1.0) * size - 1.0) / 2.0


def five_point_matrix(points5: np.ndarray, size: int, align_scale: float = 1.0) -> np.ndarray:
    """``[3, 3]`` photo -> ``size x size`` crop: the similarity taking five points ``[5, 2]`` onto
    :func:`template_points`."""
    return similarity(points5, template_points(size, align_scale))


def template_to_photo(points5: np.ndarray) -> np.ndarray:
    """``[3, 3]`` similarity taking template units (:data:`FIVE_POINT_TEMPLATE`'s frame) onto five points
    ``[5, 2]``."""
    return similarity(FIVE_POINT_TEMPLATE, np.asarray(points5, dtype=np.float64))


def box_matrix(
    box: np.ndarray, size: int, square: bool = True, expand: float = 1.0, *, shift_from_scale: bool = False
) -> np.ndarray:
    """``[3, 3]`` photo -> ``size x size`` crop: the box's centre goes to the crop's centre and its side times
    ``expand`` spans the crop; ``square`` uses the box's longer side for both axes (else each axis is
    stretched on its own).

    The shift is ``c - scale * centre`` with ``shift_from_scale`` (``facerep prepare``'s crops),
    ``c - centre * size / side`` without (the downstream transforms'): the same up to rounding.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    w, h = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
    if square:
        w = h = max(w, h)
    w, h = w * expand, h * expand
    sx, sy = size / w, size / h
    c = (size - 1) / 2.0
    if shift_from_scale:
        tx, ty = c - sx * cx, c - sy * cy
    else:
        tx, ty = c - cx * size / w, c - cy * size / h
    return np.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]])


def image_matrix(hw: tuple[int, int], size: int) -> np.ndarray:
    """``[3, 3]``: the whole ``(H, W)`` image stretched onto the ``size x size`` crop (a plain resize,
    ``align_corners=False``)."""
    h, w = hw
    sx, sy = size / w, size / h
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def rotation_scale_about(center: float, angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """``[3, 3]``: rotation by ``angle`` (radians) and uniform ``scale`` about ``(center, center)``, then
    ``shift``."""
    cosv, sinv = scale * math.cos(angle), scale * math.sin(angle)
    return np.array(
        [
            [cosv, -sinv, center - cosv * center + sinv * center + shift[0]],
            [sinv, cosv, center - sinv * center - cosv * center + shift[1]],
            [0.0, 0.0, 1.0],
        ]
    )


def reduction_matrix(k: int) -> np.ndarray:
    """``[3, 3]`` image pixels -> pixels of the image downscaled ``k`` times (box filter, or libjpeg's DCT
    scaling), whose pixel edges are ``k`` full-size ones: ``x' = (x + 0.5) / k - 0.5``."""
    a, b = 1.0 / k, 0.5 / k - 0.5
    return np.array([[a, 0.0, b], [0.0, a, b], [0.0, 0.0, 1.0]])


def on_reduced(matrix: np.ndarray, k: int) -> np.ndarray:
    """A ``[2, 3]`` affine of the full-size image re-expressed for the image downscaled ``k`` times: it
    composes ``matrix`` with the inverse of :func:`reduction_matrix`, ``x = k * x' + (k - 1) / 2``."""
    m = np.array(matrix, dtype=np.float64)
    out = m.copy()
    out[:, :2] *= k
    out[:, 2] += m[:, :2] @ np.full(2, (k - 1) / 2.0)
    return out


# ------------------------------------------------------------------------------------------------ boxes


def landmarks_box(landmarks: np.ndarray) -> np.ndarray:
    """The (x1, y1, x2, y2) bounding box of ``[K, 2]`` points, float32 ``[4]``."""
    pts = np.asarray(landmarks, dtype=np.float32)
    return np.concatenate([pts.min(axis=0), pts.max(axis=0)]).astype(np.float32)


def box_corners(box: np.ndarray) -> np.ndarray:
    """The four corners ``[4, 2]`` (top-left, top-right, bottom-left, bottom-right) of a box, float64."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]])


def face_side(box: np.ndarray) -> float:
    """The longer side of an ``(x1, y1, x2, y2)`` box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return max(x2 - x1, y2 - y1)


def scale_box(box: np.ndarray, scale: float) -> np.ndarray:
    """A box scaled by ``scale`` about its centre, float32 ``[4]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 * scale, (y2 - y1) / 2 * scale
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], dtype=np.float32)


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes ``[N, 4]`` grown to squares about their centres (side = the longer side), dtype kept."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, keepdims=True) / 2
    return np.concatenate([c - half, c + half], axis=1)


def box_from_center_scale(cx: float, cy: float, scale: float) -> np.ndarray:
    """The square box of an HRNet landmark list, ``center ± 100 * scale`` (scale = side / 200), float32
    ``[4]``."""
    half = 100.0 * scale
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float32)


def square_box(rect: np.ndarray) -> np.ndarray:
    """One box as an HRNet list's square box (:func:`box_from_center_scale`): same centre, side
    ``max(w, h)``, float32 ``[4]``."""
    x1, y1, x2, y2 = (float(v) for v in rect)
    return box_from_center_scale((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) / 200.0)


def centre_box(height: int, width: int) -> np.ndarray:
    """The largest square box centred in a ``height x width`` image, float32 ``[4]``."""
    side = float(min(height, width))
    x1, y1 = (width - side) / 2.0, (height - side) / 2.0
    return np.array([x1, y1, x1 + side, y1 + side], np.float32)


def eyes_box(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """A square face box from two eye centres ``[2]``: side 2.5 x their distance, the eyes' midpoint at its
    horizontal centre and 40 % of its height (an MTCNN-like box); all zero when the eyes coincide. Float32
    ``[4]``."""
    dist = float(np.hypot(*(right - left)))
    if dist <= 0:
        return np.zeros(4, dtype=np.float32)
    side = 2.5 * dist
    cx, cy = (left + right) / 2
    return np.array([cx - side / 2, cy - 0.4 * side, cx + side / 2, cy + 0.6 * side], dtype=np.float32)


# ------------------------------------------------------------------------------------------ five points


def five_points(landmarks: np.ndarray) -> np.ndarray | None:
    """The five alignment points ``[5, 2]`` (float64) of ``[K, 2]`` landmarks of a known layout
    (:data:`FIVE_POINT_INDICES`), else ``None``."""
    spec = FIVE_POINT_INDICES.get(int(landmarks.shape[0]))
    if spec is None:
        return None
    pts = [landmarks[list(i)].mean(0) if isinstance(i, tuple) else landmarks[i] for i in spec]
    return np.asarray(pts, dtype=np.float64)


def mean_shape_landmarks(points5: np.ndarray) -> np.ndarray:
    """The trivial landmark estimate: :data:`MEAN_SHAPE_68` put on five points ``[5, 2]`` -> ``[68, 2]``."""
    return apply_transform(template_to_photo(points5), MEAN_SHAPE_68)


def estimate_box(points5: np.ndarray, box_scale: float = 1.0) -> np.ndarray:
    """The landmarks' tight box (x1, y1, x2, y2) estimated from five points ``[5, 2]``: the tight box of
    :func:`mean_shape_landmarks`, scaled by ``box_scale`` about its centre -> float32 ``[4]``."""
    return scale_box(landmarks_box(mean_shape_landmarks(points5)), box_scale)
