"""The agent side of healer's telemetry: one MQTT connection per agent process.

    async with AgentLink("agent-a", "127.0.0.1", 1883) as link:
        breaker = link.circuit_breaker("model-api", fail_max=3, reset_timeout=30)
        with breaker.calling():
            await call_model()
        link.report("quality", 0.42, "eval score below baseline")

The link publishes ``online`` (retained) on every connect and registers ``offline`` as its
last will, so the broker tells healer the moment the process dies or its link breaks; it
heart-beats every ``heartbeat_interval``; breaker transitions and reports go through a
bounded outbox that survives broker outages (oldest dropped first, counted in ``dropped``).
It reconnects by itself with jittered backoff: aiomqtt 2.x never does.

healer's rollback may ask the agent to **pause** (``P/control/A``): ``on_pause`` runs until the
agent is at a safe point, then the link acknowledges; while :attr:`paused` the agent must not
act. ``resume`` (with ``reload``: read the restored checkpoint back) runs ``on_resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiomqtt

from healer.agent import protocol
from healer.agent.reconnect import Backoff

log = logging.getLogger("healer.agent")

_Outgoing = tuple[str, bytes, int, bool]  # topic, payload, qos, retain


class AgentLink:
    def __init__(
        self,
        agent: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        prefix: str = "healer",
        heartbeat_interval: float = 1.0,
        keepalive: int = 5,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        client_id: str | None = None,
        outbox_size: int = 1000,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        connect_timeout: float = 5.0,
        on_pause: Callable[[], Any] | None = None,
        on_resume: Callable[[bool], Any] | None = None,
    ) -> None:
        if not protocol.ID_RE.match(agent):
            raise ValueError(f"invalid agent id {agent!r}: use 1-64 letters, digits, '.', '_' or '-'")
        self.agent = agent
        self.host, self.port = host, port
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self.keepalive = keepalive
        self.username, self.password = username, password
        self.tls_context = tls_context
        self.client_id = client_id or f"agent-{agent}-{os.getpid()}"
        self.outbox_size = outbox_size
        self.connect_timeout = connect_timeout
        self.dropped = 0  # outgoing messages lost to a full outbox
        self.heartbeats_sent = 0
        self._backoff = Backoff(reconnect_min, reconnect_max)
        self._outbox: deque[_Outgoing] = deque()
        self._work = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._connected = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._seq = 0
        self._down_since: float | None = None
        # Pause requests (healer's rollback halting the agent without killing it): on_pause runs
        # (sync or async) until the agent is at a safe point; only then is the pause acknowledged.
        self.on_pause = on_pause
        self.on_resume = on_resume
        self._paused = asyncio.Event()
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._control_tasks: set[asyncio.Task[None]] = set()

    # -- topics ------------------------------------------------------------------------------
    def topic(self, kind: str) -> str:
        return protocol.agent_topic(self.prefix, self.agent, kind)

    # -- lifetime ----------------------------------------------------------------------------
    async def __aenter__(self) -> AgentLink:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"healer-agent:{self.agent}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def close(self, timeout: float = 2.0) -> None:
        """Flush the outbox and say ``offline`` (reason ``shutdown``) if connected, then disconnect."""
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(timeout):
                    if self._outbox:
                        await self._drained.wait()
                    await client.publish(
                        self.topic("status"),
                        protocol.status_payload("offline", "shutdown"),
                        qos=1,
                        retain=True,
                    )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- pause / resume (healer.dr) -----------------------------------------------------------
    @property
    def paused(self) -> bool:
        """True between an acknowledged pause and the next resume: take no action meanwhile."""
        return self._paused.is_set()

    async def wait_unpaused(self) -> None:
        await self._unpaused.wait()

    def _control(self, raw: bytes) -> None:
        req = protocol.parse_control(raw)
        if req is None:
            log.warning("agent %s: ignoring a malformed control request", self.agent)
            return
        task = asyncio.get_running_loop().create_task(self._obey(req), name=f"control-{req['cmd']}")
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _obey(self, req: dict[str, Any]) -> None:
        ack = self.topic_control_ack()
        try:
            if req["cmd"] == "pause":
                self._unpaused.clear()
                self._paused.set()
                if self.on_pause is not None:
                    done = self.on_pause()
                    if asyncio.iscoroutine(done):
                        await done
                state = "paused"
            else:
                if self.on_resume is not None:
                    done = self.on_resume(bool(req["reload"]))
                    if asyncio.iscoroutine(done):
                        await done
                self._paused.clear()
                self._unpaused.set()
                state = "resumed"
            self._send(ack, protocol.ack_payload(req["id"], state), qos=1)
        except Exception as exc:  # the agent's own handler failed: healer must hear it, not wait
            log.error("agent %s: %s handler failed: %s", self.agent, req["cmd"], exc)
            self._send(ack, protocol.ack_payload(req["id"], "error", f"{type(exc).__name__}: {exc}"), qos=1)

    def topic_control_ack(self) -> str:
        return protocol.control_ack_topic(self.prefix, self.agent)

    # -- what agents call --------------------------------------------------------------------
    def report(self, kind: str, value: Any = None, detail: str | None = None) -> None:
        """Report a signal healer should know about (``state_corruption``, ``quality``, ...)."""
        self._send(self.topic("report"), protocol.report_payload(kind, value, detail), qos=1)

    def breaker_changed(
        self, dependency: str, state: str, failure_count: int, previous: str | None = None
    ) -> None:
        """Record a breaker transition; safe to call from any thread (pybreaker may)."""
        ts = time.time()
        payload_args = (dependency, state, failure_count, previous, ts)
        loop = self._loop
        if loop is None:
            raise RuntimeError("AgentLink is not running: use it as 'async with AgentLink(...)'")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._breaker_now(*payload_args)
        else:
            loop.call_soon_threadsafe(self._breaker_now, *payload_args)

    def breaker_listener(self, dependency: str) -> BreakerTelemetry:
        return BreakerTelemetry(self, dependency)

    def circuit_breaker(self, dependency: str, **kwargs: Any) -> Any:
        """A ``pybreaker.CircuitBreaker`` that reports its transitions over this link.

        Use it around awaits as ``with breaker.calling(): await ...``; a cancelled task is
        not a failure of the dependency, so ``asyncio.CancelledError`` is excluded.
        """
        import pybreaker

        exclude = [asyncio.CancelledError, *kwargs.pop("exclude", [])]
        listeners = [self.breaker_listener(dependency), *kwargs.pop("listeners", [])]
        return pybreaker.CircuitBreaker(name=dependency, exclude=exclude, listeners=listeners, **kwargs)

    # -- internals ---------------------------------------------------------------------------
    def _breaker_now(
        self, dependency: str, state: str, failure_count: int, previous: str | None, ts: float
    ) -> None:
        self._seq += 1  # assigned on the loop thread: the order agents and healer agree on
        payload = protocol.breaker_payload(
            dependency, state, failure_count, previous=previous, seq=self._seq, ts=ts
        )
        self._send(self.topic("breaker"), payload, qos=1)

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        if len(self._outbox) >= self.outbox_size:
            self._outbox.popleft()
            self.dropped += 1
        self._outbox.append((topic, payload, qos, retain))
        self._drained.clear()
        self._work.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except* (aiomqtt.MqttError, OSError, TimeoutError) as group:
                if self._down_since is None:  # one line per outage, not one per attempt
                    log.warning("agent %s: MQTT link down: %s", self.agent, _first(group))
            except* Exception as group:  # a bug here must not end the agent's telemetry
                log.error("agent %s: MQTT link failed: %s", self.agent, _first(group))
            if self._down_since is None:
                self._down_since = time.monotonic()
            if self._connected.is_set():
                self._connected.clear()
                self._backoff.reset()  # a session was established: start pacing afresh
            self._client = None
            await asyncio.sleep(self._backoff.next())

    async def _session(self) -> None:
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self.password,
            will=aiomqtt.Will(
                self.topic("status"), protocol.status_payload("offline", "last_will"), qos=1, retain=True
            ),
            keepalive=self.keepalive,
            tls_context=self.tls_context,
            timeout=self.connect_timeout,
            clean_session=True,
            logger=log,
        )
        async with contextlib.AsyncExitStack() as stack:
            async with asyncio.timeout(self.connect_timeout):
                await stack.enter_async_context(client)
                await client.publish(
                    self.topic("status"),
                    protocol.status_payload("online", pid=os.getpid(), ts=time.time()),
                    qos=1,
                    retain=True,
                )
            await client.subscribe(protocol.control_topic(self.prefix, self.agent), qos=1)
            self._client = client
            self._connected.set()
            if self._down_since is not None:
                down = time.monotonic() - self._down_since
                log.info("agent %s: MQTT link back after %.1fs", self.agent, down)
                self._down_since = None
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeats(client), name="heartbeats")
                tg.create_task(self._publisher(client), name="publisher")
                tg.create_task(self._until_disconnected(client), name="link-watch")

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        while True:
            self.heartbeats_sent += 1
            payload = protocol.heartbeat_payload(self.heartbeats_sent)
            async with asyncio.timeout(self.connect_timeout):
                await client.publish(self.topic("heartbeat"), payload)
            await asyncio.sleep(self.heartbeat_interval)

    async def _publisher(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._outbox:
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.keepalive):
                        await self._work.wait()
                continue
            item = self._outbox[0]
            topic, payload, qos, retain = item
            async with asyncio.timeout(self.connect_timeout):
                await client.publish(topic, payload, qos=qos, retain=retain)
            if self._outbox and self._outbox[0] is item:
                self._outbox.popleft()
            if not self._outbox:
                self._drained.set()

    async def _until_disconnected(self, client: aiomqtt.Client) -> None:
        # Only the control topic is subscribed; the iterator ends, with MqttError, when the link drops.
        control = protocol.control_topic(self.prefix, self.agent)
        async for msg in client.messages:
            if msg.topic.value == control and isinstance(msg.payload, bytes | bytearray):
                self._control(bytes(msg.payload))


class BreakerTelemetry:
    """A pybreaker listener that publishes every state transition of one breaker.

    Duck-typed (pybreaker calls these four methods), so importing the agent library does not
    require pybreaker.
    """

    def __init__(self, link: AgentLink, dependency: str) -> None:
        if not protocol.DEPENDENCY_RE.match(dependency):
            raise ValueError(f"invalid dependency name {dependency!r}")
        self.link = link
        self.dependency = dependency

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def failure(self, cb: Any, exc: BaseException) -> None:
        pass

    def success(self, cb: Any) -> None:
        pass

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        previous = old_state.name if old_state is not None else None
        self.link.breaker_changed(self.dependency, new_state.name, int(cb.fail_counter), previous)


def _first(group: BaseExceptionGroup[Any]) -> str:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
