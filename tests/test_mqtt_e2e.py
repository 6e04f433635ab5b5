"""MQTT end to end: a real Mosquitto, a real daemon, real agent processes using healer.agent."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker import Broker, Subscriber
from tests.helpers import (
    PY,
    agent_component,
    component_pid,
    events,
    free_port,
    http_ok,
    is_healthy,
    running_daemon,
    wait_for,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent


def mqtt_section(broker: Broker, **over: Any) -> str:
    opts: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "client_id": "healer-test",
        "keepalive": 2,
        "reconnect_min": "0.1s",
        "reconnect_max": "0.5s",
        "drop_report_interval": "0.3s",
        **over,
    }
    return "mqtt:\n" + "".join(f"  {k}: {v}\n" for k, v in opts.items())


def mqtt_component(name: str, max_age: str = "1s", interval: str = "0.1s") -> str:
    return (
        f"  {name}:\n"
        "    probes:\n"
        "      - type: mqtt_heartbeat\n"
        f"        max_age: {max_age}\n"
        f"        interval: {interval}\n"
        "        failure_threshold: 1\n"
    )


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Spawn]:
    """Start real agent processes (tests/mqtt_agent.py); none survives the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, broker: Broker, *args: str) -> subprocess.Popen[bytes]:
        ready = tmp_path / f"{name}-{len(procs)}.ready"
        log = (tmp_path / f"{name}-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [
                PY,
                "-m",
                "tests.mqtt_agent",
                "--name",
                name,
                "--port",
                str(broker.port),
                "--ready-file",
                str(ready),
                *args,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        wait_for(lambda: ready.exists() or proc.poll() is not None, what=f"agent {name} connected")
        assert proc.poll() is None, f"agent {name} exited early"
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def last_of(state: Path, type_: str, component: str | None = None) -> Callable[[], Any]:
    return lambda: events(state, type_, component)


# -- liveness ---------------------------------------------------------------------------------------
def test_last_will_of_a_sigkilled_agent_fails_its_probe_within_100ms(
    tmp_path: Path, broker: Broker, agents: Spawn
) -> None:
    # max_age 30s: only the last will can explain a failure inside this test.
    cfg = write_config(tmp_path, mqtt_component("agent-w", max_age="30s"), extra=mqtt_section(broker))
    sub = Subscriber(broker, ["healer/agents/agent-w/status"])
    try:
        with running_daemon(cfg) as d:
            wait_for(last_of(d.state_dir, "mqtt.connected"), what="healer connected")
            agent = agents("agent-w", broker)
            wait_for(lambda: is_healthy(d.state_dir, "agent-w"), what="agent-w healthy")
            seen = len(sub.messages)
            agent.send_signal(signal.SIGKILL)
            will = sub.wait_for(lambda ms: [m for m in ms[seen:] if b'"last_will"' in m[2]], what="will")
            arrived = will[0][0]
            failed = wait_for(last_of(d.state_dir, "component.failed", "agent-w"), interval=0.005)
            durable_within = time.time() - arrived
            observed_within = failed[0]["ts"] - arrived
            probe = failed[0]["data"]["probes"]["mqtt_heartbeat#0"]
            assert probe["values"]["reason"] == "last_will" and probe["values"]["state"] == "offline"
            assert observed_within < 0.1, f"observed {observed_within * 1000:.1f} ms after the will arrived"
            # Durable in the log (fsync'd) and seen by this test's 5 ms polling: a fsync on a
            # busy shared disk can take tens of ms, hence a looser bound than for the observation.
            assert durable_within < 0.25, f"durable {durable_within * 1000:.1f} ms after the will arrived"
            observed_ms, durable_ms = observed_within * 1000, durable_within * 1000
            print(f"last will -> observation {observed_ms:.1f} ms, durable+poll {durable_ms:.1f} ms")
    finally:
        sub.close()


def test_an_agent_heard_only_through_its_retained_online_status_is_healthy(
    tmp_path: Path, broker: Broker
) -> None:
    """An agent that said ``online`` (retained) before healer connected and does not
    heart-beat is alive until max_age passes: its status counts from healer's connection."""
    import paho.mqtt.client as mqtt

    from healer.agent import protocol

    agent = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="quiet-agent")
    agent.connect(broker.host, broker.port)
    agent.loop_start()
    try:
        topic = protocol.agent_topic("healer", "agent-q", "status")
        agent.publish(topic, protocol.status_payload("online"), qos=1, retain=True).wait_for_publish(5)
        cfg = write_config(tmp_path, mqtt_component("agent-q", max_age="30s"), extra=mqtt_section(broker))
        with running_daemon(cfg) as d:
            wait_for(lambda: is_healthy(d.state_dir, "agent-q"), what="agent-q healthy from its status")
    finally:
        agent.loop_stop()
        agent.disconnect()


