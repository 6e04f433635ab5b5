"""Fault injection for crash tests: the daemon kills itself (SIGKILL) at a named point.

``execute.fault_exit_at`` (env ``HEALER_EXECUTE__FAULT_EXIT_AT``) lists points as
``POINT:ACTUATOR[#ACTION_INDEX]``, comma-separated; ``*`` matches any actuator. Points, in the
order an action passes them:

- ``before-intent``             nothing recorded for the action yet
- ``after-intent``              ``step.started`` is durable; the actuator has not been called
- ``after-effect``              the actuator returned; its outcome is not recorded
- ``after-outcome``             ``step.succeeded`` is durable; the next action has not started
- ``after-compensation-intent`` ``compensation.started`` is durable; compensate not called
- ``after-compensation-effect`` the compensation returned; its outcome is not recorded
- ``after-undo-effect``        (dr, index = effect) a ledger compensation returned; not journaled

SIGKILL, not an exception or ``os._exit``: nothing in the process gets to clean up, exactly as
when the kernel's OOM killer or a power cut takes the daemon.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultPoint:
    point: str
    actuator: str
    index: int | None

    def matches(self, point: str, actuator: str, index: int) -> bool:
        return (
            self.point == point
            and self.actuator in ("*", actuator)
            and (self.index is None or self.index == index)
        )


class FaultPoints:
    def __init__(self, spec: str | None) -> None:
        self.points: list[FaultPoint] = []
        for raw in (spec or "").split(","):
            part = raw.strip()
            if not part:
                continue
            point, _, rest = part.partition(":")
            actuator, _, index = rest.partition("#")
            self.points.append(FaultPoint(point, actuator, int(index) if index else None))
        if self.points:
            log.warning("FAULT INJECTION ARMED: the daemon will SIGKILL itself at %s", spec)

    def hit(self, point: str, actuator: str, index: int) -> None:
        for fp in self.points:
            if fp.matches(point, actuator, index):
                log.critical("fault injection: SIGKILL at %s:%s#%d", point, actuator, index)
                for h in logging.getLogger().handlers:
                    h.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
