"""Metrics derived from events (including families other issues add), and the endpoint's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from healer.config import load_config
from healer.errors import ConfigError
from healer.knowledge.events import RecordedEvent
from healer.metrics import Metrics


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_generic_families_become_series() -> None:
    m = Metrics()
    feed = [
        RecordedEvent(
            1, "breaker.transitioned", 1.0, "agent-a", None, {"dependency": "llm", "state": "open"}
        ),
        RecordedEvent(2, "breaker.closed", 2.0, "agent-b", None, {"breaker": "vector-db"}),
        RecordedEvent(3, "incident.deferred", 3.0, "agent-a", 1, {"guardrail": "budget.max_concurrent"}),
        RecordedEvent(4, "incident.deferred", 4.0, "agent-b", 2, {"guardrail": "cooldown"}),
        RecordedEvent(5, "incident.deferred", 5.0, "agent-c", 3, {"guardrail": "cooldown"}),
        RecordedEvent(6, "mqtt.connected", 6.0, None, None, {}),
        RecordedEvent(7, "mqtt.disconnected", 7.0, None, None, {}),
    ]
    for rec in feed:
        m.on_recorded(rec)
    assert sample(m, "healer_breaker_state", component="agent-a", breaker="llm", state="open") == 1
    assert sample(m, "healer_breaker_state", component="agent-a", breaker="llm", state="closed") == 0
    assert sample(m, "healer_breaker_state", component="agent-b", breaker="vector-db", state="closed") == 1
    assert sample(m, "healer_guardrail_blocks_total", guardrail="cooldown") == 2
    assert sample(m, "healer_guardrail_blocks_total", guardrail="budget.max_concurrent") == 1
    assert sample(m, "healer_mqtt_connected") == 0
    assert sample(m, "healer_events_total", type="incident.deferred") == 3
    assert sample(m, "healer_event_log_position") == 7


def test_incident_lifecycle_series() -> None:
    m = Metrics()
    feed = [
        RecordedEvent(
            1,
            "component.failed",
            10.0,
            "a",
            None,
            {
                "failing": ["http#1"],
                "since": 7.5,
                "probes": {"http#1": {"status": "failing"}, "process#0": {"status": "passing"}},
            },
        ),
        RecordedEvent(2, "incident.detected", 10.0, "a", 1, {}),
        RecordedEvent(3, "incident.diagnosed", 10.0, "a", 1, {"failure_class": "hang"}),
        RecordedEvent(4, "step.failed", 11.0, "a", 1, {"actuator": "process", "action": "restart"}),
        RecordedEvent(5, "incident.escalated", 12.0, "a", 1, {"reason": "exhausted"}),
        RecordedEvent(
            6, "component.recovered", 20.0, "a", None, {"probes": {"http#1": {"status": "passing"}}}
        ),
        RecordedEvent(
            7,
            "incident.resolved",
            20.0,
            "a",
            1,
            {"resolution": "recovered after escalation", "rto_achieved": 10.0},
        ),
    ]
    for rec in feed[:5]:
        m.on_recorded(rec)
    assert sample(m, "healer_incidents_open") == 0, "escalated: a human owns it"
    assert sample(m, "healer_component_healthy", component="a") == 0
    assert sample(m, "healer_probe_passing", component="a", probe="http#1") == 0
    assert sample(m, "healer_detection_seconds_sum", failure_class="hang") == 2.5, "from the reported onset"
    for rec in feed[5:]:
        m.on_recorded(rec)
    assert sample(m, "healer_incidents_opened_total", failure_class="hang") == 1
    assert sample(m, "healer_incidents_escalated_total", failure_class="hang") == 1
    assert sample(m, "healer_actions_total", actuator="process", action="restart", outcome="failed") == 1
    assert (
        sample(
            m,
            "healer_incidents_resolved_total",
            failure_class="hang",
            resolution="recovered after escalation",
        )
        == 1
    )
    assert sample(m, "healer_recovery_seconds_sum", failure_class="hang") == 10.0
    assert sample(m, "healer_component_healthy", component="a") == 1


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "example.com"])
def test_metrics_endpoint_must_be_loopback(tmp_path: Path, address: str) -> None:
    cfg = tmp_path / "healer.yaml"
    cfg.write_text(f"state_dir: s\npolicies_dir: p\nmetrics:\n  enabled: true\n  address: {address}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "healer.yaml:5" in str(err.value) and "metrics.address" in str(err.value)
    assert "loopback" in str(err.value)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "127.0.0.53"])
def test_loopback_addresses_are_accepted(tmp_path: Path, address: str) -> None:
    cfg = tmp_path / "healer.yaml"
    cfg.write_text(f"state_dir: s\npolicies_dir: p\nmetrics:\n  enabled: true\n  address: '{address}'\n")
    assert load_config(cfg).metrics.address == address


def test_a_taken_metrics_port_stops_the_daemon_with_a_clear_error(tmp_path: Path) -> None:
    import socket

    from tests.helpers import DaemonProcess, write_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path, "", extra=f"metrics:\n  enabled: true\n  port: {port}\n")
        cfg.write_text(cfg.read_text().replace("components:\n", "components: {}\n"))  # an empty fleet
        d = DaemonProcess(cfg)
        try:
            rc = d.proc.wait(30)
        finally:
            d.kill()
    assert rc == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in d.output()
