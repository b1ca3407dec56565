"""Anti-spoofing metrics against hand-computed cases (SSDG / ISO/IEC 30107-3 conventions)."""

import itertools
import math

import numpy as np
import pytest

from facerep.metrics import antispoof_scores

# 4 lives, 4 spoofs: FAR = FRR = 1/4 for every threshold in (0.4, 0.6]; elsewhere they differ
LIVE = [0.3, 0.6, 0.7, 0.9]
SPOOF = [0.1, 0.2, 0.4, 0.65]


def crafted() -> tuple[np.ndarray, np.ndarray]:
    return np.array(LIVE + SPOOF), np.array([1] * 4 + [0] * 4)


def pair_auc(live: list[float], spoof: list[float]) -> float:
    """Share of (live, spoof) pairs the live sample wins, ties one half."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(live, spoof))
    return wins / (len(live) * len(spoof))


def ssdg_eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """SSDG's get_EER_states scan, written out as a loop: grid 0..1 step 1e-4, the last smallest |FRR-FAR|."""
    best, state = 1.0, (0.0, 0.0, 0.0)
    for i in range(10001):
        thr = 0.0 + i * 1.0 / 10000
        accept = scores >= thr
        far = np.mean(accept[labels == 0])
        frr = np.mean(~accept[labels == 1])
        if abs(frr - far) <= best:
            best, state = abs(frr - far), (far, frr, thr)
    return (state[0] + state[1]) / 2, state[2]


def test_perfect_separation():
    m = antispoof_scores([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])
    assert m["auc"] == 1.0 and m["eer"] == 0.0 and m["hter"] == 0.0 and m["tpr_at_fpr_1"] == 1.0
    assert m["eer_threshold"] == 0.8  # the highest grid threshold with FAR = FRR = 0 (0.8 itself counts live)
    assert m["acer"] == 0.0 and m["apcer"] == 0.0 and m["bpcer"] == 0.0


