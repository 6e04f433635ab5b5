"""``dr``: the disaster-recovery actuator behind the ``rollback`` and ``failover`` strategies.

- ``restore {checkpoint, agent}``: pick the checkpoint (``latest``, ``before-incident``, ``seq:N``,
  ``label:NAME``), never
  at or before the checkpoint the agent's latest pivot happened after; re-hash and validate it;
  a corrupt one is marked, reported (``checkpoint.corrupted`` and an ``agent.reported``
  ``state_corruption`` observation) and the previous good one used. The choice is made in
  ``prepare`` and so recorded in the intent: a re-run after a crash restores the same one. The
  restore moves the agent's HEAD; the agent reads it back through :mod:`healer.agent.state`.
- ``compensate {agent}``: after the agent is halted and restored, undo in reverse order every
  compensatable effect of its ledger recorded after the restored checkpoint (read-only ones are
  skipped), each with the idempotency key ``undo/AGENT/EFFECT_KEY`` and each journaled in
  ``undone.jsonl`` once done, so a re-run after kill -9 skips the finished ones and re-sends only
  the one in flight, under the same key. The list is fixed in ``prepare`` (in the intent).
- ``promote {standby, role}``: fence the role (a higher fencing token, holder = standby; the agent
  library makes the old holder refuse to act), give the standby the primary's latest good
  checkpoint, start it. The fence file is what clients read to find the active instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import aiomqtt
from pydantic import Field, field_validator

from healer.agent import protocol
from healer.agent.state import fence_path, read_fence
from healer.config import Duration
from healer.dr import ledger as L
from healer.dr.retention import BEFORE_INCIDENT
from healer.dr.store import Checkpoint, CheckpointError, CheckpointStore, CorruptCheckpoint
from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext, Actuator
from healer.execute.builtins import Base, Params
from healer.execute.faults import FaultPoints
from healer.execute.safety import check_templates, render, safe_name, template_values
from healer.fsutil import atomic_write
from healer.knowledge.events import Event
from healer.knowledge.events import EventType as T

log = logging.getLogger(__name__)


class _Restore(Params):
    checkpoint: str = "latest"
    agent: str = "{component}"

    @field_validator("agent", "checkpoint")
    @classmethod
    def _templates(cls, v: str) -> str:
        check_templates(v)
        return v


class _Compensate(Params):
    agent: str = "{component}"


class _Promote(Params):
    standby: str
    role: str | None = None  # default: the failed component's name
    agent: str = "{component}"
    start: bool = True


class _Pause(Params):
    agent: str = "{component}"
    timeout: Duration = 5.0  # for the acknowledgement ("5s", or seconds)
    fallback: Literal["stop", "fail"] = "stop"  # no acknowledgement in time: stop it, or fail
    prefix: str = "healer"
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0 < v <= 600:
            raise ValueError(f"timeout must be within (0, 600] seconds, got {v}")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX_RE.match(v):
            raise ValueError(f"invalid topic prefix {v!r}")
        return v


class _Resume(_Pause):
    pass


_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def pick(
    store: CheckpointStore, agent: str, target: str, opened_at: float | None = None
) -> tuple[Checkpoint, list[dict[str, Any]], int | None]:
    """The checkpoint to restore, the corrupt ones passed over, and the pivot floor.

    ``before-incident``: the newest checkpoint created before ``opened_at`` (the incident's
    detection: the last state saved while nobody knew anything was wrong)."""
    cps = store.list(agent)
    if not cps:
        raise ActuatorError(f"no checkpoint for {agent!r}")
    floor = L.last_pivot_seq(store, agent)
    head = store.head(agent)
    if target == "latest":
        limit = head if head is not None else cps[-1].seq
    elif target.startswith("seq:"):
        limit = int(target[4:])
    elif target.startswith("label:"):
        named = [c.seq for c in cps if c.label == target[6:]]
        if not named:
            raise ActuatorError(f"no checkpoint labelled {target[6:]!r} for {agent!r}")
        limit = max(named)
    elif target == BEFORE_INCIDENT:
        if opened_at is None:
            raise ActuatorError("checkpoint before-incident: the incident's detection time is unknown")
        before = [c.seq for c in cps if c.created_at < opened_at]
        if not before:
            raise ActuatorError(f"no checkpoint of {agent!r} was created before the incident opened")
        limit = max(before)
    else:
        raise ActuatorError(
            f"checkpoint target must be latest, before-incident, seq:N or label:NAME, got {target!r}"
        )
    candidates = [c for c in cps if c.seq <= limit]
    if floor is not None:
        candidates = [c for c in candidates if c.seq > floor]
        if not candidates:
            # The target lies before a pivot: the earliest state after it is as far back as we may go.
            candidates = [c for c in cps if c.seq > floor][:1]
    skipped: list[dict[str, Any]] = []
    for cp in reversed(candidates):
        reason = store.verify(cp)
        if reason is None:
            return cp, skipped, floor
        skipped.append({"seq": cp.seq, "reason": reason, "created_at": cp.created_at})
    why = f" after the pivot at checkpoint #{floor}" if floor is not None else ""
    raise ActuatorError(f"no valid checkpoint for {agent!r} at or before {target}{why}")


def _parse_ack(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        return None
    if doc.get("state") not in ("paused", "resumed", "error"):
        return None
    detail = doc.get("detail")
    return {"id": doc["id"], "state": doc["state"], "detail": str(detail)[:500] if detail else None}


class DrActuator(Base):
    name: ClassVar[str] = "dr"
    idempotent: ClassVar[bool] = True  # restore: same HEAD; compensate: journaled + keyed; promote: keyed
    default_timeout: ClassVar[float] = 120.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {
        "restore": _Restore,
        "compensate": _Compensate,
        "promote": _Promote,
        "pause": _Pause,
        "resume": _Resume,
    }
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)

    def store(self) -> CheckpointStore:
        if self.services.state_dir is None:
            raise ActuatorError("dr needs the daemon's state directory")
        return CheckpointStore.in_state_dir(self.services.state_dir)

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        return f"dr-{action}"

    def _agent(self, ctx: ActionContext, raw: str) -> str:
        return safe_name(
            render(raw, template_values(ctx.component, ctx.incident, ctx.idempotency_key)), "agent"
        )

    def _emit(self, ev: Event) -> None:
        emit = getattr(self.services, "emit", None)
        if emit is not None:
            emit(ev)

    # -- prepare: decide, and have the decision recorded in the intent -----------------------------
    async def prepare(self, ctx: ActionContext) -> dict[str, Any]:
        p = self.parse(ctx.action, ctx.params)
        agent = self._agent(ctx, p.agent)
        if ctx.action in ("pause", "resume"):
            sup = self.services.supervisor
            return {"agent": agent, "supervised": bool(sup is not None and sup.supervises(agent))}
        store = self.store()
        if ctx.action == "restore":
            target = render(p.checkpoint, template_values(ctx.component, ctx.incident, ctx.idempotency_key))
            lookup = self.services.incident_opened_at
            opened = lookup(ctx.incident) if lookup is not None else None
            cp, skipped, floor = pick(store, agent, target, opened)
            for s in skipped:
                self._corrupt(ctx, agent, s)
            return {
                "agent": agent,
                "seq": cp.seq,
                "sha256": cp.sha256,
                "created_at": cp.created_at,
                "label": cp.label,
                "head_before": store.head(agent),
                "skipped_corrupt": skipped,
                "pivot_floor": floor,
                "target": target,
                "incident_opened_at": opened,
            }
        if ctx.action == "compensate":
            head = store.head(agent) or 0
            todo = L.to_compensate(store, agent, head)
            ro = [e.key for e in L.effects(store, agent) if e.after_seq >= head and e.kind == "read_only"]
            return {
                "agent": agent,
                "after_seq": head,
                "effects": [e.as_dict() for e in todo],
                "read_only": ro,
            }
        # promote
        role = p.role or ctx.component
        fence = read_fence(self.services.state_dir or store.root, role)
        return {"agent": agent, "role": role, "token_before": int(fence.get("token", 0))}

    def _corrupt(self, ctx: ActionContext, agent: str, s: Mapping[str, Any]) -> None:
        now = time.time()
        detail = f"checkpoint #{s['seq']} failed verification: {s['reason']}"
        self._emit(Event(T.CHECKPOINT_CORRUPTED, now, ctx.component, ctx.incident, {"agent": agent, **s}))
        # The analyzer-facing signal: the same shape an agent's own corruption report has.
        self._emit(
            Event(
                T.AGENT_REPORTED,
                now,
                ctx.component,
                None,
                {"kind": "state_corruption", "value": s["seq"], "detail": detail, "source": "healer.dr"},
            )
        )

    # -- perform ---------------------------------------------------------------------------------
    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        before = dict(ctx.before) if ctx.before else await self.prepare(ctx)
        if ctx.action == "restore":
            return self._restore(ctx, before)
        if ctx.action == "compensate":
            return await self._compensate_all(ctx, before)
        if ctx.action == "pause":
            return await self._pause(ctx, before)
        if ctx.action == "resume":
            return await self._resume(ctx, before)
        return await self._promote(ctx, before)

    # -- halting over MQTT -------------------------------------------------------------------------
    async def _ask(
        self, ctx: ActionContext, p: _Pause, agent: str, cmd: str
    ) -> tuple[dict[str, Any] | None, float]:
        """Send ``cmd`` to the agent and wait for its acknowledgement; (None, waited) on timeout."""
        s = self.services.settings
        host, port = p.host or s.mqtt_host, p.port or s.mqtt_port
        request = f"{ctx.idempotency_key}/{cmd}"
        t0 = time.monotonic()
        try:
            async with aiomqtt.Client(
                host, port, identifier=f"healer-dr-{os.getpid()}-{os.urandom(4).hex()}", keepalive=10
            ) as client:
                # Subscribed before asking: the acknowledgement cannot arrive unseen.
                await client.subscribe(protocol.control_ack_topic(p.prefix, agent), qos=1)
                await client.publish(
                    protocol.control_topic(p.prefix, agent),
                    protocol.control_payload(cmd, request, reload=cmd == "resume"),
                    qos=1,
                )
                try:
                    async with asyncio.timeout(p.timeout):
                        async for msg in client.messages:
                            raw = msg.payload
                            if not isinstance(raw, bytes | bytearray):
                                continue
                            ack = _parse_ack(bytes(raw))
                            if ack is not None and ack["id"] == request:
                                return ack, time.monotonic() - t0
                except TimeoutError:
                    return None, time.monotonic() - t0
        except aiomqtt.MqttError as exc:
            log.warning("dr.%s %s: MQTT at %s:%s unreachable: %s", cmd, agent, host, port, exc)
            return None, time.monotonic() - t0
        return None, time.monotonic() - t0

    async def _pause(self, ctx: ActionContext, before: Mapping[str, Any]) -> dict[str, Any]:
        p: _Pause = self.parse(ctx.action, ctx.params)
        agent = str(before["agent"])
        ack, waited = await self._ask(ctx, p, agent, "pause")
        if ack is not None and ack["state"] == "paused":
            self._emit(
                Event(
                    T.AGENT_PAUSED,
                    time.time(),
                    ctx.component,
                    ctx.incident,
                    {"agent": agent, "waited_s": round(waited, 6), "request": f"{ctx.idempotency_key}/pause"},
                )
            )
            return {**before, "paused": True, "waited_s": round(waited, 6)}
        why = (
            f"the agent could not pause: {ack.get('detail') or ack['state']}"
            if ack is not None
            else f"no acknowledgement within {p.timeout:g}s"
        )
        sup = self.services.supervisor
        if p.fallback == "stop" and sup is not None and sup.supervises(agent):
            async with sup.lock(agent):
                stopped = await sup.stop(agent)
            return {**before, "paused": False, "why": why, "fallback": "stopped", "stopped": stopped}
        hint = "" if p.fallback == "fail" else f" and healer does not supervise {agent!r}, so cannot stop it"
        raise ActuatorError(f"pause of {agent!r} failed: {why}{hint}; not rolling back a running agent")

    async def _resume(self, ctx: ActionContext, before: Mapping[str, Any]) -> dict[str, Any]:
        """Back to work from the restored state: a supervised agent is restarted (it reads the
        checkpoint on start); another is asked over MQTT to resume and reload it."""
        p: _Resume = self.parse(ctx.action, ctx.params)
        agent = str(before["agent"])
        sup = self.services.supervisor
        if sup is not None and sup.supervises(agent):
            async with sup.lock(agent):
                if sup.pid(agent) is None:
                    return {**before, "started": sup.start(agent, action_key=ctx.idempotency_key)}
                return {**before, "restarted": await sup.restart(agent, action_key=ctx.idempotency_key)}
        ack, waited = await self._ask(ctx, p, agent, "resume")
        if ack is None or ack["state"] != "resumed":
            why = (
                f"no acknowledgement within {p.timeout:g}s"
                if ack is None
                else str(ack.get("detail") or ack["state"])
            )
            raise ActuatorError(f"resume of {agent!r} failed: {why}")
        return {**before, "resumed": True, "waited_s": round(waited, 6)}

    def _restore(self, ctx: ActionContext, before: Mapping[str, Any]) -> dict[str, Any]:
        store = self.store()
        agent = str(before["agent"])
        cp = store.get(agent, int(before["seq"]))
        try:
            store.read(cp)
        except CorruptCheckpoint as exc:  # went bad between the choice and now: choose again next attempt
            store.mark_corrupt(cp, exc.reason)
            raise ActuatorError(str(exc)) from exc
        store.set_head(agent, cp)
        self._emit(
            Event(
                T.CHECKPOINT_RESTORED,
                time.time(),
                ctx.component,
                ctx.incident,
                {"agent": agent, "seq": cp.seq, "created_at": cp.created_at, "label": cp.label},
            )
        )
        return {**before, "restored": cp.seq}

    async def _compensate_all(self, ctx: ActionContext, before: Mapping[str, Any]) -> dict[str, Any]:
        store = self.store()
        agent = str(before["agent"])
        faults = FaultPoints(self.services.settings.fault_exit_at)
        done = L.undone(store, agent)
        undone: list[str] = []
        already: list[str] = []
        for i, e in enumerate(before.get("effects") or []):
            key = str(e["key"])
            if key in done:
                already.append(key)
                continue
            comp = dict(e["compensation"])
            ckey = f"undo/{agent}/{key}"
            actuator = self._actuator(str(comp.get("actuator")))
            params = dict(comp.get("params") or {})
            actuator.validate(str(comp.get("action")), params)
            sub = ActionContext(
                ctx.component,
                str(comp.get("action")),
                params,
                ckey,
                ctx.incident,
                ctx.timeout,
                resumed=ctx.resumed,
            )
            result = await actuator.perform(sub)
            faults.hit("after-undo-effect", "dr", i)
            L.record_undone(
                store,
                agent,
                {
                    "effect": key,
                    "key": ckey,
                    "incident": ctx.incident,
                    "ts": time.time(),
                    "action": ctx.idempotency_key,
                },
            )
            self._emit(
                Event(
                    T.EFFECT_COMPENSATED,
                    time.time(),
                    ctx.component,
                    ctx.incident,
                    {
                        "agent": agent,
                        "effect": key,
                        "what": e.get("what"),
                        "idempotency_key": ckey,
                        "after_seq": e.get("after_seq"),
                        "result": json.loads(json.dumps(result, default=str)),
                    },
                )
            )
            undone.append(key)
        return {
            "agent": agent,
            "undone": undone,
            "already_undone": already,
            "skipped_read_only": list(before.get("read_only") or []),
        }

    def _actuator(self, name: str) -> Actuator:
        if name == self.name:
            raise ActuatorError("a ledger compensation cannot be a dr action")
        for ep in entry_points(group="healer.actuators", name=name):
            cls = ep.load()
            inst: Actuator = cls(self.services)
            return inst
        raise ActuatorError(f"compensation actuator {name!r} is not installed")

    async def _promote(self, ctx: ActionContext, before: Mapping[str, Any]) -> dict[str, Any]:
        p: _Promote = self.parse(ctx.action, ctx.params)
        store = self.store()
        state_dir = self.services.state_dir
        assert state_dir is not None
        primary, standby = str(before["agent"]), safe_name(p.standby, "standby")
        role = str(before["role"])
        fence = read_fence(state_dir, role)
        if fence.get("key") == ctx.idempotency_key:  # a re-run after a crash: already fenced
            token = int(fence["token"])
        else:
            token = int(before["token_before"]) + 1
            doc = {
                "token": token,
                "holder": standby,
                "previous": primary,
                "key": ctx.idempotency_key,
                "at": time.time(),
            }
            atomic_write(fence_path(state_dir, role), json.dumps(doc).encode())
        self._emit(
            Event(
                T.FAILOVER_FENCED,
                time.time(),
                ctx.component,
                ctx.incident,
                {"role": role, "token": token, "fenced": primary, "holder": standby},
            )
        )
        handed: int | None = None
        if store.list(primary):
            try:
                cp, _, _ = pick(store, primary, "latest")
                mine = store.head(standby)
                if mine is None or store.get(standby, mine).sha256 != cp.sha256:
                    handed = store.save(
                        standby, store.read(cp), label=f"promoted-from-{primary}#{cp.seq}"
                    ).seq
                else:
                    handed = mine
            except (ActuatorError, CheckpointError):
                handed = None
        started: dict[str, Any] | None = None
        sup = self.services.supervisor
        if p.start and sup is not None and sup.supervises(standby) and sup.pid(standby) is None:
            started = sup.start(standby, action_key=ctx.idempotency_key)
        return {**before, "token": token, "holder": standby, "standby_checkpoint": handed, "started": started}
