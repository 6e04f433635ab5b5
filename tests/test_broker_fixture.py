from __future__ import annotations

import socket

from tests.broker import Broker


def test_broker_can_be_killed_and_restarted_on_the_same_port(broker: Broker) -> None:
    with socket.create_connection((broker.host, broker.port), timeout=1):
        pass
    broker.kill()
    assert not broker.running
    try:
        socket.create_connection((broker.host, broker.port), timeout=0.5).close()
        raise AssertionError("port still accepting after the broker was killed")
    except OSError:
        pass
    broker.start()
    with socket.create_connection((broker.host, broker.port), timeout=1):
        pass
