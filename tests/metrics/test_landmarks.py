"""NME, unit distances and CED AUC / FR on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerep.metrics import UNIT_LANDMARKS, ced_auc_fr, landmark_summary, nme, unit_distance


def test_nme_hand_computed() -> None:
    target = np.zeros((2, 3, 2))
    pred = np.zeros((2, 3, 2))
    # image 0: point errors 5 (3-4-5), 0, 10 (6-8-10) -> mean 5; unit 2 -> 2.5
    pred[0, 0] = (3, 4)
    pred[0, 2] = (6, 8)
    # image 1: every point off by 1 (target moved instead of pred) -> mean 1; unit 4 -> 0.25
    target[1] = (0, 1)
    unit = np.array([2.0, 4.0])
    np.testing.assert_allclose(nme(pred, target, unit), [2.5, 0.25])
    # torch in, numpy float64 out
    out = nme(torch.from_numpy(pred).float(), torch.from_numpy(target).float(), torch.tensor([2.0, 4.0]))
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, [2.5, 0.25])
    # visible mask: image 0 keeps points 0 and 2 -> (5 + 10) / 2 / 2 = 3.75; image 1 keeps point 1 -> 1 / 4
    visible = np.array([[True, False, True], [False, True, False]])
    np.testing.assert_allclose(nme(pred, target, unit, visible=visible), [3.75, 0.25])


def test_nme_rejects_bad_input() -> None:
    x = np.zeros((2, 3, 2))
    with pytest.raises(ValueError):
        nme(x, np.zeros((2, 4, 2)), np.ones(2))
    with pytest.raises(ValueError):
        nme(x, x, np.ones(3))
    with pytest.raises(ValueError):
        nme(x, x, np.array([1.0, 0.0]))
    with pytest.raises(ValueError):
        nme(x, x, np.ones(2), visible=np.zeros((2, 3), dtype=bool))


def _eyes68() -> np.ndarray:
    """[2, 68, 2]: image 0 has horizontal eyes; image 1 is image 0 halved and shifted."""
    t = np.zeros((1, 68, 2))
    # left eye 36..41: outer corner 36 = (10, 20), inner 39 = (30, 20), lids symmetric -> centre (20, 20)
    t[0, 36:42] = [(10, 20), (17, 18), (23, 18), (30, 20), (23, 22), (17, 22)]
    # right eye 42..47: inner 42 = (50, 20), outer 45 = (70, 20) -> centre (60, 20)
    t[0, 42:48] = [(50, 20), (57, 18), (63, 18), (70, 20), (63, 22), (57, 22)]
    return np.concatenate([t, t * 0.5 + 7.0])


def test_unit_distance_68() -> None:
    t = _eyes68()
    # inter-ocular |45 - 36| = 70 - 10 = 60 (30 once halved); inter-pupil |(60,20) - (20,20)| = 40 (20)
    np.testing.assert_allclose(unit_distance(t, "inter_ocular"), [60.0, 30.0])
    np.testing.assert_allclose(unit_distance(torch.from_numpy(t), "inter_pupil"), [40.0, 20.0])


def test_unit_distance_98_and_19() -> None:
    t = np.zeros((1, 98, 2))
    t[0, 60], t[0, 72] = (0, 0), (30, 40)  # outer corners: 3-4-5 triangle x10 -> 50
    t[0, 96], t[0, 97] = (5, 5), (29, 12)  # pupils: (24, 7) -> 25
    np.testing.assert_allclose(unit_distance(t, "inter_ocular"), [50.0])
    np.testing.assert_allclose(unit_distance(t, "inter_pupil"), [25.0])
    a = np.zeros((1, 19, 2))
    a[0, 6], a[0, 11] = (0, 0), (9, 12)  # AFLW-19 outer corners -> 15
    a[0, 7], a[0, 10] = (1, 0), (8, 0)  # AFLW-19 eye centres -> 7
    np.testing.assert_allclose(unit_distance(a, "inter_ocular"), [15.0])
    np.testing.assert_allclose(unit_distance(a, "inter_pupil"), [7.0])
    assert UNIT_LANDMARKS[68]["inter_pupil"] == (tuple(range(36, 42)), tuple(range(42, 48)))


def test_unit_distance_boxes() -> None:
    boxes = np.array([[10, 20, 40, 60], [1, 2, 5, 11]], dtype=np.float64)
    # box 0: w 30, h 40 -> diag 50, sqrt(w h) = sqrt(1200); box 1: w 4, h 9 -> diag sqrt(97), sqrt(36) = 6
    np.testing.assert_allclose(unit_distance(None, "diag", boxes), [50.0, math.sqrt(97)])
    np.testing.assert_allclose(unit_distance(None, "box", boxes), [math.sqrt(1200), 6.0])
    # FaRL's y1, x1, y2, x2 order gives the same values (formulas symmetric in w, h)
    swapped = boxes[:, [1, 0, 3, 2]]
    np.testing.assert_allclose(unit_distance(None, "diag", swapped), unit_distance(None, "diag", boxes))
    np.testing.assert_allclose(unit_distance(None, "box", swapped), unit_distance(None, "box", boxes))


def test_unit_distance_errors() -> None:
    with pytest.raises(ValueError):
        unit_distance(np.zeros((1, 21, 2)), "inter_ocular")  # no eye layout for K = 21
    with pytest.raises(ValueError):
        unit_distance(np.zeros((1, 68, 2)), "chin")
    with pytest.raises(ValueError):
        unit_distance(np.zeros((1, 68, 2)), "box")  # no boxes
    with pytest.raises(ValueError):
        unit_distance(None, "diag", np.array([[5.0, 0.0, 1.0, 1.0]]))  # x2 < x1


def _simpson(y: np.ndarray, h: float) -> float:
    """Composite Simpson, even number of intervals: h/3 (y0 + 4 y1 + 2 y2 + ... + 4 y_{n-1} + y_n)."""
    n = len(y) - 1
    assert n % 2 == 0
    w = np.ones(n + 1)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return float(h / 3 * np.dot(w, y))


def test_ced_auc_fr_hand_computed() -> None:
    nmes = [0.01, 0.02, 0.05, 0.2]
    auc, fr = ced_auc_fr(nmes, threshold=0.1, step=1e-4)
    # one of four images (0.2) has nme > 0.1
    assert fr == 0.25
    # CED (fraction with nme <= x) is 0 on [0, .01), .25 on [.01, .02), .5 on [.02, .05), .75 on [.05, .1]:
    # exact integral .25*.01 + .5*.03 + .75*.05 = .055. The grid x_i = i * 1e-4 hits each jump exactly at an
    # even node j (100, 200, 500), where CED already has the upper value b; the Simpson panel [j-2, j] gives
    # h/3 (a + 4a + b) instead of 2 h a, i.e. + h/3 (b - a). Jumps sum to .75 -> + .25 h = 2.5e-5.
    # AUC = (.055 + 2.5e-5) / .1 = .55025
    assert auc == pytest.approx(0.55025, abs=1e-12)
    # the same value from an explicit composite Simpson over the sampled CED
    grid = np.arange(1001) * 1e-4
    ced = np.array([sum(v <= x for v in nmes) / 4 for x in grid])
    assert auc == pytest.approx(_simpson(ced, 1e-4) / 0.1, abs=1e-12)
    assert landmark_summary(nmes, 0.1) == pytest.approx({"nme": 0.07, "fr": 0.25, "auc": 0.55025})


def test_ced_auc_node_parity() -> None:
    h = 1e-4
    # one image, nme between nodes 49 and 50 -> CED jumps 0 -> 1 at even node 50:
    # integral (.1 - .005) + h/3 -> AUC .95 + h/3/.1
    auc, fr = ced_auc_fr([0.00495], 0.1)
    assert (auc, fr) == (pytest.approx(0.95 + h / 3 / 0.1, abs=1e-12), 0.0)
    # jump at odd node 51: panel [50, 52] = h/3 (0 + 4 + 1) = 5h/3 instead of h -> + 2h/3
    auc, _ = ced_auc_fr([0.00505], 0.1)
    assert auc == pytest.approx((0.1 - 0.0051 + 2 * h / 3) / 0.1, abs=1e-12)


def test_ced_fr_counts_equal_threshold_as_success() -> None:
    # FaRL: success iff nme <= x, so nme == threshold is not a failure
    _, fr = ced_auc_fr([0.1, 0.1000001, 0.0], 0.1)
    assert fr == pytest.approx(1 / 3)


def test_ced_matches_farl_formula() -> None:
    # FaRL's AUC_FR.finalize_evaluation, written out (same grid and counting, scipy's Simpson)
    from scipy.integrate import simpson

    nmes = np.random.default_rng(0).gamma(2.0, 0.02, size=200)
    for threshold in (0.08, 0.1):
        xaxis = list(np.arange(0.0, threshold + 1e-4, 1e-4))
        ced = [float(np.count_nonzero([nmes <= x])) / len(nmes) for x in xaxis]
        expected = (simpson(ced, x=xaxis) / threshold, 1.0 - ced[-1])
        assert ced_auc_fr(nmes, threshold) == pytest.approx(expected, abs=1e-12)


def test_ced_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ced_auc_fr([0.1], 0.10005)  # not a multiple of step
    with pytest.raises(ValueError):
        ced_auc_fr([], 0.1)
    with pytest.raises(ValueError):
        ced_auc_fr([0.1], -0.1)
