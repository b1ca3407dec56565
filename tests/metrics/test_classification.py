"""Accuracy, mean per-class accuracy and multi-label attribute accuracy on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerep.metrics import accuracy, attribute_accuracy, mean_class_accuracy


def test_accuracy_scores_and_labels() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    target = np.array([0, 1, 1, 2])
    # argmax -> [0, 1, 2, 0]: samples 0 and 1 right -> 2/4
    assert accuracy(logits, target) == 0.5
    assert accuracy(np.array([0, 1, 2, 0]), target) == 0.5
    out = accuracy(torch.from_numpy(logits), torch.from_numpy(target))
    assert isinstance(out, float) and out == 0.5
    with pytest.raises(ValueError):
        accuracy(logits[:3], target)
    with pytest.raises(ValueError):
        accuracy(np.zeros((4, 3, 1)), target)


def test_mean_class_accuracy() -> None:
    pred = np.array([0, 0, 1, 1, 2, 0])
    target = np.array([0, 0, 0, 1, 1, 2])
    # class 0: 2 of 3 right; class 1: 1 of 2; class 2: 0 of 1; class 3 absent -> skipped
    # (2/3 + 1/2 + 0) / 3 = (7/6) / 3 = 7/18, while plain accuracy is 3/6
    assert mean_class_accuracy(pred, target, 4) == pytest.approx(7 / 18)
    assert accuracy(pred, target) == 0.5
    one_hot = np.eye(4)[pred]
    balanced = mean_class_accuracy(torch.from_numpy(one_hot), torch.from_numpy(target), 4)
    assert balanced == pytest.approx(7 / 18)
    with pytest.raises(ValueError):
        mean_class_accuracy(pred, target, 2)  # label 2 out of range


def test_attribute_accuracy_logits_and_probabilities() -> None:
    target = np.array([[1, 0], [1, 1], [1, 0]])
    logits = np.array([[1.0, -2.0], [-0.5, 0.3], [2.0, 0.0]])
    # threshold 0 (strict >): preds [[1,0],[0,1],[1,0]] -> attr 0: 2/3, attr 1: 3/3; mean 5/6
    per, mean = attribute_accuracy(logits, target)
    np.testing.assert_allclose(per, [2 / 3, 1.0])
    assert isinstance(mean, float) and mean == pytest.approx(5 / 6)
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.5, 0.2]])
    # threshold 0.5: preds [[1,0],[0,1],[0,0]] (0.5 is not > 0.5) -> attr 0: 1/3, attr 1: 3/3; mean 2/3
    per, mean = attribute_accuracy(probs, torch.from_numpy(target).bool(), threshold=0.5)
    np.testing.assert_allclose(per, [1 / 3, 1.0])
    assert mean == pytest.approx(2 / 3)


def test_attribute_accuracy_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        attribute_accuracy(np.zeros((3, 2)), np.array([[1, -1], [1, 1], [1, -1]]))  # CelebA's -1 unmapped
    with pytest.raises(ValueError):
        attribute_accuracy(np.zeros((3, 2)), np.zeros((3, 3)))
