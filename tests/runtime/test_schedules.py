import itertools
import math

import pytest

from facerep.runtime.schedules import Schedule, cosine_schedule


def test_learning_rate_warms_up_linearly_then_follows_a_half_cosine():
    lr = [cosine_schedule(s, 10, base=1.0, final=0.1, warmup_steps=2) for s in range(11)]
    assert lr[:2] == [0.5, 1.0]  # base * (step + 1) / warmup
    assert lr[2] == 1.0 and lr[10] == pytest.approx(0.1)
    assert lr[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in itertools.pairwise(lr[2:]))


def test_momentum_rises_from_base_to_final_with_the_same_curve():
    momentum = Schedule(0.99, 1.0)
    assert momentum.at(0, 10) == pytest.approx(0.99)
    assert momentum.at(5, 10) == pytest.approx(0.995)
    assert momentum.at(10, 10) == pytest.approx(1.0) and momentum.at(12, 10) == pytest.approx(1.0)
    assert Schedule(0.99, 1.0, kind="constant").at(5, 10) == 0.99
    with pytest.raises(ValueError, match="schedule kind"):
        Schedule(0.99, kind="linear")


def test_step_schedule_warms_up_then_multiplies_by_gamma_at_each_milestone():
    lr = Schedule(1.0, warmup_steps=2, kind="step", milestones=(4, 8), gamma=0.5)
    assert [lr.at(s, 10) for s in range(10)] == [0.5, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert Schedule(0.99, kind="step").at(7, 10) == 0.99  # no milestones: constant, as MultiStepLR([])
    with pytest.raises(ValueError, match="sorted"):
        Schedule(1.0, kind="step", milestones=(8, 4))
