"""The face-crop rule of ``facerep prepare``: which detections become crops, and how each is cut out.

Coordinates are those of :mod:`facerep.data.detect` (and OpenCV, and the downstream warps): the centre of
pixel ``(i, j)`` is ``(i, j)``, so a ``W x H`` image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` and a box is
the pixel-edge extent ``(x1, y1, x2, y2)``. A crop's *transform* is the 2x3 affine ``M`` with
``crop_xy = M @ (x, y, 1)``: it maps the detection's box and points into the ``S x S`` crop, and
``cv2.invertAffineTransform(M)`` maps crop positions back to the source image.

The rule (:class:`CropConfig`; the defaults are the ones ``facerep prepare`` uses):

1. Filters, per detection, in this order: ``score < min_score`` -> rejected ``"low_score"``; box side
   (the longer of width and height, source pixels) ``< min_face`` -> ``"small"``; of the rest, the
   ``max_faces`` highest-scoring are kept, the others rejected ``"faces_per_image"`` (``0`` keeps all);
   ``single_face`` keeps an image only when exactly one face passes (more: all ``"faces_per_image"``).
   An image left without a crop is skipped for one reason (:func:`skip_reason`, :data:`SKIP_REASONS`).
2. Geometry. ``align="box"``: the box's centre becomes the crop's centre and its side times ``expand``
   the crop's side; ``square`` uses the longer side for both axes (aspect kept, more context on the
   short axis), otherwise each axis is stretched on its own. ``align="five_point"``: the least-squares
   similarity (rotation, uniform scale, shift) taking the five points onto FaRL's template
   (:data:`~facerep.geometry.FIVE_POINT_TEMPLATE`, LaPa's alignment), shrunk about the
   crop centre by ``align_scale`` (``1``: the template as is, ``> 1``: more context); a detection
   without points falls back to the box rule (its JSON says ``"align": "box"``).
3. Pixels: bilinear ``cv2.warpAffine`` into ``size x size``; parts outside the image are filled per
   ``border`` (black by default, as FaRL). JPEG at ``jpeg_quality``.

Decoding is most of the cost, so a JPEG whose every kept face is shrunk by at least 2x is decoded at
1/2, 1/4 or 1/8 resolution by libjpeg's DCT scaling (:func:`reduction_for`, ``reduced_decode``); this
also anti-aliases large faces, which a bilinear warp alone would not.

Decompression bombs: before decoding, :func:`decode_bgr` reads the image's width and height from its header
(PIL, no pixels decoded) and refuses more than ``max_pixels`` (:data:`MAX_PIXELS` by default) with
:class:`ImageTooLarge`: a 40,000 x 40,000 PNG of zeros is 5 MB on disk and 4.8 GB decoded.
"""

from __future__ import annotations

import io
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from facerep.config import ConfigError, check_choice
from facerep.data.transforms import BadImage, decode_image
from facerep.geometry import apply_transform as apply_transform
from facerep.geometry import box_matrix, face_side, five_point_matrix, transform_scale
from facerep.geometry import on_reduced as on_reduced
from facerep.geometry import template_points as template_points

ALIGNS = ("box", "five_point")
BORDERS = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
}
REDUCTIONS = (8, 4, 2, 1)  # libjpeg DCT scaling factors, largest first
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
# Face-level rejection reasons, in the order the filters apply.
FACE_REASONS = ("low_score", "small", "faces_per_image")
# Why an image gave no crop: it could not be read; the detector found nothing above its own threshold;
# faces were found but all below min_score; (some) above min_score but all smaller than min_face; more
# faces than single_face allows.
SKIP_REASONS = ("unreadable", "no_face", "low_score", "too_small", "too_many")
# Default largest image decoded, in pixels (width x height): 10,000 x 10,000, 300 MB as BGR.
MAX_PIXELS = 100_000_000


class ImageTooLarge(BadImage):
    """An image whose header says it has more pixels than the decode limit (it is not decoded)."""


