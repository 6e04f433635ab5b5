"""A real Mosquitto broker for tests: Debian's ``mosquitto`` on a free loopback port, with a
temporary config, that a test can stop and start again on the same port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port


class Broker:
    def __init__(
        self, workdir: Path, port: int | None = None, *, persistence: bool = False, extra_conf: str = ""
    ) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.fail("mosquitto is not installed (apt-get install mosquitto; .ci/run does this)")
        self.exe = exe
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # persistence: sessions of clean_session=False clients survive a SIGKILL (autosaved each second)
        store = (
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            if persistence
            else "persistence false\n"
        )
        self.db = workdir / "mosquitto.db"
        self.conf.write_text(
            (f"listener {self.port} 127.0.0.1\n" if "listener" not in extra_conf else "")
            + ("allow_anonymous true\n" if "allow_anonymous" not in extra_conf else "")
            + store
            # As root, mosquitto would drop to its own user and could not write its log or store here.
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_keepalive 60\n" + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log.read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    d = tmp_path / "broker"
    d.mkdir()
    b = Broker(d)
    b.start()
    try:
        yield b
    finally:
        b.kill()


class Subscriber:
    """A test's own MQTT client on a paho network thread: records every message with the wall
    time it arrived, so latencies are measured from arrival, not from a test's polling."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        *,
        client_id: str = "",
        clean_session: bool = True,
        qos: int = 1,
        tls: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self.topics = topics
        self.qos = qos
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        if tls is not None:
            self.client.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"))
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("test subscriber could not connect")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        for t in self.topics:
            client.subscribe(t, qos=self.qos)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = 15.0, what: str = "") -> Any:
        """Wait until ``pred(messages)`` is truthy (woken by arrivals, not by polling)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = pred(list(self.messages))
                if got:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
                self._cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
