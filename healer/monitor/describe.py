"""How the Monitor's events read to a person (``healer log``, the daemon's log)."""

from __future__ import annotations

from typing import Any

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.render import lines


@lines(T.COMPONENT_FAILED, level="warning")
def _failed(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{who}: health failing: {_probe_summary(rec.data)}"


@lines(T.COMPONENT_RECOVERED)
def _recovered(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{who}: healthy again"


@lines(T.PROBE_TRANSITIONED)
def _probe(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    detail = f": {d.get('detail')}" if d.get("detail") else ""
    return f"{who}: probe {d.get('probe')} {d.get('previous')} -> {d.get('status')}{detail}"


@lines(T.COMPONENT_BECAME_UNKNOWN, level="warning")
def _unknown(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"{who}: health unknown: probe error in {', '.join(rec.data.get('errored', [])) or '?'}"


@lines(T.BREAKER_TRANSITIONED)
def _breaker(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return (
        f"{who}: breaker on {d.get('dependency')} {d.get('previous') or '?'} -> {d.get('state')} "
        f"({d.get('failure_count')} failures)"
    )


@lines(T.AGENT_REPORTED)
def _reported(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    return f"{who}: reported {d.get('kind')} = {d.get('value')!r}" + (
        f" ({d['detail']})" if d.get("detail") else ""
    )


@lines(T.MQTT_CONNECTED)
def _mqtt_up(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    buffered = d.get("buffered", 0)
    return f"MQTT link to {d.get('broker')} up (session {d.get('session')}, {buffered} buffered)"


@lines(T.MQTT_DISCONNECTED, level="warning")
def _mqtt_down(rec: RecordedEvent, who: str, inc: str) -> str:
    return f"MQTT link to {rec.data.get('broker')} down: {rec.data.get('reason')}"


@lines(T.TELEMETRY_DROPPED, level="warning")
def _dropped(rec: RecordedEvent, who: str, inc: str) -> str:
    d = rec.data
    counts = ", ".join(f"{k} {v}" for k, v in dict(d.get("dropped", {})).items())
    return f"dropped bad telemetry: {counts} (of {d.get('received')} received)"


def _probe_summary(d: Any) -> str:
    probes = d.get("probes", {})
    parts = []
    for name in d.get("failing", []):
        detail = probes.get(name, {}).get("detail", "")
        parts.append(f"{name} ({detail})" if detail else name)
    return ", ".join(parts) or "probes failing"
