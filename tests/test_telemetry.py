"""Telemetry routing without a broker: validation, drop accounting, liveness, the schema file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from healer.agent import protocol
from healer.clock import ManualClock
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T
from healer.monitor.telemetry import (
    DropCounter,
    TelemetryBook,
    TelemetryRouter,
    telemetry_json_schema,
)

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "telemetry.schema.json"


def make_router(clock: ManualClock | None = None) -> tuple[TelemetryRouter, list[Event]]:
    clock = clock or ManualClock()
    got: list[Event] = []
    book = TelemetryBook(clock)
    drops = DropCounter(clock, interval=10.0)
    return TelemetryRouter("healer", 4096, book, drops, got.append, clock, {"agent-a": "comp-a"}), got


def topic(kind: str, agent: str = "agent-a") -> str:
    return protocol.agent_topic("healer", agent, kind)


def test_breaker_transitions_become_observations_on_the_agents_component() -> None:
    router, got = make_router()
    router.handle(
        topic("breaker"), protocol.breaker_payload("vector-db", "open", 5, previous="closed", seq=7)
    )
    router.handle(
        topic("breaker"), protocol.breaker_payload("vector-db", "half-open", 0, previous="open", seq=8)
    )
    assert [e.type for e in got] == [T.BREAKER_TRANSITIONED] * 2
    first = got[0]
    assert first.component == "comp-a"
    assert {
        k: first.data[k] for k in ("agent", "dependency", "state", "failure_count", "previous", "seq")
    } == {
        "agent": "agent-a",
        "dependency": "vector-db",
        "state": "open",
        "failure_count": 5,
        "previous": "closed",
        "seq": 7,
    }
    assert isinstance(first.data["agent_ts"], float)
    assert got[1].data["state"] == "half_open"


def test_reports_become_agent_reported_observations() -> None:
    router, got = make_router()
    router.handle(topic("report"), protocol.report_payload("state_corruption", "checksum", "ckpt 41 bad"))
    router.handle(topic("report"), protocol.report_payload("quality", 0.31))
    assert [e.type for e in got] == [T.AGENT_REPORTED] * 2
    assert got[0].data["kind"] == "state_corruption" and got[0].data["detail"] == "ckpt 41 bad"
    assert got[1].data["value"] == 0.31 and got[1].component == "comp-a"


BAD: list[tuple[str, bytes, str]] = [
    (topic("breaker"), b"\xff\xfe not utf-8", "malformed"),
    (topic("breaker"), b"{not json", "malformed"),
    (topic("breaker"), b"[" * 5000 + b"]" * 5000, "oversized"),
    (topic("report"), b"[" * 1500 + b"]" * 1500, "malformed"),  # deep nesting: no RecursionError escapes
    (topic("breaker"), b"[1, 2]", "invalid"),
    (topic("breaker"), b'{"dependency": "db", "state": "broken", "failure_count": 1, "ts": 1}', "invalid"),
    (topic("breaker"), b'{"dependency": "db", "state": "open", "failure_count": "3", "ts": 1}', "invalid"),
    (topic("breaker"), b'{"dependency": "db", "state": "open", "failure_count": true, "ts": 1}', "invalid"),
    (topic("breaker"), b'{"dependency": "db", "state": "open", "failure_count": 1, "ts": NaN}', "invalid"),
    (topic("breaker"), b'{"dependency": "a b", "state": "open", "failure_count": 1, "ts": 1}', "invalid"),
    (topic("heartbeat"), b'{"v": 2}', "invalid"),
    (topic("status"), b'{"state": "sleeping"}', "invalid"),
    (topic("report"), b'{"kind": "Not A Kind"}', "invalid"),
    (topic("report"), b'{"kind": "quality", "value": {"nested": 1}}', "invalid"),
    ("healer/agents/agent-a/unknown", b"{}", "unknown_topic"),
    ("healer/agents/agent-a/heartbeat/extra", b"{}", "unknown_topic"),
    ("healer/agents/bad id/heartbeat", b"{}", "unknown_topic"),
    ("healer/agents", b"{}", "unknown_topic"),
    (topic("heartbeat", "ghost"), b"{}", "unknown_agent"),
]


def test_bad_input_is_counted_per_reason_and_never_raises() -> None:
    router, got = make_router()
    for t, payload, _ in BAD:
        router.handle(t, payload)
    assert got == []
    expected: dict[str, int] = {}
    for _, _, reason in BAD:
        expected[reason] = expected.get(reason, 0) + 1
    assert router.drops.totals == expected
    summary = router.drops.summary(123.0)
    assert summary is not None and summary.type == T.TELEMETRY_DROPPED
    assert summary.data["dropped"] == dict(sorted(expected.items()))
    assert summary.data["received"] == len(BAD)
    assert router.drops.summary(124.0) is None, "nothing new: no second summary"


def test_drops_are_logged_at_most_once_per_interval_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    router, _ = make_router(clock)
    with caplog.at_level(logging.WARNING, logger="healer.telemetry"):
        for _ in range(500):
            router.handle(topic("breaker"), b"garbage")
            router.handle(topic("breaker", "ghost"), b"{}")
        assert len(caplog.records) == 2
        clock.advance(10.0)
        router.handle(topic("breaker"), b"garbage")
    assert len(caplog.records) == 3
    assert "+499 more" in caplog.records[-1].getMessage()
    assert router.drops.totals == {"malformed": 501, "unknown_agent": 500}


def test_heartbeats_read_without_the_model_agree_with_the_schema() -> None:
    """The plain-heartbeat shortcut accepts a subset of what the model accepts, with the same
    values; whatever it declines still goes through the schema and is counted when bad."""
    import itertools

    from pydantic import ValidationError

    from healer.monitor.telemetry import HeartbeatPayload, _plain_heartbeat

    values: list[Any] = [None, 0, 1, -1, 1.0, 2.5, -0.5, True, "1", 1e308, 10**30, [], {}]
    shortcut = 0
    for n in range(4):
        for keys in itertools.combinations(["v", "ts", "seq", "extra"], n):
            for combo in itertools.product(values, repeat=len(keys)):
                raw = json.dumps(dict(zip(keys, combo, strict=True))).encode()
                fast = _plain_heartbeat(raw)
                try:
                    model = HeartbeatPayload.model_validate(json.loads(raw))
                except ValidationError:
                    assert fast is None, raw
                    continue
                if fast is not None:
                    shortcut += 1
                    assert fast == (model.seq, model.ts), raw
    assert shortcut > 50, "the plain shapes do take the shortcut"
    for raw in (b'{"ts": NaN}', b'{"ts": Infinity}', b'{"ts": 1e999}', b"\xff", b"[]", b'{"seq": -1}'):
        assert _plain_heartbeat(raw) is None, raw
    router, got = make_router()
    router.handle(topic("heartbeat"), b'{"v":1,"ts":12.5,"seq":7}')
    live = router.book.agents["agent-a"]
    assert (live.seq, live.agent_ts) == (7, 12.5)
    router.handle(topic("heartbeat"), b'{"seq": -3}')
    router.handle(topic("heartbeat"), b'{"ts": NaN}')
    router.handle(topic("heartbeat"), b'{"seq": 8, "agent_version": "2.0"}')  # newer agent: extra key
    assert router.drops.totals == {"invalid": 2}, (
        "counted as before the shortcut (NaN: valid JSON to json.loads)"
    )
    assert router.book.agents["agent-a"].seq == 8 and got == []


def test_liveness_and_last_will_reach_watchers() -> None:
    clock = ManualClock()
    router, _ = make_router(clock)
    heard: list[str] = []
    router.book.watch("agent-a", heard.append)
    router.handle(topic("heartbeat"), protocol.heartbeat_payload(1))
    assert router.book.agents["agent-a"].seq == 1 and heard == []
    router.handle(topic("status"), protocol.status_payload("offline", "last_will"))
    assert heard == ["offline"] and router.book.agents["agent-a"].offline
    assert router.book.agents["agent-a"].offline_reason == "last_will"
    clock.advance(1)
    router.handle(topic("status"), b"online")  # the bare word works too
    assert heard == ["offline", "alive"] and not router.book.agents["agent-a"].offline
    router.handle(topic("status"), b"offline")
    assert heard[-1] == "offline"


def test_the_schema_file_is_generated_from_the_models() -> None:
    on_disk = json.loads(SCHEMA_FILE.read_text())
    assert on_disk == telemetry_json_schema(), (
        "docs/telemetry.schema.json is stale: regenerate it (see docs/telemetry.md)"
    )


def _schema_for(kind: str) -> dict[str, Any]:
    schema = json.loads(SCHEMA_FILE.read_text())
    return {**schema, "anyOf": [{"$ref": f"#/$defs/{kind}"}]}


def test_what_the_agent_library_sends_is_valid_by_the_published_schema() -> None:
    samples = {
        "status": [
            protocol.status_payload("online", pid=1, ts=1.0),
            protocol.status_payload("offline", "last_will"),
        ],
        "heartbeat": [protocol.heartbeat_payload(3)],
        "breaker": [protocol.breaker_payload("model-api", "half-open", 0, previous="open", seq=2)],
        "report": [
            protocol.report_payload("quality", 0.5, "eval"),
            protocol.report_payload("state_corruption"),
        ],
    }
    for kind, payloads in samples.items():
        for payload in payloads:
            jsonschema.validate(json.loads(payload), _schema_for(kind))
    router, got = make_router()
    for kind, payloads in samples.items():
        for payload in payloads:
            router.handle(topic(kind), payload)
    assert router.drops.totals == {}
    assert len(got) == 3


def test_the_schema_rejects_what_the_daemon_rejects() -> None:
    for t, payload, reason in BAD:
        if reason != "invalid":
            continue
        kind = t.rsplit("/", 1)[1]
        try:
            doc = json.loads(payload, parse_constant=_not_json)
        except ValueError:
            continue  # NaN: not JSON by the JSON spec, which the schema cannot speak about
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, _schema_for(kind))


def _not_json(word: str) -> Any:
    raise ValueError(f"{word} is not JSON")
