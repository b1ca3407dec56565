"""One schedule for every scheduled value (learning rate, EMA momentum, ...): warm-up, then cosine or steps.

As DINOv2's ``CosineScheduler``: the learning rate goes ``0 -> base`` linearly over the warm-up and
then ``base -> final`` along a half cosine; MCF's and BYOL's momentum goes ``base -> final`` (``1``)
along the same curve with no warm-up; ``kind="constant"`` holds ``base``; ``kind="step"`` is
``torch.optim.lr_scheduler.MultiStepLR`` (FaRL's fine-tuning schedule): ``base`` times ``gamma`` for
every milestone passed. Every value is a pure function of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("cosine", "constant", "step")


def cosine_schedule(
    step: int, total_steps: int, base: float, final: float = 0.0, warmup_steps: int = 0
) -> float:
    """Value at optimizer step ``step`` (0-based) of ``total_steps``.

    During the warm-up (``step < warmup_steps``) it rises linearly to ``base``: ``base * (step + 1) /
    warmup_steps``; then ``final + (base - final) * (1 + cos(pi * progress)) / 2`` with ``progress``
    going from 0 at the end of the warm-up to 1 at ``total_steps`` (and staying 1 after).
    """
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_schedule(
    step: int, base: float, milestones: tuple[int, ...], gamma: float, warmup_steps: int = 0
) -> float:
    """Value at optimizer step ``step`` (0-based): the same linear warm-up as :func:`cosine_schedule`,
    then ``base * gamma ** (number of milestones <= step)`` (``MultiStepLR``; milestones in steps, sorted).
    """
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    return base * gamma ** bisect.bisect_right(milestones, step)


@dataclass(frozen=True)
class Schedule:
    """A scheduled value: ``kind`` ``cosine`` (see :func:`cosine_schedule`), ``constant`` (``base``) or
    ``step`` (see :func:`step_schedule`; ``milestones`` in steps, without any it holds ``base``)."""

    base: float
    final: float = 0.0
    warmup_steps: int = 0
    kind: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {', '.join(SCHEDULE_KINDS)}, got {self.kind!r}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"schedule milestones must be sorted, got {list(self.milestones)}")

    def at(self, step: int, total_steps: int) -> float:
        """The value at optimizer step ``step`` of ``total_steps``."""
        if self.kind == "constant":
            return self.base
        if self.kind == "step":
            return step_schedule(step, self.base, self.milestones, self.gamma, self.warmup_steps)
        return cosine_schedule(step, total_steps, self.base, self.final, self.warmup_steps)
