"""Face-parsing metrics of a dataset-level confusion matrix: per-class F1 / IoU, their means, pixel accuracy.

Conventions follow FaRL's ``F1Score`` scorer (``farl/experiments/face_parsing/scorer.py``,
``scorers/{lapa,celebm}.yaml``): one confusion matrix is summed over every test image, then per-class
``F1 = 2 TP / (pred_count + gt_count)`` is computed once from it (not averaged per image); the reported
mean F1 (``fg_mean``) averages every class but ``background``, with no class merging (LaPa 11 classes,
CelebAMask-HQ 19). FaRL reports no IoU; here ``miou`` averages all classes (background included, as
mmsegmentation does) and ``miou_fg`` the foreground ones.

A class absent from both prediction and ground truth has F1 and IoU ``nan`` and is left out of the means
(FaRL would let the ``nan`` propagate into ``fg_mean``; on full test sets every class occurs, so the two
agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ConfusionAccumulator", "confusion_matrix", "parsing_scores"]


def _int_array(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy array, torch tensor or sequence) as an int64 numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """Pixel confusion matrix of label maps.

    Args:
        pred: predicted labels, any shape (e.g. ``[N, H, W]`` or ``[H, W]``).
        target: ground-truth labels, same shape as ``pred``.
        num_classes: C; labels must lie in ``[0, C)``.
        ignore_index: target value whose pixels are skipped (their ``pred`` is not checked).
    Returns:
        ``[C, C]`` int64 counts; rows = ground truth, columns = prediction.
    """
    p, t = _int_array(pred, "pred"), _int_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} does not match target shape {t.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    p, t = p.reshape(-1), t.reshape(-1)
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target labels must lie in [0, {num_classes}) (or equal ignore_index)")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"pred labels must lie in [0, {num_classes})")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


class ConfusionAccumulator:
    """Sums ``confusion_matrix`` over batches / images, so scores are dataset-level (as FaRL).

    For distributed evaluation, all-reduce ``matrix`` (a sum) before calling ``parsing_scores``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows = gt, cols = pred

    def update(self, pred: Any, target: Any) -> None:
        """Add the confusion of one batch or image (label maps of equal shape)."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        """Zero the counts."""
        self.matrix[...] = 0

    def scores(self, class_names: Sequence[str], background: int | None = 0) -> dict[str, Any]:
        """``parsing_scores`` of the accumulated matrix."""
        return parsing_scores(self.matrix, class_names, background)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with ``nan`` where ``den == 0``."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-nan entries; ``nan`` if there are none (without numpy's warning)."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def parsing_scores(confusion: Any, class_names: Sequence[str], background: int | None = 0) -> dict[str, Any]:
    """Per-class and mean F1 / IoU and pixel accuracy of a dataset-level confusion matrix.

    Args:
        confusion: ``[C, C]`` counts, rows = ground truth, columns = prediction.
        class_names: C names, in label order.
        background: index left out of ``mean_f1`` and ``miou_fg`` (``None``: leave nothing out).
    Returns:
        ``{"f1": {name: v}, "mean_f1": ..., "iou": {name: v}, "miou": ..., "miou_fg": ...,
        "pixel_acc": ...}``; per-class values are ``nan`` for classes absent from prediction and
        ground truth, and means skip them.
    """
    if hasattr(confusion, "detach"):
        confusion = confusion.detach().cpu().numpy()
    cm = np.asarray(confusion, dtype=np.float64)
    num_classes = len(class_names)
    if cm.shape != (num_classes, num_classes):
        raise ValueError(f"confusion must be [C, C], C = len(class_names) = {num_classes}; got {cm.shape}")
    if not np.all(np.isfinite(cm)) or np.any(cm < 0):
        raise ValueError("confusion counts must be finite and non-negative")
    if background is not None and not 0 <= background < num_classes:
        raise ValueError(f"background index {background} is outside [0, {num_classes})")
    tp = np.diag(cm)
    gt, pr = cm.sum(axis=1), cm.sum(axis=0)
    f1 = _safe_ratio(2 * tp, gt + pr)
    iou = _safe_ratio(tp, gt + pr - tp)
    fg = np.ones(num_classes, dtype=bool)
    if background is not None:
        fg[background] = False
    total = cm.sum()
    return {
        "f1": {name: float(v) for name, v in zip(class_names, f1, strict=True)},
        "mean_f1": _nanmean(f1[fg]),
        "iou": {name: float(v) for name, v in zip(class_names, iou, strict=True)},
        "miou": _nanmean(iou),
        "miou_fg": _nanmean(iou[fg]),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
    }
