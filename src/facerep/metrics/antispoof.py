"""Face anti-spoofing metrics: HTER, EER, AUC, APCER / BPCER / ACER and TPR at FPR = 1 %.

Conventions (those of the cross-domain OCIM code of SSDG, Jia et al. CVPR 2020, ``utils/statistic.py``,
which SSAN, FSFM and MCF's table follow):

* label 1 = live (bona fide), 0 = spoof (attack); a score is the **liveness probability** in [0, 1];
  a sample is accepted as live when ``score >= threshold`` (a score equal to the threshold counts live).
* FAR = spoofs accepted (APCER pooled over attack types), FRR = lives rejected (BPCER);
  HTER = (FAR + FRR) / 2.
* EER: thresholds on the grid 0, 1e-4, ..., 1; the one with the smallest ``|FRR - FAR|`` (the **highest**
  such threshold on ties, as SSDG's ``dist <= min_dist`` scan keeps the last); EER = (FAR + FRR) / 2 there.
* Cross-domain HTER (O&C&I->M, ...) is taken at the EER threshold of the same test scores (SSDG's
  ``get_HTER_at_thr(prob, label, threshold)`` after ``get_EER_states``); pass ``threshold`` for an HTER at
  a threshold chosen elsewhere (a dev set, or 0.5).
* AUC with live as the positive class (ties count one half, as ``sklearn.metrics.roc_auc_score``).
* ISO/IEC 30107-3 (and the OULU-NPU protocol, Boulkenafet et al. FG 2017): APCER is the **maximum** over
  attack types of the share of that type accepted, when types are known; BPCER = FRR;
  ACER = (APCER + BPCER) / 2.
* TPR@FPR=1 %: the largest TPR over thresholds whose FPR (spoofs accepted) is at most 1 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from facerep.metrics.classification import roc_auc

__all__ = ["EER_GRID", "antispoof_scores", "eer_threshold", "error_rates", "tpr_at_fpr"]

EER_GRID = np.arange(10001, dtype=np.float64) / 10000.0  # SSDG: 0.0 + i * 1.0 / 10000, i = 0..10000


def _check(
    scores: Any, labels: Any, attack_types: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``([N] float64 scores, [N] bool live, [N] str types or None)`` after the argument checks."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must both be [N], got shapes {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"scores must be liveness probabilities in [0, 1], got [{s.min():.4g}, {s.max():.4g}]"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 1 (live) or 0 (spoof)")
    live = y.astype(bool)
    if live.all() or not live.any():
        n_live = int(live.sum())
        raise ValueError(f"both classes are needed, got {n_live} live and {live.size - n_live} spoof")
    types = None
    if attack_types is not None:
        types = np.asarray(attack_types).astype(str)
        if types.shape != s.shape:
            raise ValueError(f"attack_types must be [N] = {s.shape}, got shape {types.shape}")
    return s, live, types


def error_rates(scores: np.ndarray, live: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(FAR, FRR)`` at ``threshold``: the shares of spoofs with ``score >= threshold`` and of lives with
    ``score < threshold``."""
    accepted = scores >= threshold
    return float(accepted[~live].mean()), float((~accepted[live]).mean())


def eer_threshold(scores: np.ndarray, live: np.ndarray) -> tuple[float, float]:
    """``(EER, threshold)`` on :data:`EER_GRID` (see the module docstring for the tie rule)."""
    spoof, genuine = np.sort(scores[~live]), np.sort(scores[live])
    far = 1.0 - np.searchsorted(spoof, EER_GRID, side="left") / spoof.size  # share of spoofs >= t
    frr = np.searchsorted(genuine, EER_GRID, side="left") / genuine.size  # share of lives < t
    dist = np.abs(frr - far)
    i = int(np.flatnonzero(dist == dist.min())[-1])
    return float((far[i] + frr[i]) / 2.0), float(EER_GRID[i])


def tpr_at_fpr(scores: np.ndarray, live: np.ndarray, fpr: float = 0.01) -> float:
    """The largest TPR over thresholds with FPR <= ``fpr``: with ``k = floor(fpr * spoofs)`` spoofs allowed
    through, the threshold must lie above the (k+1)-th highest spoof score ``s``, so TPR = the share of lives
    scoring above ``s``."""
    spoof = np.sort(scores[~live])[::-1]
    k = int(np.floor(fpr * spoof.size + 1e-9))
    if k >= spoof.size:
        return 1.0
    return float((scores[live] > spoof[k]).mean())


def antispoof_scores(
    scores: Any, labels: Any, threshold: float | None = None, attack_types: Any = None
) -> dict[str, float]:
    """Anti-spoofing metrics of ``[N]`` liveness scores against ``[N]`` labels (1 live, 0 spoof).

    Args:
        scores: ``[N]`` liveness probabilities in [0, 1] (live when ``score >= threshold``).
        labels: ``[N]`` 1 (live) / 0 (spoof); both classes must be present.
        threshold: the decision threshold for HTER / APCER / BPCER / ACER; None (the OCIM convention):
            the EER threshold of these scores.
        attack_types: optional ``[N]`` attack names (live samples' entries are ignored): APCER is then the
            maximum over attack types (ISO/IEC 30107-3), else the pooled FAR.
    Returns:
        ``auc``, ``eer``, ``eer_threshold``, ``threshold`` (the one used), ``hter``, ``far``, ``frr``,
        ``apcer``, ``bpcer``, ``acer``, ``tpr_at_fpr_1``; all rates as fractions in [0, 1].
    """
    s, live, types = _check(scores, labels, attack_types)
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    eer, eer_thr = eer_threshold(s, live)
    thr = eer_thr if threshold is None else float(threshold)
    far, frr = error_rates(s, live, thr)
    apcer = far
    if types is not None:
        spoof_types = types[~live]
        accepted = s[~live] >= thr
        apcer = max(float(accepted[spoof_types == t].mean()) for t in np.unique(spoof_types))
    return {
        "hter": (far + frr) / 2.0,
        "auc": roc_auc(s, live),
        "eer": eer,
        "tpr_at_fpr_1": tpr_at_fpr(s, live, 0.01),
        "far": far,
        "frr": frr,
        "apcer": apcer,
        "bpcer": frr,
        "acer": (apcer + frr) / 2.0,
        "threshold": thr,
        "eer_threshold": eer_thr,
    }