def test_a_stale_heartbeat_fails_the_probe(tmp_path: Path, broker: Broker, agents: Spawn) -> None:
    cfg = write_config(tmp_path, mqtt_component("agent-s", max_age="1s"), extra=mqtt_section(broker))
    with running_daemon(cfg) as d:
        wait_for(last_of(d.state_dir, "mqtt.connected"))
        # The agent's event loop blocks after 1s: no more heartbeats, yet its link stays open
        # (keepalive 60s), so no last will comes to help: only staleness can tell.
        agents("agent-s", broker, "--hang-after", "1.0")
        wait_for(lambda: is_healthy(d.state_dir, "agent-s"), what="agent-s healthy")
        failed = wait_for(last_of(d.state_dir, "component.failed", "agent-s"), what="stale heartbeat")
        values = failed[0]["data"]["probes"]["mqtt_heartbeat#0"]["values"]
        assert values["state"] == "online" and "reason" not in values
        assert values["age_s"] > 1.0 and values["seq"] >= 1
        assert "last heartbeat for" in failed[0]["data"]["probes"]["mqtt_heartbeat#0"]["detail"]


def test_healer_publishes_its_own_retained_status_and_last_will(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, mqtt_component("agent-x"), extra=mqtt_section(broker))
    with running_daemon(cfg) as d:
        wait_for(last_of(d.state_dir, "mqtt.connected"))
        sub = Subscriber(broker, ["healer/healer/healer-test/status"])
        try:
            online = sub.wait_for(lambda ms: [m for m in ms if b'"online"' in m[2]], what="retained online")
            assert online[0][3] is True, "a late subscriber gets it: it is retained"
            assert json.loads(online[0][2])["pid"] == d.proc.pid
            d.proc.kill()  # no goodbye: only the broker can tell the fleet
            d.proc.wait(10)
            will = sub.wait_for(lambda ms: [m for m in ms if b'"offline"' in m[2]], what="healer's last will")
            assert json.loads(will[0][2])["reason"] == "last_will"
        finally:
            sub.close()
    late = Subscriber(broker, ["healer/healer/healer-test/status"])
    try:
        retained = late.wait_for(lambda ms: ms, what="retained status")
        assert json.loads(retained[-1][2])["state"] == "offline" and retained[-1][3] is True
    finally:
        late.close()


# -- circuit breakers --------------------------------------------------------------------------------
def test_breaker_transitions_from_a_pybreaker_agent_are_recorded_in_order(
    tmp_path: Path, broker: Broker, agents: Spawn
) -> None:
    dep_port = free_port()  # nothing listens yet: the agent's calls to its dependency fail
    cfg = write_config(tmp_path, mqtt_component("agent-b", max_age="30s"), extra=mqtt_section(broker))
    with running_daemon(cfg) as d:
        wait_for(last_of(d.state_dir, "mqtt.connected"))
        agents("agent-b", broker, "--dep-port", str(dep_port), "--fail-max", "3", "--reset-timeout", "0.3")
        wait_for(last_of(d.state_dir, "breaker.transitioned", "agent-b"), what="breaker opened")
        with socket.socket() as dep:  # the dependency comes back
            dep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            dep.bind(("127.0.0.1", dep_port))
            dep.listen(64)
            closed = wait_for(
                lambda: [
                    e for e in events(d.state_dir, "breaker.transitioned") if e["data"]["state"] == "closed"
                ],
                what="breaker closed again",
            )
        trans = [
            e for e in events(d.state_dir, "breaker.transitioned") if e["position"] <= closed[0]["position"]
        ]
        data = [e["data"] for e in trans]
        assert all(
            e["component"] == "agent-b" and x["dependency"] == "dep-svc"
            for e, x in zip(trans, data, strict=True)
        )
        assert (data[0]["previous"], data[0]["state"], data[0]["failure_count"]) == ("closed", "open", 3)
        assert (data[-1]["previous"], data[-1]["state"], data[-1]["failure_count"]) == (
            "half_open",
            "closed",
            0,
        )
        for before, after in itertools.pairwise(data):
            assert after["previous"] == before["state"], f"out of order: {before} then {after}"
            assert after["seq"] == before["seq"] + 1, "none lost, none reordered"
            assert after["agent_ts"] >= before["agent_ts"]
        assert len(data) >= 3 and data[-2]["state"] == "half_open"


