"""The telemetry wire protocol shared by agents and the daemon: topics and payloads.

Standard library only, so the agent library stays light. The daemon validates what arrives
against the models in :mod:`healer.monitor.telemetry`; ``docs/telemetry.md`` and
``docs/telemetry.schema.json`` describe the same thing for agents written in other languages.

Topics (``P`` is the configured prefix, ``healer`` by default; ``A`` an agent id)::

    P/agents/A/status      retained, QoS 1: {"state": "online"} on connect, "offline" as last will
    P/agents/A/heartbeat   QoS 0: {"ts": ..., "seq": ...} every interval
    P/agents/A/breaker     QoS 1: a circuit breaker changed state
    P/agents/A/report      QoS 1: a signal the agent reports (state corruption, model quality, ...)
    P/control/A            QoS 1, healer -> agent: {"cmd": "pause" | "resume", "id", "reload"}
    P/control/A/ack        QoS 1, agent -> healer: {"id", "state": "paused" | "resumed" | "error"}
    P/healer/C/status      retained: the daemon's own online/offline status (C: its client id)
    P/healer/C/events/T    QoS 1: every event the daemon records, T its type
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any, Final, Literal

VERSION: Final = 1
AGENT_KINDS: Final = ("status", "heartbeat", "breaker", "report")
BREAKER_STATES: Final = ("closed", "open", "half_open")
ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # agent ids: component names
DEPENDENCY_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}$")
KIND_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

BreakerState = Literal["closed", "open", "half_open"]


def agent_topic(prefix: str, agent: str, kind: str) -> str:
    return f"{prefix}/agents/{agent}/{kind}"


def agents_filter(prefix: str) -> str:
    """What the daemon subscribes to: everything agents publish (unknown topics are counted)."""
    return f"{prefix}/agents/#"


def control_topic(prefix: str, agent: str) -> str:
    """Requests from healer to one agent (outside ``P/agents/#``: agents publish there)."""
    return f"{prefix}/control/{agent}"


def control_ack_topic(prefix: str, agent: str) -> str:
    return f"{prefix}/control/{agent}/ack"


CONTROL_CMDS: Final = ("pause", "resume")
REQUEST_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.:/@-]{1,200}$")


def control_payload(cmd: str, request_id: str, *, reload: bool = False) -> bytes:
    return encode({"cmd": cmd, "id": request_id, "reload": reload, "ts": time.time()})


def parse_control(raw: bytes) -> dict[str, Any] | None:
    """A control request, validated; None for anything malformed (it is ignored, not obeyed)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("cmd") not in CONTROL_CMDS:
        return None
    rid = doc.get("id")
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
        return None
    return {"cmd": doc["cmd"], "id": rid, "reload": doc.get("reload") is True}


def ack_payload(request_id: str, state: str, detail: str | None = None) -> bytes:
    body: dict[str, Any] = {"id": request_id, "state": state, "ts": time.time()}
    if detail is not None:
        body["detail"] = detail[:500]
    return encode(body)


def healer_status_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/healer/{client_id}/status"


def healer_events_topic(prefix: str, client_id: str, event_type: str) -> str:
    return f"{prefix}/healer/{client_id}/events/{event_type}"


def parse_agent_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(agent, kind)`` for ``prefix/agents/AGENT/KIND``; None for anything else."""
    head = f"{prefix}/agents/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or parts[1] not in AGENT_KINDS or not ID_RE.match(parts[0]):
        return None
    return parts[0], parts[1]


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **payload}, separators=(",", ":"), allow_nan=False).encode()


def status_payload(state: Literal["online", "offline"], reason: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"state": state, **extra}
    if reason is not None:
        body["reason"] = reason
    return encode(body)


def heartbeat_payload(seq: int, ts: float | None = None) -> bytes:
    return encode({"ts": time.time() if ts is None else ts, "seq": seq})


def breaker_payload(
    dependency: str,
    state: str,
    failure_count: int,
    *,
    previous: str | None = None,
    seq: int | None = None,
    ts: float | None = None,
) -> bytes:
    state = normalize_breaker_state(state)
    if not DEPENDENCY_RE.match(dependency):
        raise ValueError(f"invalid dependency name {dependency!r}")
    body: dict[str, Any] = {
        "dependency": dependency,
        "state": state,
        "failure_count": int(failure_count),
        "ts": time.time() if ts is None else ts,
    }
    if previous is not None:
        body["previous"] = normalize_breaker_state(previous)
    if seq is not None:
        body["seq"] = seq
    return encode(body)


def report_payload(
    kind: str, value: Any = None, detail: str | None = None, *, ts: float | None = None
) -> bytes:
    if not KIND_RE.match(kind):
        raise ValueError(f"invalid report kind {kind!r}: use lower-case letters, digits and '_'")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a report value must be a finite number")
    body: dict[str, Any] = {"kind": kind, "value": value, "ts": time.time() if ts is None else ts}
    if detail is not None:
        body["detail"] = detail
    return encode(body)


def normalize_breaker_state(state: str) -> str:
    """pybreaker says ``half-open``; the wire says ``half_open``."""
    s = state.replace("-", "_").lower()
    if s not in BREAKER_STATES:
        raise ValueError(f"unknown breaker state {state!r}")
    return s
