"""The learning-rate curve shared by the flow trainer and the VAE trainer.

A function of the step alone (no scheduler object with state), so a resumed run continues the same
curve, and a run extended to more steps continues on the longer one.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def lr_at_step(base: float, step: int, total: int, *, warmup: int = 0, schedule: str = "constant") -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    ``warmup`` > 0 ramps linearly to ``base`` over its first steps. ``cosine`` then decays to 1% of
    ``base`` at ``total``. Why decay at all: with a constant rate and a short EMA the last weights
    are noisy; on the nano study the placement it learned had to be read off a moving target.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if schedule == "cosine":
        frac = min(max(step / max(total, 1), 0.0), 1.0)
        factor *= 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * frac))
    return base * factor
