"""How events read to a person: one line per event, for the daemon's log and ``healer log``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent

LEVELS: dict[str, str] = {
    T.INCIDENT_ESCALATED: "error",
    T.STEP_FAILED: "warning",
    T.STEP_INTERRUPTED: "warning",
    T.VERIFICATION_FAILED: "warning",
    T.COMPONENT_FAILED: "warning",
    T.INCIDENT_DETECTED: "warning",
    T.POLICIES_REJECTED: "error",
    T.INCIDENT_DEFERRED: "warning",
    T.APPROVAL_REQUESTED: "warning",
    T.APPROVAL_DENIED: "warning",
    T.APPROVAL_EXPIRED: "warning",
    T.COMPONENT_BECAME_UNKNOWN: "warning",
    T.MQTT_DISCONNECTED: "warning",
    T.TELEMETRY_DROPPED: "warning",
    T.SYMPTOM_SUPPRESSED: "warning",
    T.DRILL_FAULT_INJECTED: "warning",
}

STYLES = {"error": "bold red", "warning": "yellow", "info": "green", "debug": "dim"}


def level_of(rec: RecordedEvent) -> str:
    if rec.type == T.PROCESS_EXITED and not rec.data.get("expected"):
        return "warning"
    if rec.type == T.ACTUATORS_LOADED and rec.data.get("refused"):
        return "error"
    from healer.execute.describe import LEVELS as EXECUTE_LEVELS

    if rec.type in EXECUTE_LEVELS:
        return EXECUTE_LEVELS[rec.type]
    return LEVELS.get(rec.type, "info")


def describe(rec: RecordedEvent) -> str:
    d = rec.data
    who = rec.component or "healer"
    inc = f"[incident {rec.incident}] " if rec.incident is not None else ""
    t = rec.type
    if t == T.PROCESS_STARTED:
        return f"{who}: process started, pid {d.get('pid')}" + (" (restart)" if d.get("restart") else "")
    if t == T.PROCESS_ADOPTED:
        return f"{who}: adopted running process pid {d.get('pid')}"
    if t == T.PROCESS_EXITED:
        how = f"signal {d['signal']}" if "signal" in d else f"status {d.get('exit_code', '?')}"
        return f"{who}: process {d.get('pid')} exited ({how}){' as requested' if d.get('expected') else ''}"
    if t == T.COMPONENT_FAILED:
        return f"{who}: health failing: {_probe_summary(d)}"
    if t == T.COMPONENT_RECOVERED:
        return f"{who}: healthy again"
    if t == T.INCIDENT_DETECTED:
        return f"{inc}{who}: detected from {d.get('observation')} (event #{d.get('cause')})"
    if t == T.INCIDENT_DIAGNOSED:
        return f"{inc}{who}: diagnosed {d.get('failure_class')}, root cause {d.get('root_cause')}"
    if t == T.INCIDENT_PLANNED:
        wait = ""
        via = ", ".join(f"{a.get('actuator')}.{a.get('action')}" for a in d.get("actions", [])) or "-"
        nb = d.get("not_before")
        if isinstance(nb, int | float) and nb - rec.ts > 0.05:
            wait = f", not before +{nb - rec.ts:.1f}s (cooldown)"
        return (
            f"{inc}{who}: plan {d.get('strategy')} attempt {d.get('attempt')}/{d.get('max_attempts')} "
            f"via {via} (policy {d.get('policy')} @{d.get('policy_hash')}){wait}"
        )
    if t == T.STEP_STARTED:
        return f"{inc}{who}: {d.get('action')} started, key {d.get('idempotency_key')}"
    if t == T.STEP_SUCCEEDED:
        return f"{inc}{who}: {d.get('action')} succeeded in {d.get('duration_s', 0):.2f}s"
    if t == T.STEP_FAILED:
        return f"{inc}{who}: {d.get('action')} failed: {d.get('error')}"
    if t == T.STEP_INTERRUPTED:
        return f"{inc}{who}: {d.get('action', 'step')} interrupted: {d.get('reason')}"
    if t == T.VERIFICATION_FAILED:
        return f"{inc}{who}: verification failed: {d.get('reason')}"
    if t == T.INCIDENT_VERIFIED:
        after = d.get("verified_after")
        probes = d.get("probes")
        what = (
            f"verified by probes {', '.join(map(str, probes))}"
            if isinstance(probes, list)
            else "verified healthy"
        )
        still = d.get("still_failing")
        return (
            f"{inc}{who}: {what}"
            + (f" {after:.2f}s after the action" if isinstance(after, int | float) else "")
            + (f" (still failing: {', '.join(map(str, still))})" if isinstance(still, list) and still else "")
        )
    if t == T.INCIDENT_RESOLVED:
        return f"{inc}{who}: resolved ({d.get('resolution')}), RTO {d.get('rto_achieved', 0):.2f}s"
    if t == T.INCIDENT_ESCALATED:
        return f"{inc}{who}: ESCALATED to a human: {d.get('reason')}"
    if t == T.INCIDENT_DEFERRED:
        nxt = d.get("next_allowed_at")
        when = f", next allowed {timestamp(nxt)}" if isinstance(nxt, int | float) else ""
        return f"{inc}{who}: waiting: {d.get('reason')}{when}"
    if t == T.APPROVAL_REQUESTED:
        return (
            f"{inc}{who}: APPROVAL {d.get('approval')} needed for {d.get('strategy')} "
            f"(policy {d.get('policy')}, step {d.get('step')}): healer approve {d.get('approval')} | "
            f"healer deny {d.get('approval')} --reason ...; default {d.get('default')} "
            f"at {timestamp(float(d.get('deadline') or 0))}"
        )
    if t in (T.APPROVAL_GRANTED, T.APPROVAL_DENIED):
        by = d.get("by") or {}
        verb = "granted" if t == T.APPROVAL_GRANTED else "denied"
        why = f": {d.get('reason')}" if d.get("reason") else ""
        user = f"{by.get('user')} (uid {by.get('uid')})"
        return f"{inc}{who}: approval {d.get('approval')} {verb} by {user}{why}"
    if t == T.APPROVAL_EXPIRED:
        return f"{inc}{who}: approval {d.get('approval')} expired: {d.get('reason')} -> {d.get('outcome')}"
    if t == T.SILENCE_CREATED:
        by = (d.get("by") or {}).get("user")
        return (
            f"silence {d.get('silence')} on {d.get('component')} "
            f"until {timestamp(float(d.get('until') or 0))} by {by}: {d.get('reason') or 'no reason given'}"
        )
    if t == T.SILENCE_EXPIRED:
        by = (d.get("by") or {}).get("user")
        return f"silence {d.get('silence')} on {d.get('component')} lifted by {by}"
    if t == T.POLICIES_LOADED:
        count = len(d.get("policies", []))
        return f"policies {'re' if d.get('reload') else ''}loaded: {count} policies, hash {d.get('hash')}"
    if t == T.POLICIES_REJECTED:
        problems = "; ".join(d.get("problems", [])[:3])
        return f"policy reload rejected, previous policies kept: {problems}"
    if t == T.DAEMON_STARTED:
        return (
            f"healer {d.get('version')} started, pid {d.get('pid')}, "
            f"rebuilt state at #{d.get('rebuilt_position')}"
        )
    if t == T.DAEMON_STOPPED:
        return f"healer stopped, pid {d.get('pid')}"
    from healer.execute.describe import describe_execute

    text = describe_execute(rec)
    if text is not None:
        return text
    if t == T.PROBE_TRANSITIONED:
        detail = f": {d.get('detail')}" if d.get("detail") else ""
        return f"{who}: probe {d.get('probe')} {d.get('previous')} -> {d.get('status')}{detail}"
    if t == T.COMPONENT_BECAME_UNKNOWN:
        return f"{who}: health unknown: probe error in {', '.join(d.get('errored', [])) or '?'}"
    if t == T.BREAKER_TRANSITIONED:
        return (
            f"{who}: breaker on {d.get('dependency')} {d.get('previous') or '?'} -> {d.get('state')} "
            f"({d.get('failure_count')} failures)"
        )
    if t == T.AGENT_REPORTED:
        return f"{who}: reported {d.get('kind')} = {d.get('value')!r}" + (
            f" ({d['detail']})" if d.get("detail") else ""
        )
    if t == T.MQTT_CONNECTED:
        buffered = d.get("buffered", 0)
        return f"MQTT link to {d.get('broker')} up (session {d.get('session')}, {buffered} buffered)"
    if t == T.MQTT_DISCONNECTED:
        return f"MQTT link to {d.get('broker')} down: {d.get('reason')}"
    if t == T.TELEMETRY_DROPPED:
        counts = ", ".join(f"{k} {v}" for k, v in dict(d.get("dropped", {})).items())
        return f"dropped bad telemetry: {counts} (of {d.get('received')} received)"
    if t == T.SYMPTOM_SUPPRESSED:
        return f"{inc}{who}: {d.get('reason') or 'symptom suppressed'} ({d.get('failure_class')})"
    if t == T.SYMPTOM_SETTLING:
        return f"{inc}{who}: {d.get('reason') or 'root recovered; settling'}"
    if t == T.SYMPTOM_RELEASED:
        return f"{inc}{who}: {d.get('reason') or 'no longer a symptom'}"
    if t == T.DRILL_STARTED:
        radius = ", ".join(d.get("radius", []))
        return f"DRILL {d.get('drill')} {d.get('name')!r} started: blast radius {radius}"
    if t in (T.DRILL_FAULT_INJECTED, T.DRILL_FAULT_REVERTED):
        f = d.get("fault") or {}
        verb = "injected" if t == T.DRILL_FAULT_INJECTED else "reverted"
        detail = f" ({f['detail']})" if f.get("detail") else ""
        return f"DRILL {d.get('drill')}: {who}: fault {f.get('kind')} {verb}{detail}"
    if t == T.DRILL_FINISHED:
        why = "; ".join(d.get("reasons", [])[:3])
        return f"DRILL {d.get('drill')} {d.get('name')!r} {str(d.get('verdict')).upper()}" + (
            f": {why}" if why else ""
        )
    dr = _describe_dr(rec, who, inc)
    if dr is not None:
        return dr
    # Event types without a case of their own still say what they carry.
    summary = _data_summary(d)
    return f"{inc}{who}: {t}" + (f" ({summary})" if summary else "")


def _describe_dr(rec: RecordedEvent, who: str, inc: str) -> str | None:
    d = rec.data
    t = rec.type
    cp = f"{d.get('agent')}#{d.get('seq')}" + (f" ({d['label']})" if d.get("label") else "")
    if t == T.CHECKPOINT_REMOVED:
        return f"{who}: checkpoint {cp} removed by retention: {d.get('reason')}"
    if t == T.CHECKPOINT_CORRUPTED:
        return f"{inc}{who}: checkpoint {cp} CORRUPT: {d.get('reason')}"
    if t == T.CHECKPOINT_RESTORED:
        return f"{inc}{who}: checkpoint {cp} restored"
    if t == T.EFFECT_COMPENSATED:
        return f"{inc}{who}: undid {d.get('effect')} ({d.get('what')}), key {d.get('idempotency_key')}"
    if t == T.FAILOVER_FENCED:
        return f"{inc}{who}: role {d.get('role')} fenced: token {d.get('token')} -> {d.get('holder')}"
    if t == T.FLAGS_RESTORED:
        return f"{inc}{who}: flags restored at {d.get('where')}: {d.get('restored')}"
    if t == T.MODEL_SWAPPED:
        why = d.get("why") or {}
        return (
            f"{inc}{who}: model {d.get('link')} {d.get('from')} -> {d.get('to')} "
            f"(because {why.get('failure_class')} on {why.get('component')})"
        )
    if t == T.AGENT_PAUSED:
        return f"{inc}{who}: agent {d.get('agent')} paused (acknowledged in {d.get('waited_s', 0):.2f}s)"
    return None


def _data_summary(d: Any, limit: int = 120) -> str:
    parts = []
    for key in sorted(d):
        value = d[key]
        if isinstance(value, dict | list):
            continue  # nested detail belongs to `healer log -v`
        parts.append(f"{key}={value}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _probe_summary(d: Any) -> str:
    probes = d.get("probes", {})
    parts = []
    for name in d.get("failing", []):
        detail = probes.get(name, {}).get("detail", "")
        parts.append(f"{name} ({detail})" if detail else name)
    return ", ".join(parts) or "probes failing"


def timestamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds")
