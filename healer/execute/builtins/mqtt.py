"""``mqtt_publish``: publish one message (topic, payload, QoS, retain) to the MQTT broker.

One short connection per action: actions are rare, and a connection that exists only for the
call has nothing to reconnect. A retained publish is idempotent (it sets state) and can be
undone: the retained payload it replaced is read first and recorded, and ``compensate`` puts it
back (or clears the topic when there was none).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import aiomqtt
from pydantic import Field, field_validator

from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext
from healer.execute.builtins import Base, Params
from healer.execute.safety import check_templates, render, render_obj, template_values

RETAINED_WAIT = 0.3  # a broker sends a retained message right after SUBACK; none within this: none


def check_topic(topic: str) -> str:
    if not topic or len(topic.encode()) > 65535 or any(c in topic for c in "+#\x00") or topic.startswith("$"):
        raise ActuatorError(f"invalid topic to publish to: {topic!r} (no wildcards, no leading '$')")
    return topic


def encode(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _client(host: str, port: int) -> aiomqtt.Client:
    return aiomqtt.Client(
        host, port, identifier=f"healer-act-{os.getpid()}-{os.urandom(4).hex()}", keepalive=10
    )


async def publish(host: str, port: int, topic: str, payload: bytes, qos: int, retain: bool) -> None:
    try:
        async with _client(host, port) as client:
            await client.publish(topic, payload=payload, qos=qos, retain=retain)
    except aiomqtt.MqttError as exc:
        raise ActuatorError(f"MQTT publish to {topic!r} at {host}:{port} failed: {exc}") from exc


async def read_retained(host: str, port: int, topic: str, wait: float = RETAINED_WAIT) -> bytes | None:
    """The retained payload of ``topic`` (None when there is none)."""
    try:
        async with _client(host, port) as client:
            await client.subscribe(topic, qos=1)
            try:
                async with asyncio.timeout(wait):
                    async for message in client.messages:
                        if message.retain:
                            raw = message.payload
                            return bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw).encode()
            except TimeoutError:
                return None
    except aiomqtt.MqttError as exc:
        raise ActuatorError(f"MQTT read of {topic!r} at {host}:{port} failed: {exc}") from exc
    return None


class _Publish(Params):
    topic: str
    payload: Any = None  # a string as is, anything else as JSON
    qos: int = Field(default=1, ge=0, le=2)
    retain: bool = False
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("topic", "payload")
    @classmethod
    def _templates(cls, v: Any) -> Any:
        json.dumps(v)
        check_templates(v)
        return v


class MqttPublishActuator(Base):
    name: ClassVar[str] = "mqtt_publish"
    idempotent: ClassVar[bool] = False  # a plain message is an event; a retained one is state
    default_timeout: ClassVar[float] = 10.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {"publish": _Publish}
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)
    compensation_idempotent: ClassVar[bool] = True

    def is_idempotent(self, action: str, params: Mapping[str, Any]) -> bool:
        return bool(params.get("retain", False))

    def compensates(self, action: str, params: Mapping[str, Any]) -> bool:
        return bool(params.get("retain", False))

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        s = self.services.settings
        return f"{params.get('host') or s.mqtt_host}:{params.get('port') or s.mqtt_port}"

    def _resolve(self, ctx: ActionContext) -> tuple[_Publish, str, int, str, bytes]:
        p: _Publish = self.parse(ctx.action, ctx.params)
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        topic = check_topic(render(p.topic, values))
        s = self.services.settings
        return p, p.host or s.mqtt_host, p.port or s.mqtt_port, topic, encode(render_obj(p.payload, values))

    async def prepare(self, ctx: ActionContext) -> dict[str, Any]:
        p, host, port, topic, _ = self._resolve(ctx)
        if not p.retain:
            return {}
        previous = await read_retained(host, port, topic)
        return {"previous": previous.decode(errors="replace") if previous is not None else None}

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        p, host, port, topic, payload = self._resolve(ctx)
        result: dict[str, Any] = {"topic": topic, "qos": p.qos, "retain": p.retain, "bytes": len(payload)}
        if p.retain:
            result.update(ctx.before if "previous" in ctx.before else await self.prepare(ctx))
        await publish(host, port, topic, payload, p.qos, p.retain)
        return result

    async def compensate(self, ctx: ActionContext) -> dict[str, Any]:
        p, host, port, topic, _ = self._resolve(ctx)
        if not p.retain:
            raise ActuatorError("a plain MQTT message cannot be unsent")
        previous = ctx.result.get("previous")
        # An empty retained payload clears the topic: there was nothing before the saga.
        await publish(host, port, topic, encode(previous) if previous is not None else b"", 1, True)
        return {"topic": topic, "restored": previous}

    async def verify(self, ctx: ActionContext) -> bool | None:
        p, host, port, topic, payload = self._resolve(ctx)
        if not p.retain:
            return None
        current = await read_retained(host, port, topic)
        if ctx.compensating:
            previous = ctx.result.get("previous")
            return current == (encode(previous) if previous is not None else None)
        return current == payload