@dataclass
class CropConfig:
    """How detections become crops (the ``crop.*`` keys of ``facerep prepare``); see the module docstring."""

    size: int = 224  # output side, pixels
    align: str = "box"  # box | five_point
    expand: float = 1.5  # box rule: crop side / face box side
    square: bool = True  # box rule: one side for both axes (the box's longer side); false stretches
    align_scale: float = 1.0  # five_point rule: template shrunk about the crop centre by this (more context)
    min_face: float = 64.0  # face box's longer side in source pixels below which a face is rejected
    min_score: float = 0.9  # detector score below which a face is rejected
    max_faces: int = 3  # faces kept per image, highest score first (0: all)
    single_face: bool = False  # skip images with more than one face passing the filters (too_many)
    jpeg_quality: int = 95
    border: str = "constant"  # outside the image: constant (black) | replicate | reflect
    reduced_decode: bool = True  # decode JPEGs at 1/2, 1/4, 1/8 when every kept face allows it

    def __post_init__(self) -> None:
        check_choice("crop.align", self.align, ALIGNS)
        check_choice("crop.border", self.border, tuple(BORDERS))
        if self.size < 8:
            raise ConfigError(f"crop.size must be >= 8, got {self.size}")
        for key in ("expand", "align_scale"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"crop.{key} must be > 0, got {getattr(self, key)}")
        for key in ("min_face", "max_faces"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"crop.{key} must be >= 0, got {getattr(self, key)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"crop.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


class FaceLike(Protocol):
    """What the rule reads of a detection (:class:`facerep.data.detect.Detection` has it)."""

    box: np.ndarray  # [4] (x1, y1, x2, y2), pixel-edge extent
    points: np.ndarray | None  # [5, 2] or None
    score: float


def select_faces(faces: Sequence[FaceLike], cfg: CropConfig) -> tuple[list[int], Counter[str]]:
    """Indices of the faces to crop (highest score first) and the count of the others per reason."""
    rejected: Counter[str] = Counter()
    passed: list[int] = []
    for i, face in enumerate(faces):
        if not float(face.score) >= cfg.min_score:  # a NaN score is low too
            rejected["low_score"] += 1
        elif not face_side(face.box) >= cfg.min_face:
            rejected["small"] += 1
        else:
            passed.append(i)
    passed.sort(key=lambda i: -float(faces[i].score))  # stable: detector order among equal scores
    if cfg.single_face and len(passed) > 1:
        rejected["faces_per_image"] += len(passed)
        passed = []
    elif cfg.max_faces and len(passed) > cfg.max_faces:
        rejected["faces_per_image"] += len(passed) - cfg.max_faces
        passed = passed[: cfg.max_faces]
    return passed, rejected


def skip_reason(faces: Sequence[FaceLike], kept: Sequence[int], rejected: Counter[str]) -> dict | None:
    """Why an image with detections ``faces`` gave no crop (``kept`` and ``rejected`` from
    :func:`select_faces`): ``{"reason": one of SKIP_REASONS, "score": best score (low_score only)}``;
    ``None`` when it gave crops."""
    if kept:
        return None
    if not faces:
        return {"reason": "no_face"}
    if rejected["faces_per_image"]:
        return {"reason": "too_many"}
    if rejected["small"]:
        return {"reason": "too_small"}
    scores = [float(f.score) for f in faces if math.isfinite(float(f.score))]
    return {"reason": "low_score", "score": round(max(scores), 5) if scores else None}


def crop_transform(face: FaceLike, cfg: CropConfig) -> tuple[np.ndarray, str]:
    """The ``[2, 3]`` image -> crop affine of one face and the rule used (``"box"`` or ``"five_point"``)."""
    points = face.points
    if cfg.align == "five_point" and points is not None and np.isfinite(points).all():
        return five_point_matrix(points, cfg.size, cfg.align_scale)[:2], "five_point"
    return box_matrix(face.box, cfg.size, cfg.square, cfg.expand, shift_from_scale=True)[:2], "box"


def reduction_for(matrices: Sequence[np.ndarray]) -> int:
    """The largest DCT reduction (8, 4, 2 or 1) that leaves every crop at most 1:1 with its source."""
    if not matrices:
        return 1
    largest = max(transform_scale(m) for m in matrices)
    return next(r for r in REDUCTIONS if r * largest <= 1.0 or r == 1)


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def check_pixels(data: bytes, name: str, max_pixels: int) -> None:
    """Raise :class:`ImageTooLarge` when the header of ``data`` gives more than ``max_pixels`` pixels
    (``0``: no limit); headers PIL cannot read pass (the decoder judges them).

    PIL refuses to even open an image over twice its own bomb limit (``Image.MAX_IMAGE_PIXELS``, ~179 M
    pixels); such an image counts as too large unless ``max_pixels`` is above that limit (or ``0``).
    """
    if not max_pixels:
        return
    pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError as err:
        if pil_limit and max_pixels <= pil_limit:
            raise ImageTooLarge(name, f"more than {pil_limit} pixels (max_pixels={max_pixels})") from err
        return
    except Exception:  # not a header PIL knows: the decoders below decide
        return
    if width * height > max_pixels:
        raise ImageTooLarge(
            name, f"{width} x {height} = {width * height} pixels, more than max_pixels={max_pixels}"
        )


def decode_bgr(
    data: bytes, name: str, reduction: int = 1, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, int]:
    """Decode ``data`` to ``[H, W, 3]`` uint8 BGR, at ``1 / reduction`` if it is a complete JPEG (else full
    size); returns the image and the reduction applied.

    An image over ``max_pixels`` (from its header, see :func:`check_pixels`; ``0``: no limit) is
    :class:`ImageTooLarge`. OpenCV decodes first (EXIF orientation applied); what it cannot read or refuses
    (over its own limit), or a JPEG without its end marker (a truncated download, which OpenCV would
    grey-fill), goes to PIL, whose failure is :class:`BadImage`.
    """
    if not data:
        raise BadImage(name, "empty (0 bytes)")
    check_pixels(data, name, max_pixels)
    buf = np.frombuffer(data, dtype=np.uint8)
    complete_jpeg = is_jpeg(data) and data.rstrip(b"\0")[-2:] == b"\xff\xd9"
    if complete_jpeg or not is_jpeg(data):
        r = reduction if complete_jpeg and reduction in _REDUCED_FLAGS else 1
        try:
            image = cv2.imdecode(buf, _REDUCED_FLAGS[r] if r > 1 else cv2.IMREAD_COLOR)
        except cv2.error:  # e.g. over CV_IO_MAX_IMAGE_PIXELS: PIL has the last word
            image = None
        if image is not None and image.ndim == 3 and image.shape[2] == 3:
            return image, r
    rgb = np.asarray(decode_image(data, name))
    return np.ascontiguousarray(rgb[:, :, ::-1]), 1


def warp_face(image: np.ndarray, matrix: np.ndarray, cfg: CropConfig) -> np.ndarray:
    """The ``size x size`` crop of ``image`` under ``matrix`` (bilinear)."""
    return cv2.warpAffine(
        image,
        np.asarray(matrix, np.float64),
        (cfg.size, cfg.size),
        flags=cv2.INTER_LINEAR,
        borderMode=BORDERS[cfg.border],
    )


def encode_jpeg(image_bgr: np.ndarray, quality: int) -> bytes:
    """``[H, W, 3]`` uint8 BGR -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("cv2.imencode failed to encode a JPEG")
    return buf.tobytes()
