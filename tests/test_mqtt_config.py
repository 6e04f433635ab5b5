"""MQTT settings: TLS with a client certificate and a password from the environment against a
real Mosquitto; configuration errors located in the file."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from healer.config import load_config
from healer.errors import ConfigError
from healer.monitor.probes import ProbeRegistry
from tests.broker import Broker
from tests.helpers import events, running_daemon, wait_for, write_config
from tests.test_mqtt_e2e import mqtt_component


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=healer-test-ca",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=healer-test-{name}",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            cwd=d,
        )


def test_tls_with_client_certificate_and_password_from_the_environment(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "healer", "s3cret"], check=True, timeout=30)
    (tmp_path / "broker").mkdir()
    conf = textwrap.dedent(
        f"""\
        allow_anonymous false
        password_file {passwd}
        cafile {pki / "ca.crt"}
        certfile {pki / "server.crt"}
        keyfile {pki / "server.key"}
        require_certificate true
        """
    )
    broker = Broker(tmp_path / "broker", extra_conf=conf)
    broker.start()
    try:
        # Relative TLS paths are resolved against the config file's directory.
        mqtt_cfg = textwrap.dedent(
            f"""\
            mqtt:
              host: 127.0.0.1
              port: {broker.port}
              client_id: healer-tls
              username: healer
              keepalive: 2
              reconnect_min: 0.1s
              reconnect_max: 0.5s
              tls:
                ca: pki/ca.crt
                cert: pki/client.crt
                key: pki/client.key
            """
        )
        cfg = write_config(tmp_path, mqtt_component("agent-t", max_age="30s"), extra=mqtt_cfg)
        with running_daemon(cfg, env={"HEALER_MQTT__PASSWORD": "s3cret"}) as d:
            wait_for(lambda: events(d.state_dir, "mqtt.connected"), what="TLS + password accepted")
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-agent")
            pub.tls_set(
                ca_certs=str(pki / "ca.crt"),
                certfile=str(pki / "client.crt"),
                keyfile=str(pki / "client.key"),
            )
            pub.username_pw_set("healer", "s3cret")
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            try:
                pub.publish(
                    "healer/agents/agent-t/report", b'{"kind": "quality", "value": 0.9}', qos=1
                ).wait_for_publish(10)
                wait_for(lambda: events(d.state_dir, "agent.reported"), what="telemetry over TLS")
            finally:
                pub.loop_stop()
            assert d.stop() == 0
        assert "s3cret" not in d.output(), "the password never reaches the log"
        # A wrong password: the link stays down, counted as such, and the daemon runs on.
        before = events(d.state_dir)[-1]["position"]
        with running_daemon(cfg, env={"HEALER_MQTT__PASSWORD": "wrong"}) as d2:
            down = wait_for(
                lambda: [e for e in events(d2.state_dir, "mqtt.disconnected") if e["position"] > before],
                what="refused",
            )
            assert "not authorized" in down[0]["data"]["reason"].lower(), down[0]["data"]
            assert not [e for e in events(d2.state_dir, "mqtt.connected") if e["position"] > before]
            assert d2.proc.poll() is None
            assert d2.stop() == 0
    finally:
        broker.kill()


def _problems(tmp_path: Path, text: str) -> str:
    cfg = tmp_path / "healer.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\npolicies_dir: {tmp_path}\n" + text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg, extra_checks=ProbeRegistry.discover().config_problems)
    return str(err.value)


def test_mqtt_and_probe_config_errors_name_the_line(tmp_path: Path) -> None:
    no_mqtt = _problems(tmp_path, "components:\n  a:\n    probes:\n      - type: mqtt_heartbeat\n")
    assert "healer.yaml:6:" in no_mqtt and "components.a.probes[0].type" in no_mqtt
    assert "needs the daemon's mqtt section" in no_mqtt
    half_cert = _problems(tmp_path, "mqtt:\n  host: h\n  tls:\n    cert: /x.crt\n")
    assert "healer.yaml:5:" in half_cert and "needs both cert and key" in half_cert
    wildcard = _problems(tmp_path, "mqtt:\n  host: h\n  topic_prefix: 'fleet/#'\n")
    assert "mqtt.topic_prefix" in wildcard and "wildcards" in wildcard
    missing_ca = _problems(tmp_path, "mqtt:\n  host: h\n  tls:\n    ca: nowhere/ca.crt\n")
    assert "mqtt.tls.ca" in missing_ca and "cannot read" in missing_ca
    relative = _problems(
        tmp_path,
        "components:\n  a:\n    probes:\n      - type: heartbeat_file\n"
        "        path: beat\n        max_age: 1s\n",
    )
    assert (
        "healer.yaml:7:" in relative and "components.a.probes[0].path" in relative and "absolute" in relative
    )
    no_target = _problems(
        tmp_path, "components:\n  a:\n    probes:\n      - type: resources\n        max_rss: 1GB\n"
    )
    assert "needs the component's command, or a pidfile or cmdline" in no_target