# -- reports ---------------------------------------------------------------------------------------
def test_agent_reports_are_recorded(tmp_path: Path, broker: Broker, agents: Spawn) -> None:
    cfg = write_config(tmp_path, mqtt_component("agent-r", max_age="30s"), extra=mqtt_section(broker))
    with running_daemon(cfg) as d:
        wait_for(last_of(d.state_dir, "mqtt.connected"))
        agents(
            "agent-r", broker, "--report", 'state_corruption="checksum mismatch"', "--report", "quality=0.25"
        )
        reports = wait_for(lambda: events(d.state_dir, "agent.reported")[1:], what="two reports")
        got = [(e["data"]["kind"], e["data"]["value"]) for e in events(d.state_dir, "agent.reported")]
        assert got == [("state_corruption", "checksum mismatch"), ("quality", 0.25)]
        assert reports[0]["component"] == "agent-r"


# -- broker outage ------------------------------------------------------------------------------------
def test_broker_outage_reconnects_resubscribes_delivers_buffered_and_keeps_healing(
    tmp_path: Path, agents: Spawn
) -> None:
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", persistence=True)
    broker.start()
    watcher: Subscriber | None = None
    try:
        svc_port = free_port()
        comps = agent_component("svc", svc_port) + mqtt_component("agent-o", max_age="1s")
        cfg = write_config(tmp_path, comps, extra=mqtt_section(broker, keepalive=1))
        # A fleet dashboard with a persistent session: what healer publishes while this client is
        # still reconnecting after the outage is queued for it by the broker.
        watcher = Subscriber(broker, ["healer/healer/+/events/#"], client_id="watcher", clean_session=False)
        subscribed_at = time.time()
        with running_daemon(cfg) as d:
            state = d.state_dir
            wait_for(last_of(state, "mqtt.connected"))
            agents("agent-o", broker, "--heartbeat-interval", "0.2")
            wait_for(lambda: is_healthy(state, "svc") and is_healthy(state, "agent-o"), what="fleet healthy")
            wait_for(lambda: broker.db.exists() and broker.db.stat().st_mtime > subscribed_at + 0.5)

            broker.kill()
            down_at = time.monotonic()
            down = wait_for(last_of(state, "mqtt.disconnected"), what="healer saw the outage")[0]

            # Local healing goes on without the broker.
            old = component_pid(state, "svc")
            assert old is not None
            os.kill(old, signal.SIGKILL)
            resolved = wait_for(last_of(state, "incident.resolved", "svc"), what="svc healed during outage")
            new = component_pid(state, "svc")
            assert new is not None and new != old and http_ok(svc_port)
            time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))  # the outage lasts several seconds
            assert not events(state, "component.failed", "agent-o"), (
                "a broker outage is not the agent's failure"
            )
            during = [e["position"] for e in events(state) if e["position"] >= down["position"]]
            assert resolved[0]["position"] in during

            broker.start()
            back = wait_for(lambda: events(state, "mqtt.connected")[1:], what="reconnected")[0]
            assert back["data"]["session"] == 2 and back["data"]["buffered"] >= len(during) - 1

            # Re-subscribed: telemetry published after the reconnect reaches the log.
            subprocess.run(
                [
                    "mosquitto_pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(broker.port),
                    "-q",
                    "1",
                    "-t",
                    "healer/agents/agent-o/report",
                    "-m",
                    '{"kind": "quality", "value": 1}',
                ],
                check=True,
                timeout=10,
            )
            wait_for(last_of(state, "agent.reported", "agent-o"), what="report after reconnect")
            wait_for(lambda: is_healthy(state, "agent-o"), what="agent-o still healthy")
            assert not events(state, "component.failed", "agent-o")

            # Buffered while the broker was down, delivered after it came back, in order.
            def delivered(msgs: list[tuple[float, str, bytes, bool]]) -> list[int] | None:
                got = [json.loads(m[2])["position"] for m in msgs]
                return got if set(during) <= set(got) else None

            got = watcher.wait_for(delivered, timeout=20, what="buffered events delivered")
            outage_part = [p for p in got if p in set(during)]
            assert outage_part == sorted(outage_part), "delivered in the order recorded"
            assert d.stop() == 0
    finally:
        if watcher is not None:
            watcher.close()
        broker.kill()
