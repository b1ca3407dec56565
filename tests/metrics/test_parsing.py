"""Confusion matrix, dataset-level accumulation and parsing scores on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerep.metrics import ConfusionAccumulator, confusion_matrix, parsing_scores

NAMES = ("background", "skin", "hair")
TARGET = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 2]])
PRED = np.array([[0, 1, 1], [0, 1, 2], [2, 1, 0]])
# (gt, pred) pairs: (0,0) (0,1) (1,1) / (0,0) (1,1) (1,2) / (2,2) (2,1) (2,0)
CONFUSION = np.array(
    [
        [2, 1, 0],  # gt 0: 2 right, 1 -> class 1
        [0, 2, 1],  # gt 1: 2 right, 1 -> class 2
        [1, 1, 1],  # gt 2: 1 right, 1 -> 0, 1 -> 1
    ]
)


def test_confusion_matrix_toy() -> None:
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CONFUSION)
    # rows are ground truth: one pixel gt 0 predicted 1 lands at [0, 1]
    assert confusion_matrix([1], [0], 2).tolist() == [[0, 1], [0, 0]]
    from_torch = confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TARGET), 3)
    np.testing.assert_array_equal(from_torch, CONFUSION)


def test_confusion_ignore_index() -> None:
    target = np.concatenate([TARGET, [[255, 255, 0]]])
    pred = np.concatenate([PRED, [[7, 1, 0]]])  # ignored pixels may hold any prediction
    expected = CONFUSION.copy()
    expected[0, 0] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3, ignore_index=255), expected)
    with pytest.raises(ValueError):
        confusion_matrix(pred, target, 3)


def test_confusion_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(PRED, TARGET[:2], 3)
    with pytest.raises(ValueError):
        confusion_matrix(PRED.astype(np.float32), TARGET, 3)
    with pytest.raises(ValueError):
        confusion_matrix(PRED, TARGET, 2)  # label 2 out of range
    with pytest.raises(ValueError):
        confusion_matrix(PRED - 1, TARGET, 3)


def test_parsing_scores_toy() -> None:
    s = parsing_scores(CONFUSION, NAMES)
    # gt counts (rows) 3, 3, 3; pred counts (cols) 3, 4, 2; TP 2, 2, 1
    # F1 = 2TP / (pred + gt): bg 4/6, skin 4/7, hair 2/5
    assert s["f1"] == pytest.approx({"background": 2 / 3, "skin": 4 / 7, "hair": 2 / 5})
    # mean F1 over foreground (background excluded): (4/7 + 2/5) / 2 = (20 + 14) / 70 = 17/35
    assert s["mean_f1"] == pytest.approx(17 / 35)
    # IoU = TP / (gt + pred - TP): bg 2/4, skin 2/5, hair 1/4
    assert s["iou"] == pytest.approx({"background": 0.5, "skin": 0.4, "hair": 0.25})
    assert s["miou"] == pytest.approx((0.5 + 0.4 + 0.25) / 3)
    assert s["miou_fg"] == pytest.approx((0.4 + 0.25) / 2)
    assert s["pixel_acc"] == pytest.approx(5 / 9)
    # no background: mean over all three
    all_classes = parsing_scores(CONFUSION, NAMES, background=None)
    assert all_classes["mean_f1"] == pytest.approx((2 / 3 + 4 / 7 + 2 / 5) / 3)


def test_parsing_scores_absent_class_is_nan_and_skipped() -> None:
    cm = np.zeros((4, 4), dtype=np.int64)
    cm[:3, :3] = CONFUSION
    s = parsing_scores(torch.from_numpy(cm), (*NAMES, "hat"))
    assert math.isnan(s["f1"]["hat"]) and math.isnan(s["iou"]["hat"])
    assert s["mean_f1"] == pytest.approx(17 / 35)
    assert s["miou"] == pytest.approx((0.5 + 0.4 + 0.25) / 3)


def test_parsing_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        parsing_scores(CONFUSION, NAMES[:2])
    with pytest.raises(ValueError):
        parsing_scores(-CONFUSION, NAMES)
    with pytest.raises(ValueError):
        parsing_scores(CONFUSION, NAMES, background=3)


def test_accumulator_equals_whole_dataset() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(5, 8, 8))
    pred = np.where(rng.random((5, 8, 8)) < 0.7, target, rng.integers(0, 4, size=(5, 8, 8)))
    acc = ConfusionAccumulator(4)
    acc.update(pred[:2], target[:2])  # batch of 2 images
    acc.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))  # batch of 3, torch
    whole = confusion_matrix(pred, target, 4)
    np.testing.assert_array_equal(acc.matrix, whole)
    names = ("bg", "a", "b", "c")
    assert acc.scores(names) == parsing_scores(whole, names)
    acc.reset()
    assert acc.matrix.sum() == 0
