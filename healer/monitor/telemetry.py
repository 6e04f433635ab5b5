"""Telemetry from agents: validate what arrives over MQTT and turn it into knowledge.

``TelemetryRouter.handle`` is called once per incoming message, synchronously, by the MQTT
link. Liveness (status and heartbeats) updates the in-memory :class:`TelemetryBook` that
``mqtt_heartbeat`` probes read; a last will reaches its probe at once through the book's
watchers. Breaker transitions and agent reports become observation events. Everything else
is bad input: counted per reason, logged at most once per interval, dropped. Nothing that
arrives can raise out of ``handle``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from healer.agent import protocol
from healer.clock import Clock
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T

log = logging.getLogger("healer.telemetry")

Emit = Callable[[Event], None]


class DropReason(StrEnum):
    OVERSIZED = "oversized"  # payload larger than mqtt.max_payload
    MALFORMED = "malformed"  # not UTF-8 JSON
    INVALID = "invalid"  # JSON, but not what the schema allows for the topic
    UNKNOWN_TOPIC = "unknown_topic"  # not P/agents/<id>/<status|heartbeat|breaker|report>
    UNKNOWN_AGENT = "unknown_agent"  # an agent id no configured component answers to
    QUEUE_FULL = "queue_full"  # incoming faster than healer reads: the client's queue overflowed
    OUTBOX_OVERFLOW = "outbox_overflow"  # outgoing, while the broker was away: oldest dropped


# -- payload models (docs/telemetry.schema.json is generated from these) ----------------------------
_FiniteTs = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Text = Annotated[str, StringConstraints(max_length=1000)]


class _Payload(BaseModel):
    # Unknown properties are ignored (agents may be newer than the daemon); known ones are strict.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    v: Literal[1] = 1


class StatusPayload(_Payload):
    """``P/agents/A/status`` (retained): ``online`` on connect, ``offline`` as the last will."""

    state: Literal["online", "offline"]
    reason: Annotated[str, StringConstraints(max_length=200)] | None = None
    ts: _FiniteTs | None = None


class HeartbeatPayload(_Payload):
    """``P/agents/A/heartbeat``: the agent is alive; ``seq`` increases by one per beat."""

    ts: _FiniteTs | None = None
    seq: Annotated[int, Field(ge=0)] | None = None


class BreakerPayload(_Payload):
    """``P/agents/A/breaker``: one of the agent's circuit breakers changed state."""

    dependency: Annotated[str, StringConstraints(pattern=protocol.DEPENDENCY_RE.pattern)]
    state: Literal["closed", "open", "half_open"]
    failure_count: Annotated[int, Field(ge=0)]
    ts: _FiniteTs
    previous: Literal["closed", "open", "half_open"] | None = None
    seq: Annotated[int, Field(ge=0)] | None = None
    detail: _Text | None = None


_Scalar = Annotated[float, Field(allow_inf_nan=False)] | int | bool | _Text | None


class ReportPayload(_Payload):
    """``P/agents/A/report``: a signal for Analyze (``state_corruption``, ``quality``, ...)."""

    kind: Annotated[str, StringConstraints(pattern=protocol.KIND_RE.pattern)]
    value: _Scalar = None
    detail: _Text | None = None
    ts: _FiniteTs | None = None


MODELS: dict[str, type[_Payload]] = {
    "status": StatusPayload,
    "heartbeat": HeartbeatPayload,
    "breaker": BreakerPayload,
    "report": ReportPayload,
}


def telemetry_json_schema() -> dict[str, Any]:
    """The JSON Schema of every agent payload, by topic kind (docs/telemetry.schema.json)."""
    defs: dict[str, Any] = {}
    for kind, model in MODELS.items():
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        schema["additionalProperties"] = True
        defs[kind] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://healer.invalid/telemetry.schema.json",
        "title": "healer agent telemetry",
        "description": (
            "Payloads agents publish to P/agents/<agent>/<kind>. Pick the definition by the topic's "
            "last level. The status topic also accepts the bare words online and offline."
        ),
        "$defs": defs,
        "anyOf": [{"$ref": f"#/$defs/{kind}"} for kind in MODELS],
    }


