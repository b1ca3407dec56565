"""One schedule for every scheduled value (learning rate, EMA momentum, ...): warm-up, then cosine.

As DINOv2's ``CosineScheduler``: the learning rate goes ``0 -> base`` linearly over the warm-up and
then ``base -> final`` along a half cosine; MCF's and BYOL's momentum goes ``base -> final`` (``1``)
along the same curve with no warm-up; ``kind="constant"`` holds ``base``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("cosine", "constant")


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


@dataclass(frozen=True)
class Schedule:
    """A scheduled value: ``kind`` ``cosine`` (see :func:`cosine_schedule`) or ``constant`` (``base``)."""

    base: float
    final: float = 0.0
    warmup_steps: int = 0
    kind: str = "cosine"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {', '.join(SCHEDULE_KINDS)}, got {self.kind!r}")

    def at(self, step: int, total_steps: int) -> float:
        """The value at optimizer step ``step`` of ``total_steps``."""
        if self.kind == "constant":
            return self.base
        return cosine_schedule(step, total_steps, self.base, self.final, self.warmup_steps)
