"""Reconnect pacing shared by the agent library and the daemon's MQTT link."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter on the upper half of each step ("equal jitter").

    A fleet that lost its broker must not come back in lock-step, and a delay never drops
    below half its step, so a broker that accepts and drops connections is not hammered.
    Hand-written rather than stamina's retry loop: the daemon resets the pace as soon as a
    session is established, and logs an outage once rather than once per attempt.
    """

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = max(initial, 0.001)
        self.maximum = max(maximum, self.initial)
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311  pacing, not secrets

    def next(self) -> float:
        step = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.attempt = 0
