"""The daemon's one MQTT connection.

``MqttLink`` owns a small TaskGroup of named loops, in the style of aiomqtt's own client:

* ``mqtt:connection`` connects, subscribes to ``P/agents/#`` and publishes healer's retained
  ``online`` status (with a retained ``offline`` last will, so a fleet sees healer die), then
  runs a session of three loops: ``mqtt:receive`` ends the session when the link dies (each
  message is handed to the :class:`~healer.monitor.telemetry.TelemetryRouter` the moment it
  is read, see ``_handled_on_arrival``), ``mqtt:publish`` drains the outbox,
  ``mqtt:stop-watch`` ends the session cleanly on shutdown. When the link drops (aiomqtt
  2.x never reconnects by itself) it records ``mqtt.disconnected`` once, and reconnects with
  jittered exponential backoff, re-subscribing every time.
* ``mqtt:drop-report`` records a ``telemetry.dropped`` summary at most once per interval.

Every wait is bounded (``asyncio.timeout``); nothing here blocks local probes, which run in
their own tasks whether or not the broker is reachable. Outgoing messages (every recorded
event, when ``publish_events``) wait in a bounded outbox while the broker is away; when it
is full the oldest is dropped and counted (``outbox_overflow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import aiomqtt

from healer import __version__
from healer.agent import protocol
from healer.agent.reconnect import Backoff
from healer.clock import Clock
from healer.config import HealerConfig, MqttConfig
from healer.knowledge.events import Event, RecordedEvent
from healer.knowledge.events import EventType as T
from healer.knowledge.store import dumps
from healer.monitor.telemetry import DropCounter, DropReason, Emit, TelemetryBook, TelemetryRouter

log = logging.getLogger("healer.mqtt")

_Out = tuple[str, bytes, int, bool]  # topic, payload, qos, retain
_STILL_DOWN_LOG_EVERY = 60.0


class _Stopping(Exception):
    """Ends a session on purpose (shutdown), as opposed to a lost link."""


class Outbox:
    """Outgoing messages, bounded: when full the oldest is dropped (and counted by ``on_drop``)."""

    def __init__(self, bound: int, on_drop: Any) -> None:
        self.bound = bound
        self._on_drop = on_drop
        self._items: deque[_Out] = deque()
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if len(self._items) >= self.bound:
            old = self._items.popleft()
            self.dropped += 1
            self._on_drop(old[0])
        self._items.append((topic, payload, qos, retain))
        self._drained.clear()
        self._ready.set()

    async def head(self, timeout: float) -> _Out | None:
        """The oldest message, waiting up to ``timeout`` for one; it stays until ``done``."""
        if not self._items:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        return self._items[0] if self._items else None

    def done(self, item: _Out) -> None:
        if self._items and self._items[0] is item:  # it may have been dropped meanwhile
            self._items.popleft()
        if not self._items:
            self._drained.set()

    async def drained(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        return not self._items


class _QueueFullCounter(logging.Filter):
    """aiomqtt reports an overflowing incoming queue only as a log line: count it instead."""

    def __init__(self, drops: DropCounter) -> None:
        super().__init__()
        self.drops = drops

    def filter(self, record: logging.LogRecord) -> bool:
        if "queue is full" in record.getMessage():
            self.drops.drop(DropReason.QUEUE_FULL, "", "incoming queue full: message discarded")
            return False
        return True


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        router: TelemetryRouter,
        emit: Emit,
        clock: Clock,
        status: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.router = router
        self.book = router.book
        self.drops = router.drops
        self.emit = emit
        self.clock = clock
        self.status = dict(status or {})
        self.broker = f"{cfg.host}:{cfg.port}"
        self.outbox = Outbox(
            cfg.outbox_size, lambda topic: self.drops.drop(DropReason.OUTBOX_OVERFLOW, topic, "outbox full")
        )
        self.connected = False
        self.sessions = 0
        self._established = False  # the current session got as far as subscribing
        self._reported: str | None = None  # the link state last recorded in the log
        self._down_since: float | None = None
        self._down_logged: float | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._client_log = logging.getLogger("healer.mqtt.client")
        self._client_log.addFilter(_QueueFullCounter(self.drops))
        self._tls = _tls_context(cfg)
        self.status_topic = protocol.healer_status_topic(cfg.topic_prefix, cfg.client_id)

    @classmethod
    def from_config(cls, config: HealerConfig, emit: Emit, clock: Clock) -> MqttLink:
        """The link, its router and liveness book, for the daemon's configured components."""
        cfg = config.mqtt
        if cfg is None:
            raise ValueError("no mqtt section in the configuration")
        components: dict[str, str] = {}
        for name, comp in config.components.items():
            for spec in comp.probes:
                agent = spec.params.get("agent")
                if spec.type == "mqtt_heartbeat" and isinstance(agent, str):
                    components.setdefault(agent, name)
        for name in config.components:
            components[name] = name  # an agent id equal to a component's name is that component
        book = TelemetryBook(clock)
        drops = DropCounter(clock, cfg.drop_report_interval)
        router = TelemetryRouter(cfg.topic_prefix, int(cfg.max_payload), book, drops, emit, clock, components)
        return cls(cfg, router, emit, clock, {"components": len(config.components)})

    # -- what the daemon calls ----------------------------------------------------------------
    def publish_event(self, rec: RecordedEvent) -> None:
        if not self.cfg.publish_events:
            return
        topic = protocol.healer_events_topic(self.cfg.topic_prefix, self.cfg.client_id, rec.type)
        # As ``healer log --json`` prints it (sorted keys), through the log's own orjson encoder
        # (0.7 us an event, the standard one 5.2); the store has encoded this data with it already.
        payload = dumps(rec.as_dict()).encode()
        self.outbox.put(topic, payload, qos=1)

    def flush_drops(self) -> None:
        event = self.drops.summary(self.clock.wall())
        if event is not None:
            self.emit(event)

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is buffered (if connected), say ``offline``, disconnect; bounded."""
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout + self.cfg.connect_timeout):
                await self._stopped.wait()
        self.flush_drops()
        self._record("disconnected", "daemon stopping")

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._connection_loop(), name="mqtt:connection")
            tg.create_task(self._drop_reports(), name="mqtt:drop-report")

    # -- loops ------------------------------------------------------------------------------------
    async def _drop_reports(self) -> None:
        while True:
            await self.clock.sleep(self.cfg.drop_report_interval)
            self.flush_drops()

    async def _connection_loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min, self.cfg.reconnect_max)
        try:
            while not self._stopping.is_set():
                try:
                    await self._session()
                except* _Stopping:
                    pass
                except* (aiomqtt.MqttError, OSError, TimeoutError) as group:
                    self._link_down(_first(group))
                except* Exception as group:  # a bug must not end telemetry for good
                    log.error("MQTT session failed: %s", _first(group), exc_info=group)
                    self._link_down(_first(group))
                if self._stopping.is_set():
                    break
                if self._established:
                    backoff.reset()  # a session was up: start pacing afresh
                    self._established = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next()):
                        await self._stopping.wait()
        finally:
            self.connected = False
            self.book.set_connected(False)
            self._stopped.set()

    async def _session(self) -> None:
        cfg = self.cfg
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            will=aiomqtt.Will(
                self.status_topic, protocol.status_payload("offline", "last_will"), qos=1, retain=True
            ),
            keepalive=cfg.keepalive,
            tls_context=self._tls,
            timeout=cfg.connect_timeout,
            clean_session=True,
            max_queued_incoming_messages=cfg.incoming_queue,
            queue_type=_handled_on_arrival(self._on_message),
            logger=self._client_log,
        )
        async with contextlib.AsyncExitStack() as stack:
            # aiomqtt bounds the CONNACK wait by connect_timeout itself (and then resets its
            # state); this outer bound also covers the TCP/TLS connect and the subscribe.
            async with asyncio.timeout(2 * cfg.connect_timeout):
                await stack.enter_async_context(client)
                # Before subscribing: retained statuses are handled the moment they arrive,
                # and ages count from the connection, so they must not predate it.
                self.book.set_connected(True)
                await client.subscribe(protocol.agents_filter(cfg.topic_prefix), qos=1)
                online = protocol.status_payload(
                    "online", pid=os.getpid(), version=__version__, ts=self.clock.wall(), **self.status
                )
                await client.publish(self.status_topic, online, qos=1, retain=True)
            self._link_up()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(client), name="mqtt:receive")
                tg.create_task(self._publish(client), name="mqtt:publish")
                tg.create_task(self._stop_watch(client), name="mqtt:stop-watch")

    def _on_message(self, msg: aiomqtt.Message) -> None:
        self.router.handle(str(msg.topic), _as_bytes(msg.payload))

    async def _receive(self, client: aiomqtt.Client) -> None:
        # Messages are handled as they are read (``_handled_on_arrival``); this loop is there to
        # end the session when the link dies, which ends the client's message iterator.
        messages = client.messages
        bound = max(2.0 * self.cfg.keepalive, 1.0)
        while True:
            try:
                async with asyncio.timeout(bound):
                    msg = await anext(messages)
            except TimeoutError:
                continue  # quiet fleet; a dead link ends the iterator (keepalive) instead
            self._on_message(msg)  # only if a message was queued after all

    async def _publish(self, client: aiomqtt.Client) -> None:
        while True:
            item = await self.outbox.head(timeout=max(float(self.cfg.keepalive), 1.0))
            if item is None:
                continue
            topic, payload, qos, retain = item
            # Bounded here; aiomqtt's own bound (asyncio.wait_for) would add a task and a timer
            # to every publish, a tenth of its CPU cost (measured: 130 -> 118 us a message).
            async with asyncio.timeout(self.cfg.connect_timeout):
                await client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf)
            self.outbox.done(item)

    async def _stop_watch(self, client: aiomqtt.Client) -> None:
        await self._stopping.wait()
        timeout = self.cfg.connect_timeout
        if not await self.outbox.drained(timeout):
            log.warning("stopping with %d outgoing message(s) undelivered", len(self.outbox))
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(timeout):
                offline = protocol.status_payload("offline", "stopped", ts=self.clock.wall())
                await client.publish(self.status_topic, offline, qos=1, retain=True)
        raise _Stopping

    # -- link state -------------------------------------------------------------------------------
    def _link_up(self) -> None:
        self.connected = True
        self._established = True
        self.sessions += 1
        down = self.clock.monotonic() - self._down_since if self._down_since is not None else None
        self._down_since = self._down_logged = None
        if down is not None:
            log.info("MQTT link to %s back after %.1fs, re-subscribed", self.broker, down)
        else:
            log.info("MQTT link to %s up as %s", self.broker, self.cfg.client_id)
        self._record("connected", None, session=self.sessions, buffered=len(self.outbox))

    def _link_down(self, reason: str) -> None:
        now = self.clock.monotonic()
        if self.connected or self._down_since is None:
            self._down_since = now
        self.connected = False
        self.book.set_connected(False)
        if self._down_logged is None:
            self._down_logged = now
            log.warning("MQTT link to %s down: %s; local probes carry on, retrying", self.broker, reason)
        elif now - self._down_logged >= _STILL_DOWN_LOG_EVERY:
            self._down_logged = now
            log.warning(
                "MQTT link to %s still down after %.0fs: %s (%d message(s) buffered)",
                self.broker,
                now - self._down_since,
                reason,
                len(self.outbox),
            )
        self._record("disconnected", reason)

    def _record(self, state: str, reason: str | None, **extra: Any) -> None:
        if self._reported == state:
            return
        self._reported = state
        data: dict[str, Any] = {"broker": self.broker, "client_id": self.cfg.client_id, **extra}
        if reason is not None:
            data["reason"] = reason[:200]
        kind = T.MQTT_CONNECTED if state == "connected" else T.MQTT_DISCONNECTED
        self.emit(Event(kind, self.clock.wall(), data=data))


def _handled_on_arrival(handle: Callable[[aiomqtt.Message], None]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An incoming-message "queue" for aiomqtt that hands each message on the moment it is put.

    aiomqtt puts every message in its queue from the socket's read callback, on the event loop;
    reading it back through ``client.messages`` costs a task and an ``asyncio.wait`` per
    message and two more trips through the loop's ready queue, each behind whatever else is
    ready (a last will waited behind probe checks). ``TelemetryRouter.handle`` is synchronous
    and never raises, so it runs right there instead; nothing queues, nothing can overflow.
    """

    class HandledOnArrival(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            handle(item)

    return HandledOnArrival


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca) if cfg.tls.ca is not None else None)
    if cfg.tls.cert is not None and cfg.tls.key is not None:
        ctx.load_cert_chain(str(cfg.tls.cert), str(cfg.tls.key))
    return ctx


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


def _first(group: BaseExceptionGroup[Any]) -> str:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]
