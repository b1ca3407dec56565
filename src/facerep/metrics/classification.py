"""Classification metrics: single-label accuracy, mean per-class accuracy, multi-label attribute accuracy,
ROC-AUC of binary scores."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["accuracy", "attribute_accuracy", "mean_class_accuracy", "roc_auc"]


def _array(x: Any) -> np.ndarray:
    """``x`` (numpy array, torch tensor or sequence) as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """``([N] predicted labels, [N] target labels)``; ``[N, C]`` scores are reduced by argmax."""
    p, t = _array(pred), _array(target)
    if t.ndim != 1:
        raise ValueError(f"target must be [N] labels, got shape {t.shape}")
    if p.shape[:1] != t.shape or p.ndim not in (1, 2):
        raise ValueError(f"pred must be [N] labels or [N, C] scores with N = {t.shape[0]}, got {p.shape}")
    if p.ndim == 2:
        p = p.argmax(axis=1)
    if t.size == 0:
        raise ValueError("no samples")
    return p.astype(np.int64), t.astype(np.int64)


def accuracy(logits_or_pred: Any, target: Any) -> float:
    """Fraction of correct single-label predictions.

    Args:
        logits_or_pred: ``[N, C]`` scores (argmax taken) or ``[N]`` predicted labels.
        target: ``[N]`` labels.
    """
    p, t = _labels(logits_or_pred, target)
    return float(np.mean(p == t))


def mean_class_accuracy(pred: Any, target: Any, num_classes: int) -> float:
    """Mean over classes of per-class recall (balanced accuracy); classes absent from ``target`` are skipped.

    Args:
        pred: ``[N, C]`` scores or ``[N]`` predicted labels.
        target: ``[N]`` labels in ``[0, num_classes)``.
        num_classes: C.
    """
    p, t = _labels(pred, target)
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"target labels must lie in [0, {num_classes})")
    support = np.bincount(t, minlength=num_classes)
    correct = np.bincount(t[p == t], minlength=num_classes)
    present = support > 0
    return float(np.mean(correct[present] / support[present]))


def attribute_accuracy(scores: Any, target: Any, threshold: float = 0.0) -> tuple[np.ndarray, float]:
    """Per-attribute accuracy of multi-label binary predictions (e.g. CelebA's 40 attributes).

    Args:
        scores: ``[N, A]`` scores; positive where ``score > threshold``.
        target: ``[N, A]`` binary labels (0 / 1 or bool; CelebA's -1 / 1 must be mapped to 0 / 1 first).
        threshold: 0.0 for logits, 0.5 for probabilities.
    Returns:
        ``([A] float64 accuracies, their mean)``.
    """
    s, t = _array(scores).astype(np.float64), _array(target)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and target must both be [N, A], got {s.shape} and {t.shape}")
    if s.shape[0] == 0:
        raise ValueError("no samples")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("target must be binary (0 / 1)")
    per_attribute = np.mean((s > threshold) == t.astype(bool), axis=0)
    return per_attribute, float(per_attribute.mean())


def roc_auc(scores: Any, target: Any) -> float:
    """Area under the ROC curve of ``[N]`` scores for ``[N]`` 0/1 targets: the probability that a random
    positive outscores a random negative, ties counting one half (Mann-Whitney U). NaN when the targets
    hold one class only."""
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(target).astype(bool)
    positives, negatives = int(t.sum()), int((~t).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    from scipy.stats import rankdata  # scipy.stats: 0.5 s to import

    ranks = rankdata(s)
    return float((ranks[t].sum() - positives * (positives + 1) / 2) / (positives * negatives))
