"""Shared truth for the detector tests: the astronaut's face and box overlap."""

from __future__ import annotations

import numpy as np

# The astronaut's face (scikit-image), read off the image at 4x zoom (as in scripts/compare_detectors.py): the
# box where iBUG's 68 points would lie (brow tops, chin, cheeks at ear level) and the five points.
ASTRONAUT_BOX = np.array([182.5, 89.5, 272.5, 184.5], dtype=np.float32)
ASTRONAUT_POINTS = np.array([[204, 101], [246, 102], [224, 126], [202, 142], [244, 142]], dtype=np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))