# -- liveness -------------------------------------------------------------------------------------
@dataclass
class Liveness:
    """What healer last heard from one agent (monotonic seconds, healer's clock)."""

    last_seen: float | None = None  # a heartbeat or an ``online`` status
    seq: int | None = None
    agent_ts: float | None = None
    offline_at: float | None = None
    offline_reason: str | None = None

    @property
    def offline(self) -> bool:
        return self.offline_at is not None and (self.last_seen is None or self.offline_at >= self.last_seen)


Watcher = Callable[[str], None]  # called with "offline" or "alive"


@dataclass
class TelemetryBook:
    """Liveness per agent plus the link's own state; ``mqtt_heartbeat`` probes read it."""

    clock: Clock
    agents: dict[str, Liveness] = field(default_factory=dict)
    connected_since: float | None = None  # None while healer has no broker connection
    _watchers: dict[str, list[Watcher]] = field(default_factory=dict)

    def now(self) -> float:
        return self.clock.monotonic()

    def watch(self, agent: str, watcher: Watcher) -> None:
        self._watchers.setdefault(agent, []).append(watcher)

    def watched(self) -> frozenset[str]:
        return frozenset(self._watchers)

    def set_connected(self, connected: bool) -> None:
        self.connected_since = self.now() if connected else None

    def alive(self, agent: str, seq: int | None = None, agent_ts: float | None = None) -> None:
        live = self.agents.setdefault(agent, Liveness())
        was_offline = live.offline
        live.last_seen = self.now()
        live.seq = seq if seq is not None else live.seq
        live.agent_ts = agent_ts if agent_ts is not None else live.agent_ts
        if was_offline:
            self._notify(agent, "alive")

    def offline(self, agent: str, reason: str | None) -> None:
        live = self.agents.setdefault(agent, Liveness())
        live.offline_at = self.now()
        live.offline_reason = reason
        self._notify(agent, "offline")

    def _notify(self, agent: str, what: str) -> None:
        for watcher in self._watchers.get(agent, ()):
            try:
                watcher(what)
            except Exception:  # one broken probe must not keep the others from hearing it
                log.exception("telemetry watcher for %s failed", agent)


