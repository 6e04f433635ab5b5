"""Circuit breakers around actuator calls: one per (actuator, target), through pybreaker.

pybreaker has no asyncio support; ``with breaker.calling(): await ...`` works because the
context manager only looks at how the block ends. Cancellation is not the target's fault, so
``asyncio.CancelledError`` is excluded. A closed breaker that reaches ``fail_max`` consecutive
failures opens: calls fail at once (no actuator call) until ``reset_timeout`` has passed; then
one trial call runs (half-open) and closes it on success or opens it again on failure.
Every state change is an event in the log (the listener submits it to the control loop).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pybreaker

from healer.clock import Clock
from healer.config import BreakerConfig
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T

log = logging.getLogger(__name__)

CircuitBreakerError = pybreaker.CircuitBreakerError


@dataclass(frozen=True)
class _Call:
    component: str | None
    incident: int | None
    key: str | None


_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("healer_breaker_call", default=None)

_EVENTS = {
    pybreaker.STATE_OPEN: T.BREAKER_OPENED,
    pybreaker.STATE_HALF_OPEN: T.BREAKER_HALF_OPENED,
    pybreaker.STATE_CLOSED: T.BREAKER_CLOSED,
}


class _Recorder(pybreaker.CircuitBreakerListener):
    def __init__(self, board: BreakerBoard, actuator: str, target: str) -> None:
        self.board = board
        self.actuator = actuator
        self.target = target

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        if self.board.quiet:
            return
        call = _current.get()
        old = getattr(old_state, "name", None)
        new = str(new_state.name)
        data = {
            "breaker": cb.name,
            "actuator": self.actuator,
            "target": self.target,
            "state": new,
            "from": old,
            "failures": cb.fail_counter,
            "fail_max": cb.fail_max,
            "reset_timeout": cb.reset_timeout,
            "idempotency_key": call.key if call else None,
        }
        self.board.submit(
            Event(
                _EVENTS.get(new, T.BREAKER_CLOSED),
                self.board.clock.wall(),
                call.component if call else None,
                call.incident if call else None,
                data,
            )
        )


class BreakerBoard:
    def __init__(self, config: BreakerConfig, submit: Callable[[Event], None], clock: Clock) -> None:
        self.config = config
        self.submit = submit
        self.clock = clock
        self.quiet = False
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}

    @staticmethod
    def name_of(actuator: str, target: str) -> str:
        return f"{actuator}:{target}"

    def get(self, actuator: str, target: str) -> pybreaker.CircuitBreaker:
        name = self.name_of(actuator, target)
        cb = self._breakers.get(name)
        if cb is None:
            cb = pybreaker.CircuitBreaker(
                fail_max=self.config.fail_max,
                reset_timeout=self.config.reset_timeout,
                exclude=[asyncio.CancelledError],
                listeners=[_Recorder(self, actuator, target)],
                name=name,
                throw_new_error_on_trip=False,  # the call that trips it reports its own error
            )
            self._breakers[name] = cb
        return cb

    @contextmanager
    def calling(
        self, actuator: str, target: str, component: str | None, incident: int | None, key: str | None
    ) -> Iterator[pybreaker.CircuitBreaker]:
        cb = self.get(actuator, target)
        token = _current.set(_Call(component, incident, key))
        try:
            with cb.calling():
                yield cb
        finally:
            _current.reset(token)

    def restore(self, states: Mapping[str, str]) -> None:
        """Breakers the log says were open when the previous daemon stopped start open again
        (their reset timeout counts from now): a restart is no way around an open breaker."""
        self.quiet = True
        try:
            for name, state in states.items():
                if state != pybreaker.STATE_CLOSED and ":" in name:
                    actuator, target = name.split(":", 1)
                    self.get(actuator, target).open()
        finally:
            self.quiet = False

    def states(self) -> dict[str, str]:
        return {name: str(cb.current_state) for name, cb in sorted(self._breakers.items())}
