"""What the MQTT link queues for the broker: the event feed's payloads and the bounded outbox.

The delivery itself (reconnect, re-subscribe, buffered messages in order) is tested against a
real broker in tests/test_mqtt_e2e.py; these pin the parts a broker cannot show cheaply."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from healer.clock import ManualClock
from healer.config import HealerConfig
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.monitor.mqtt import MqttLink, Outbox


def _link(tmp: Path, **mqtt: object) -> MqttLink:
    cfg = HealerConfig.model_validate(
        {
            "state_dir": tmp / "state",
            "policies_dir": tmp / "policies",
            "components": {"svc": {}},
            "mqtt": {"host": "127.0.0.1", "client_id": "h1", **mqtt},
        }
    )
    emitted: list[Event] = []
    return MqttLink.from_config(cfg, emitted.append, ManualClock())


def _recorded() -> RecordedEvent:
    return RecordedEvent(
        position=42,
        type=T.INCIDENT_DIAGNOSED,
        ts=1_764_900_000.25,
        component="svc",
        incident=7,
        data={"class": "crash", "roots": ["svc"], "evidence": {"exit_code": -9, "é": None}},
    )


def test_each_recorded_event_is_queued_as_the_log_prints_it(tmp_path: Path) -> None:
    link = _link(tmp_path)
    rec = _recorded()
    link.publish_event(rec)
    assert len(link.outbox) == 1
    queued = asyncio.run(link.outbox.head(timeout=0.01))
    assert queued is not None
    topic, payload, qos, retain = queued
    assert topic == f"healer/healer/h1/events/{T.INCIDENT_DIAGNOSED}"
    assert (qos, retain) == (1, False)
    # The same document as `healer log --json` (sorted keys), compact, UTF-8.
    assert json.loads(payload) == rec.as_dict()
    assert payload.decode() == json.dumps(
        rec.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def test_no_event_feed_when_switched_off(tmp_path: Path) -> None:
    link = _link(tmp_path, publish_events=False)
    link.publish_event(_recorded())
    assert len(link.outbox) == 0


def test_a_full_outbox_drops_the_oldest_and_counts_it() -> None:
    dropped: list[str] = []

    async def scenario() -> None:
        box = Outbox(2, dropped.append)
        box.put("t/1", b"1")
        head = await box.head(timeout=0.1)
        assert head is not None and head[0] == "t/1"
        box.put("t/2", b"2")
        box.put("t/3", b"3")  # full: t/1 goes, though it is the one being published
        assert dropped == ["t/1"] and box.dropped == 1
        box.done(head)  # its acknowledgement must not take t/2 with it
        assert len(box) == 2
        nxt = await box.head(timeout=0.1)
        assert nxt is not None and nxt[0] == "t/2"
        box.done(nxt)
        last = await box.head(timeout=0.1)
        assert last is not None and last[0] == "t/3"
        box.done(last)
        assert await box.drained(timeout=0.1)
        assert await box.head(timeout=0.01) is None

    asyncio.run(scenario())