# -- bad input --------------------------------------------------------------------------------------
class DropCounter:
    """Counts dropped input per reason; logs each reason at most once per interval.

    ``summary`` returns the ``telemetry.dropped`` event for everything dropped since the last
    one (or None if nothing was): the daemon records it at most once per interval, so the
    counts are in the log and ``healer status`` can show them.
    """

    def __init__(self, clock: Clock, interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self.totals: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.received = 0  # every incoming message, good or bad
        self._received_reported = 0
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._examples: dict[str, str] = {}

    def drop(self, reason: DropReason, topic: str, detail: str) -> None:
        self.pending[reason] = self.pending.get(reason, 0) + 1
        self.totals[reason] = self.totals.get(reason, 0) + 1
        example = f"{topic[:120]}: {detail[:200]}"
        self._examples.setdefault(reason, example)
        now = self.clock.monotonic()
        last = self._last_log.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        more = self._suppressed.pop(reason, 0)
        self._last_log[reason] = now
        log.warning(
            "dropped telemetry (%s) %s%s",
            reason,
            example,
            f" (+{more} more of this kind in the last {self.interval:g}s)" if more else "",
        )

    def summary(self, wall: float) -> Event | None:
        if not self.pending:
            return None
        data = {
            "dropped": dict(sorted(self.pending.items())),
            "totals": dict(sorted(self.totals.items())),
            "received": self.received - self._received_reported,
            "received_total": self.received,
            "examples": dict(sorted(self._examples.items())),
            "interval_s": self.interval,
        }
        self.pending.clear()
        self._examples.clear()
        self._received_reported = self.received
        return Event(T.TELEMETRY_DROPPED, wall, data=data)


# -- routing -----------------------------------------------------------------------------------------
class TelemetryRouter:
    def __init__(
        self,
        prefix: str,
        max_payload: int,
        book: TelemetryBook,
        drops: DropCounter,
        emit: Emit,
        clock: Clock,
        components: Mapping[str, str],
    ) -> None:
        """``components`` maps agent ids to the component their telemetry is recorded on."""
        self.prefix = prefix
        self.max_payload = max_payload
        self.book = book
        self.drops = drops
        self.emit = emit
        self.clock = clock
        self.components = dict(components)

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            self._handle(topic, payload)
        except Exception as exc:  # the loop reading the broker must never stop on input
            log.exception("telemetry handler failed on %s", topic[:120])
            self.drops.drop(DropReason.INVALID, topic, f"handler error {type(exc).__name__}")

    def _handle(self, topic: str, payload: bytes) -> None:
        self.drops.received += 1
        parsed = protocol.parse_agent_topic(self.prefix, topic)
        if parsed is None:
            self.drops.drop(DropReason.UNKNOWN_TOPIC, topic, "not an agent telemetry topic")
            return
        agent, kind = parsed
        if len(payload) > self.max_payload:
            self.drops.drop(DropReason.OVERSIZED, topic, f"{len(payload)} bytes > {self.max_payload}")
            return
        component = self.components.get(agent)
        if component is None:
            self.drops.drop(DropReason.UNKNOWN_AGENT, topic, f"no component answers to agent {agent!r}")
            return
        if kind == "heartbeat":
            beat = _plain_heartbeat(payload)
            if beat is not None:
                self.book.alive(agent, *beat)
                return
        msg = self._parse(kind, topic, payload)
        if msg is None:
            return
        if isinstance(msg, StatusPayload):
            if msg.state == "online":
                self.book.alive(agent, agent_ts=msg.ts)
            else:
                self.book.offline(agent, msg.reason)
        elif isinstance(msg, HeartbeatPayload):
            self.book.alive(agent, msg.seq, msg.ts)
        elif isinstance(msg, BreakerPayload):
            data: dict[str, Any] = {
                "agent": agent,
                "dependency": msg.dependency,
                "state": msg.state,
                "failure_count": msg.failure_count,
                "agent_ts": msg.ts,
            }
            for key in ("previous", "seq", "detail"):
                value = getattr(msg, key)
                if value is not None:
                    data[key] = value
            self.emit(Event(T.BREAKER_TRANSITIONED, self.clock.wall(), component=component, data=data))
        elif isinstance(msg, ReportPayload):
            data = {"agent": agent, "kind": msg.kind, "value": msg.value}
            if msg.detail is not None:
                data["detail"] = msg.detail
            if msg.ts is not None:
                data["agent_ts"] = msg.ts
            self.emit(Event(T.AGENT_REPORTED, self.clock.wall(), component=component, data=data))

    def _parse(self, kind: str, topic: str, payload: bytes) -> _Payload | None:
        if kind == "status" and payload in (b"online", b"offline"):
            return StatusPayload(state=payload.decode())  # type: ignore[arg-type]
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self.drops.drop(DropReason.MALFORMED, topic, f"not UTF-8 JSON: {type(exc).__name__}: {exc}")
            return None
        if not isinstance(doc, dict):
            self.drops.drop(DropReason.INVALID, topic, f"expected a JSON object, got {type(doc).__name__}")
            return None
        try:
            return MODELS[kind].model_validate(doc)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "payload"
            self.drops.drop(DropReason.INVALID, topic, f"{where}: {err['msg']}")
            return None


_BEAT_KEYS = frozenset(("v", "ts", "seq"))


def _plain_heartbeat(payload: bytes) -> tuple[int | None, float | None] | None:
    """``(seq, ts)`` of a heartbeat in its plain shape, without building a model; None for
    anything else, which then goes through the schema (and is counted if it is bad).

    Heartbeats are most of what a fleet sends (one per agent per interval). Accepted here is
    a subset of what :class:`HeartbeatPayload` accepts, with the same values: a JSON object
    with no other keys than ``v`` (exactly 1), ``ts`` (a finite number >= 0) and ``seq`` (an
    integer >= 0, not a boolean), each optional and possibly null.
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or not doc.keys() <= _BEAT_KEYS:
        return None
    v = doc.get("v", 1)
    if type(v) is not int or v != 1:
        return None
    seq = doc.get("seq")
    if seq is not None and (type(seq) is not int or seq < 0):
        return None
    ts = doc.get("ts")
    if ts is not None:
        if type(ts) is int:
            ts = float(ts)
        if type(ts) is not float or not (ts >= 0 and math.isfinite(ts)):
            return None
    return seq, ts
