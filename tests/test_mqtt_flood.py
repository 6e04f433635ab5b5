"""10,000 random payloads (hypothesis) on the telemetry topics of a running daemon: it stays
up, keeps healing, and its drop counters account for every message, reason by reason."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.broker import Broker
from tests.helpers import (
    agent_component,
    component_pid,
    events,
    free_port,
    healer_cli,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)
from tests.test_mqtt_e2e import mqtt_section

MAX_PAYLOAD = 2048
BATCH = 100
EXAMPLES = 100  # 100 x 100 = 10,000 payloads

_kinds = st.sampled_from(["heartbeat", "status", "breaker", "report"])
_text = st.text(max_size=30)
_states = st.sampled_from(["closed", "open", "half_open"])
_deps = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")


def _t(agent: str, kind: str) -> str:
    return f"healer/agents/{agent}/{kind}"


# Each strategy yields (expected outcome, topic, payload); outcomes are known by construction.
valid_breaker = st.builds(
    lambda dep, state, prev, n, ts: (
        "breaker",
        _t("flood", "breaker"),
        json.dumps(
            {"dependency": dep, "state": state, "previous": prev, "failure_count": n, "ts": ts}
        ).encode(),
    ),
    _deps,
    _states,
    _states,
    st.integers(0, 10**6),
    st.floats(0, 2e9),
)
valid_report = st.builds(
    lambda kind, value, detail: (
        "report",
        _t("flood", "report"),
        json.dumps({"kind": kind, "value": value, "detail": detail}).encode(),
    ),
    st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z"),
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    _text,
)
valid_heartbeat = st.builds(
    lambda seq: ("heartbeat", _t("flood", "heartbeat"), json.dumps({"seq": seq, "ts": 1.0}).encode()),
    st.integers(0, 10**9),
)
not_utf8 = st.builds(lambda k, b: ("malformed", _t("flood", k), b"\xff" + b), _kinds, st.binary(max_size=200))
not_json = st.builds(lambda k, s: ("malformed", _t("flood", k), ("<" + s).encode()), _kinds, _text)
not_object = st.builds(
    lambda k, v: ("invalid", _t("flood", k), json.dumps(v).encode()),
    st.sampled_from(["breaker", "report"]),
    st.lists(st.integers(), max_size=5) | st.integers() | _text | st.booleans(),
)
wrong_field = st.builds(
    lambda field, bad: (
        "invalid",
        _t("flood", "breaker"),
        json.dumps({"dependency": "db", "state": "open", "failure_count": 1, "ts": 1.0, field: bad}).encode(),
    ),
    st.sampled_from(["dependency", "state", "failure_count", "ts"]),
    st.sampled_from([None, "", "not a state", -1, [], {}, "3 x", True, -5.0]),
)  # every combination breaks the schema: all required, typed, constrained
random_object = st.builds(
    lambda d: ("invalid", _t("flood", "report"), json.dumps(d).encode()),
    st.dictionaries(_text.filter(lambda k: k != "kind"), st.integers() | _text, max_size=5),
)
oversized = st.builds(
    lambda k, n: ("oversized", _t("flood", k), b"{" + b" " * (MAX_PAYLOAD + n) + b"}"),
    _kinds,
    st.integers(0, 5000),
)
unknown_topic = st.builds(
    lambda suffix: ("unknown_topic", f"healer/agents/flood/{suffix}", b"{}"),
    st.from_regex(r"\A[a-z]{1,12}(/[a-z]{1,5})?\Z").filter(
        lambda s: s not in ("heartbeat", "status", "breaker", "report")
    ),
)
unknown_agent = st.builds(
    lambda n, k: ("unknown_agent", _t(f"ghost-{n}", k), b'{"seq": 1}'),
    st.integers(0, 999),
    _kinds,
)
payloads = st.one_of(
    valid_breaker,
    valid_report,
    valid_heartbeat,
    not_utf8,
    not_json,
    not_object,
    wrong_field,
    random_object,
    oversized,
    unknown_topic,
    unknown_agent,
)


def test_ten_thousand_random_payloads_are_counted_and_the_daemon_keeps_healing(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    # The broker must not drop messages on the way to healer for the counts to be exact.
    broker = Broker(tmp_path / "broker", extra_conf="max_queued_messages 0\nmax_inflight_messages 0\n")
    broker.start()
    svc_port = free_port()
    comps = "  flood:\n    labels: {role: telemetry-target}\n" + agent_component("svc", svc_port)
    cfg = write_config(
        tmp_path,
        comps,
        extra=mqtt_section(broker, max_payload=MAX_PAYLOAD, incoming_queue=1_000_000, outbox_size=1_000_000),
    )
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder")
    pub.max_inflight_messages_set(200)
    pub.max_queued_messages_set(0)
    sent: Counter[str] = Counter()
    try:
        with running_daemon(cfg) as d:
            state = d.state_dir
            wait_for(lambda: events(state, "mqtt.connected") and is_healthy(state, "svc"), what="ready")
            pub.connect(broker.host, broker.port)
            pub.loop_start()

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(st.lists(payloads, min_size=BATCH, max_size=BATCH))
            def flood(batch: list[tuple[str, str, bytes]]) -> None:
                for outcome, topic, payload in batch:
                    pub.publish(topic, payload, qos=1)
                    sent[outcome] += 1

            flood()
            total = sum(sent.values())
            assert total >= 10_000
            # Healing goes on under the flood.
            old = component_pid(state, "svc")
            assert old is not None
            os.kill(old, signal.SIGKILL)
            # A last, known-bad message closes the count: its summary carries the final total.
            pub.publish("healer/agents/flood/breaker", b"end", qos=1).wait_for_publish(30)
            total += 1
            sent["malformed"] += 1

            def final() -> Any:
                summaries = events(state, "telemetry.dropped")
                return summaries and summaries[-1]["data"]["received_total"] == total

            wait_for(final, timeout=60, what="every message accounted for")
            wait_for(lambda: events(state, "incident.resolved", "svc"), what="svc healed during the flood")
            assert d.proc.poll() is None, "the daemon stays up"
            assert d.stop() == 0
        dropped: Counter[str] = Counter()
        for summary in events(state, "telemetry.dropped"):
            dropped.update(summary["data"]["dropped"])
        expected = {k: v for k, v in sent.items() if k not in ("breaker", "report", "heartbeat")}
        assert dict(dropped) == expected
        assert len(events(state, "breaker.transitioned", "flood")) == sent["breaker"]
        assert len(events(state, "agent.reported", "flood")) == sent["report"]
        accepted = sent["breaker"] + sent["report"] + sent["heartbeat"]
        assert sum(dropped.values()) + accepted == total
        status = json.loads(healer_cli("status", "--state-dir", str(state), "--json").stdout)
        assert status["telemetry_dropped"] == dict(sorted(expected.items()))
        print(f"flood: {total} messages, {dict(sent)}")
    finally:
        pub.loop_stop()
        broker.kill()
