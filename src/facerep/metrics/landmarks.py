"""Face-alignment metrics: NME, its normalising distances, and the CED curve's AUC and failure rate.

Conventions follow FaRL's scorers (``farl/experiments/face_alignment/scorer.py`` and ``scorers/*.yaml``),
which follow HRNet-Facial-Landmark-Detection:

* NME of one image = mean over its K points of ``||pred - target||_2``, divided by the image's unit
  distance; dataset NME = mean of the per-image NMEs.
* Unit distances use 0-based point indices of the ground truth (``UNIT_LANDMARKS``); box units are
  ``sqrt(w * h)`` (``box``) and ``sqrt(w^2 + h^2)`` (``diag``).
* AFLW-19: FaRL averages over all 19 points; the dataset's visibility mask is loaded but dropped before
  scoring. ``nme(..., visible=...)`` is an opt-in variant that FaRL's numbers do not use.
* CED/AUC/FR: an image counts as a success at ``x`` when ``nme <= x``; the CED is sampled on FaRL's grid
  ``np.arange(0, threshold + step, step)``, AUC = Simpson integral over that grid divided by ``threshold``,
  FR = 1 - CED at the grid's last node. For AFLW-19's 7 % that grid ends at 0.0701 (702 nodes), so the
  AUC integrates one step past the threshold and FR counts failures above 0.0701, as FaRL's numbers do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.integrate import simpson

__all__ = [
    "UNIT_LANDMARKS",
    "UNIT_SCHEMES",
    "ced_auc_fr",
    "farl_simpson",
    "landmark_summary",
    "nme",
    "unit_distance",
]

# K -> scheme -> (left point ids, right point ids); a side's position is the mean of its points.
# From FaRL's scorers/{aflw19,ibug300w,wflw}.yaml (0-based, as are the datasets' point arrays).
UNIT_LANDMARKS: dict[int, dict[str, tuple[tuple[int, ...], tuple[int, ...]]]] = {
    # AFLW-19: 6 / 11 are the outer eye corners, 7 / 10 the eye centres.
    19: {"inter_ocular": ((6,), (11,)), "inter_pupil": ((7,), (10,))},
    # 300W (iBUG 68): outer corners 36 / 45; pupils = mean of each eye's six contour points.
    68: {"inter_ocular": ((36,), (45,)), "inter_pupil": (tuple(range(36, 42)), tuple(range(42, 48)))},
    # WFLW (98): outer corners 60 / 72; 96 / 97 are the annotated pupils.
    98: {"inter_ocular": ((60,), (72,)), "inter_pupil": ((96,), (97,))},
}
UNIT_SCHEMES: tuple[str, ...] = ("inter_ocular", "inter_pupil", "diag", "box")


def _float_array(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor or sequence) as a float64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def nme(pred: Any, target: Any, unit: Any, visible: Any | None = None) -> np.ndarray:
    """Per-image normalised mean error.

    Args:
        pred: ``[N, K, 2]`` predicted points.
        target: ``[N, K, 2]`` ground-truth points.
        unit: ``[N]`` positive normalising distances (see ``unit_distance``).
        visible: optional ``[N, K]`` bool mask; the mean then runs over visible points only (not FaRL's
            AFLW-19 protocol, which averages all 19 points).
    Returns:
        ``[N]`` float64 NMEs (fractions, not percent).
    """
    pred, target, unit = (
        _float_array(pred, "pred"),
        _float_array(target, "target"),
        _float_array(unit, "unit"),
    )
    if pred.ndim != 3 or pred.shape[-1] != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [N, K, 2], got {pred.shape} and {target.shape}")
    if unit.shape != pred.shape[:1]:
        raise ValueError(f"unit must be [N] = [{pred.shape[0]}], got {unit.shape}")
    if np.any(unit <= 0):
        raise ValueError("unit distances must be positive")
    err = np.linalg.norm(pred - target, axis=-1)  # [N, K]
    if visible is None:
        return err.mean(axis=1) / unit
    if hasattr(visible, "detach"):
        visible = visible.detach().cpu().numpy()
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != err.shape:
        raise ValueError(f"visible must be [N, K] = {list(err.shape)}, got {visible.shape}")
    count = visible.sum(axis=1)
    if np.any(count == 0):
        raise ValueError("every image needs at least one visible point")
    return (err * visible).sum(axis=1) / count / unit


def unit_distance(target: Any, scheme: str, boxes: Any | None = None) -> np.ndarray:
    """Per-image NME normalising distance.

    Args:
        target: ``[N, K, 2]`` ground-truth points (x, y); used by the landmark schemes, whose point ids
            come from ``UNIT_LANDMARKS[K]`` (K in 19, 68, 98).
        scheme: ``inter_ocular`` (outer eye corners), ``inter_pupil`` (eye centres), ``diag``
            (``sqrt(w^2 + h^2)`` of the box) or ``box`` (``sqrt(w * h)``).
        boxes: ``[N, 4]`` boxes ``x1, y1, x2, y2``, for ``diag`` / ``box`` only. Both formulas are
            symmetric in w and h, so FaRL's ``y1, x1, y2, x2`` boxes give the same values.
    Returns:
        ``[N]`` float64 distances.
    """
    if scheme in ("diag", "box"):
        if boxes is None:
            raise ValueError(f"scheme {scheme!r} needs boxes")
        b = _float_array(boxes, "boxes")
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4], got {b.shape}")
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        if np.any(w < 0) or np.any(h < 0):
            raise ValueError("boxes must satisfy x2 >= x1 and y2 >= y1")
        return np.sqrt(w * w + h * h) if scheme == "diag" else np.sqrt(w * h)
    if scheme not in ("inter_ocular", "inter_pupil"):
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {UNIT_SCHEMES}")
    t = _float_array(target, "target")
    if t.ndim != 3 or t.shape[-1] != 2:
        raise ValueError(f"target must be [N, K, 2], got {t.shape}")
    if t.shape[1] not in UNIT_LANDMARKS:
        raise ValueError(
            f"{scheme} is not defined for K={t.shape[1]} points; known K: {sorted(UNIT_LANDMARKS)}"
        )
    left, right = UNIT_LANDMARKS[t.shape[1]][scheme]
    return np.linalg.norm(t[:, list(left)].mean(axis=1) - t[:, list(right)].mean(axis=1), axis=-1)


def farl_simpson(y: np.ndarray, x: np.ndarray) -> float:
    """Simpson's rule as FaRL's scorer ran it: ``scipy.integrate.simps`` of scipy < 1.11, whose default
    ``even="avg"`` treats an even number of samples as the mean of (Simpson over the first ``N - 1``
    samples + trapezoid on the last interval) and (trapezoid on the first + Simpson over the last
    ``N - 1``). An odd number of samples is plain Simpson (today's ``scipy.integrate.simpson``, which
    handles even counts differently). ``y``, ``x``: ``[N]``."""
    if len(y) % 2:
        return float(simpson(y, x=x))
    head = simpson(y[:-1], x=x[:-1]) + 0.5 * (x[-1] - x[-2]) * (y[-1] + y[-2])
    tail = 0.5 * (x[1] - x[0]) * (y[1] + y[0]) + simpson(y[1:], x=x[1:])
    return float(0.5 * (head + tail))


def ced_auc_fr(nmes: Any, threshold: float, step: float = 1e-4) -> tuple[float, float]:
    """Area under the CED curve and the failure rate, on FaRL's grid (``scorer.py`` ``AUC_FR``).

    The CED (fraction of images with ``nme <= x``) is sampled at ``x = np.arange(0, threshold + step,
    step)`` and integrated with :func:`farl_simpson`. For WFLW's 0.1 that grid ends at 0.1; for AFLW-19's
    0.07 floating point makes it end at 0.0701 (one node more), and FaRL's AUC and FR use that last node.

    Args:
        nmes: ``[N]`` per-image NMEs.
        threshold: positive integration limit / failure threshold, a multiple of ``step``.
        step: grid spacing.
    Returns:
        ``(auc, fr)``: the integral divided by ``threshold``; FR = fraction with ``nme`` above the grid's
        last node.
    """
    values = _float_array(nmes, "nmes").reshape(-1)
    if values.size == 0:
        raise ValueError("nmes is empty")
    if not (threshold > 0 and step > 0):
        raise ValueError(f"threshold and step must be positive, got {threshold} and {step}")
    n = round(threshold / step)
    if n < 2 or not math.isclose(n * step, threshold, rel_tol=1e-9):
        raise ValueError(f"threshold {threshold} must be a multiple (>= 2) of step {step}")
    grid = np.arange(0.0, threshold + step, step)  # FaRL's xaxis, node for node
    ced = np.searchsorted(np.sort(values), grid, side="right") / values.size  # fraction with nme <= x
    return farl_simpson(ced, grid) / threshold, float(1.0 - ced[-1])


def landmark_summary(nmes: Any, threshold: float, step: float = 1e-4) -> dict[str, float]:
    """``{"nme": mean NME, "fr": ..., "auc": ...}`` of ``[N]`` per-image NMEs (see ``ced_auc_fr``)."""
    values = _float_array(nmes, "nmes").reshape(-1)
    auc, fr = ced_auc_fr(values, threshold, step)
    return {"nme": float(values.mean()), "fr": fr, "auc": auc}