def test_inverted_scores():
    m = antispoof_scores([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert m["auc"] == 0.0
    assert m["eer"] == 1.0 and m["hter"] == 1.0 and m["eer_threshold"] == 0.8
    assert m["tpr_at_fpr_1"] == 0.0


def test_a_score_at_the_threshold_counts_live():
    m = antispoof_scores([0.5, 0.5], [1, 0], threshold=0.5)
    assert m["far"] == 1.0 and m["frr"] == 0.0 and m["hter"] == 0.5 and m["auc"] == 0.5
    m = antispoof_scores([0.5, 0.5], [1, 0], threshold=0.5001)
    assert m["far"] == 0.0 and m["frr"] == 1.0


def test_eer_and_its_threshold_on_a_crafted_set():
    scores, labels = crafted()
    m = antispoof_scores(scores, labels)
    assert m["eer"] == 0.25 and m["eer_threshold"] == 0.6 and m["threshold"] == 0.6
    assert m["far"] == 0.25 and m["frr"] == 0.25 and m["hter"] == 0.25  # OCIM: HTER at the EER threshold
    assert m["auc"] == pair_auc(LIVE, SPOOF) == 13 / 16
    assert (m["eer"], m["eer_threshold"]) == ssdg_eer(scores, labels)


def test_eer_matches_the_ssdg_scan_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    labels[:2] = [0, 1]
    scores = np.round(np.clip(rng.normal(0.4 + 0.2 * labels, 0.2), 0, 1), 3)  # rounded: ties on the grid
    m = antispoof_scores(scores, labels)
    eer, thr = ssdg_eer(scores, labels)
    assert m["eer"] == pytest.approx(eer, abs=1e-12) and m["eer_threshold"] == thr
    live, spoof = scores[labels == 1].tolist(), scores[labels == 0].tolist()
    assert m["auc"] == pytest.approx(pair_auc(live, spoof), abs=1e-12)


def test_hter_at_a_dev_threshold_differs_from_hter_at_eer():
    scores, labels = crafted()
    m = antispoof_scores(scores, labels, threshold=0.35)
    # spoofs >= 0.35: 0.4, 0.65 -> FAR 2/4; lives < 0.35: 0.3 -> FRR 1/4
    assert m["threshold"] == 0.35 and m["far"] == 0.5 and m["frr"] == 0.25 and m["hter"] == 0.375
    assert m["eer"] == 0.25 and m["eer_threshold"] == 0.6  # the EER does not depend on the threshold
    assert antispoof_scores(scores, labels)["hter"] == 0.25


def test_apcer_is_the_worst_attack_type_and_acer_its_mean_with_bpcer():
    live = [0.9, 0.4]
    prints, replays = [0.1, 0.7], [0.2, 0.3, 0.4, 0.9]
    scores = live + prints + replays
    labels = [1, 1] + [0] * 6
    types = ["live", "live"] + ["print"] * 2 + ["replay"] * 4
    typed = antispoof_scores(scores, labels, threshold=0.5, attack_types=types)
    pooled = antispoof_scores(scores, labels, threshold=0.5)
    assert typed["apcer"] == 0.5  # print: 1 of 2 accepted; replay: 1 of 4
    assert pooled["apcer"] == pooled["far"] == typed["far"] == 2 / 6
    assert typed["bpcer"] == typed["frr"] == 0.5
    assert typed["acer"] == (0.5 + 0.5) / 2 and pooled["acer"] == (2 / 6 + 0.5) / 2
    # live samples' attack names do not matter
    other = antispoof_scores(scores, labels, threshold=0.5, attack_types=["x", "y", *types[2:]])
    assert other["apcer"] == 0.5


def test_tpr_at_fpr_1_percent_on_200_crafted_scores():
    spoof = np.concatenate([np.linspace(0.0, 0.49, 98), [0.7, 0.95]])  # 100 spoofs: one may pass at 1 %
    live = np.concatenate([np.full(50, 0.8), np.full(30, 0.6), np.full(20, 0.96)])
    scores = np.concatenate([live, spoof])
    labels = np.array([1] * 100 + [0] * 100)
    # FPR <= 1 % lets only the 0.95 spoof through: threshold in (0.7, 0.95] -> lives at 0.8 and 0.96
    assert antispoof_scores(scores, labels)["tpr_at_fpr_1"] == 0.7
    spoof[-2] = 0.95  # two spoofs at 0.95: now no spoof may pass -> only the lives at 0.96
    assert antispoof_scores(np.concatenate([live, spoof]), labels)["tpr_at_fpr_1"] == 0.2
    # brute force over every threshold
    thresholds = np.unique(np.concatenate([live, spoof, [2.0]]))
    best = max(np.mean(live >= t) for t in thresholds if np.mean(spoof >= t) <= 0.01)
    assert best == 0.2


def test_constant_scores_are_chance():
    m = antispoof_scores(np.full(10, 0.5), [1] * 5 + [0] * 5)
    assert m["auc"] == 0.5 and m["hter"] == 0.5 and m["eer"] == 0.5


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "message"),
    [
        ([0.1, 0.2], [1, 0, 1], {}, "scores and labels must both be"),
        ([0.1, 0.2], [1, 1], {}, "both classes are needed"),
        ([0.1, math.nan], [1, 0], {}, "scores must be finite"),
        ([0.1, 1.5], [1, 0], {}, r"liveness probabilities in \[0, 1\]"),
        ([0.1, 0.2], [1, 2], {}, "labels must be 1"),
        ([0.1, 0.2], [1, 0], {"attack_types": ["a"]}, "attack_types must be"),
        ([0.1, 0.2], [1, 0], {"threshold": math.inf}, "threshold must be finite"),
    ],
)
def test_bad_arguments_are_one_line_errors(scores, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        antispoof_scores(scores, labels, **kwargs)
