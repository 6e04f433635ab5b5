"""Why healer did what it did: one event plus its incident's projection, as an explanation.

Decision events stay normalised in the log (the diagnosis is recorded once, on
``incident.diagnosed``; a plan records the policy, step, hashes, rejected candidates and
guardrail values it used). The explanation joins a decision with the incident it belongs to,
folded from the log up to that event, so it is reproducible from the log alone.

Keys this module does not know yet (approval gates, budgets, breakers, silences, ...) are not
dropped: they are shown in a section named after the key, so new event types explain
themselves generically until they get their own rendering.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from healer.knowledge.events import EventType as T
from healer.knowledge.events import RecordedEvent
from healer.knowledge.projections import IncidentView
from healer.render import iso

# Data keys rendered in the named sections below; everything else goes to its own section.
_DECISION_KEYS = (
    "strategy",
    "actions",
    "policy",
    "step",
    "policy_file",
    "policy_hash",
    "policies_hash",
    "idempotency_key",
    "reason",
)
_GUARDRAIL_KEYS = ("attempt", "max_attempts", "cooldown", "not_before", "timeout", "verify_timeout")
# Keys that, when present, are guardrail state whatever event carries them.
_GENERIC_GUARDRAIL_KEYS = (
    "budget",
    "budget_left",
    "guardrail",
    "guardrails",
    "blocked_by",
    "silence",
    "silenced_until",
    "window",
    "next_allowed",
    "next_allowed_at",
)
_APPROVAL_KEYS = (
    "approval",
    "approval_id",
    "deadline",
    "on_timeout",
    "default",
    "approver",
    "by",
    "decision",
)
_OUTCOME_KEYS = ("duration_s", "error", "result", "resolution", "rto_achieved", "verified_after")
_PLUMBING = (
    "cause",
    "observation",
    "plan_key",
    "action_index",
    "action",
    "actuator",
    "description",
    "summary",
)


def explain(rec: RecordedEvent, inc: IncidentView | None = None) -> dict[str, Any]:
    """Sections (evidence, diagnosis, decision, rejected, guardrails, approval, outcome, ...)."""
    d: Mapping[str, Any] = rec.data
    out: dict[str, Any] = {}
    used: set[str] = set()

    # Evidence: what was seen (probes with their values, exit status, breakers when reported).
    if rec.type in (T.COMPONENT_FAILED, T.COMPONENT_RECOVERED):
        out["evidence"] = _probe_evidence(d)
        used |= {"probes", "failing"}
    elif rec.type == T.PROCESS_EXITED:
        out["evidence"] = {k: d[k] for k in ("pid", "exit_code", "signal", "expected", "note") if k in d}
        used |= set(out["evidence"])
    elif "evidence" in d:
        out["evidence"] = dict(d["evidence"])
        used.add("evidence")
    elif inc is not None and inc.evidence and _is_decision(rec):
        out["evidence"] = dict(inc.evidence)

    # Diagnosis and root cause.
    if rec.type == T.INCIDENT_DIAGNOSED:
        out["diagnosis"] = {
            k: d[k] for k in ("failure_class", "description", "root_cause", "symptoms") if k in d
        }
        used |= {"failure_class", "description", "root_cause", "symptoms", "summary"}
    elif inc is not None and _is_decision(rec) and inc.failure_class is not None:
        out["diagnosis"] = {
            "failure_class": inc.failure_class,
            "root_cause": inc.root_cause,
            "symptoms": list(inc.symptoms),
        }

    # The decision: the policy and step that matched, with the policy file's content hash.
    decision = {k: d[k] for k in _DECISION_KEYS if k in d and d[k] is not None}
    if rec.type.startswith("step."):
        decision.update({k: d[k] for k in ("actuator", "action", "attempt") if k in d})
    if not _is_decision(rec) and "reason" in decision:
        out["reason"] = decision.pop("reason")
    if decision:
        out["decision"] = decision
    used |= set(_DECISION_KEYS)

    if d.get("rejected"):
        out["rejected"] = [dict(r) for r in d["rejected"]]
    used.add("rejected")
    if d.get("skipped"):  # policy steps Plan passed over (attempts used up), with why
        out["skipped"] = [dict(r) if isinstance(r, Mapping) else r for r in d["skipped"]]
    used.add("skipped")

    guard = _guardrails(rec, inc)
    for key in _GENERIC_GUARDRAIL_KEYS:
        if key in d:
            guard[key] = d[key]
    if guard:
        out["guardrails"] = guard
    used |= set(_GUARDRAIL_KEYS) | set(_GENERIC_GUARDRAIL_KEYS)
    if rec.type == T.INCIDENT_DEFERRED:
        used.add("state")

    approval = {k: d[k] for k in _APPROVAL_KEYS if k in d and d[k] is not None}
    if "deadline" in approval and isinstance(approval["deadline"], int | float):
        approval["deadline_iso"] = iso(float(approval["deadline"]))
    if approval:
        out["approval"] = approval
    used |= set(_APPROVAL_KEYS)

    outcome = {k: d[k] for k in _OUTCOME_KEYS if k in d and d[k] is not None}
    if outcome:
        out["outcome"] = outcome
    used |= set(_OUTCOME_KEYS)

    # Anything else the event carries, shown as is (new event types explain themselves).
    rest = {k: v for k, v in d.items() if k not in used and k not in _PLUMBING}
    if rest:
        out["details"] = rest
    return out


# Plan's decisions: they are explained with the diagnosis and evidence they were made from.
DECISIONS = frozenset(
    {
        T.INCIDENT_DETECTED,
        T.INCIDENT_PLANNED,
        T.INCIDENT_ESCALATED,
        T.INCIDENT_DEFERRED,
        T.APPROVAL_REQUESTED,
        T.APPROVAL_EXPIRED,
        T.SYMPTOM_SUPPRESSED,
    }
)


def _is_decision(rec: RecordedEvent) -> bool:
    return rec.type in DECISIONS


def _probe_evidence(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, probe in sorted(dict(d.get("probes", {})).items()):
        item = {"status": probe.get("status"), "type": probe.get("type")}
        if probe.get("detail"):
            item["detail"] = probe["detail"]
        if probe.get("values"):
            item["values"] = probe["values"]
        out[name] = item
    if d.get("failing"):
        out["failing"] = list(d["failing"])
    return out


def _guardrails(rec: RecordedEvent, inc: IncidentView | None) -> dict[str, Any]:
    d = rec.data
    guard: dict[str, Any] = {}
    if rec.type == T.INCIDENT_PLANNED:
        attempt = d.get("attempt")
        if isinstance(attempt, int):
            guard["attempts_used"] = attempt - 1
        if "max_attempts" in d:
            guard["max_attempts"] = d["max_attempts"]
        if "cooldown" in d:
            guard["cooldown_s"] = d["cooldown"]
        nb = d.get("not_before")
        if isinstance(nb, int | float):
            guard["next_allowed"] = iso(float(nb))
            guard["wait_s"] = round(max(0.0, float(nb) - rec.ts), 3)
    elif rec.type == T.INCIDENT_DEFERRED:
        # Plan's deferral: the blocking guardrail's own state (cooldown: attempts used, delay).
        raw = d.get("state")
        st: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        if isinstance(st.get("attempts_used"), int):
            guard["attempts_used"] = st["attempts_used"]
        if d.get("guardrail") == "cooldown" and isinstance(st.get("delay"), int | float):
            guard["cooldown_s"] = st["delay"]
        if st:
            guard["state"] = dict(st)
        nb = d.get("next_allowed_at")
        if isinstance(nb, int | float):
            guard["next_allowed"] = iso(float(nb))
            guard["wait_s"] = round(max(0.0, float(nb) - rec.ts), 3)
    if (
        inc is not None
        and rec.type in (T.INCIDENT_PLANNED, T.INCIDENT_ESCALATED, T.INCIDENT_DEFERRED)
        and inc.attempts
    ):
        guard["attempts_by_step"] = {str(k): v for k, v in sorted(inc.attempts.items())}
    return guard


def render_lines(sections: Mapping[str, Any]) -> list[str]:
    """The explanation as short indented lines (the ``-v`` detail under a log line)."""
    lines: list[str] = []
    for name, value in sections.items():
        if name == "evidence" and isinstance(value, Mapping):
            parts = []
            for key, item in value.items():
                if isinstance(item, Mapping) and "status" in item:
                    text = f"{key} {item.get('status')}"
                    if item.get("detail"):
                        text += f" ({item['detail']})"
                    if item.get("values"):
                        text += " " + _kv(item["values"])
                    parts.append(text)
                else:
                    parts.append(f"{key}={_short(item)}")
            lines.append(f"evidence: {'; '.join(parts)}")
        elif name == "diagnosis" and isinstance(value, Mapping):
            text = f"diagnosis: {value.get('failure_class')}, root cause {value.get('root_cause')}"
            if value.get("symptoms"):
                text += f", symptoms {', '.join(map(str, value['symptoms']))}"
            if value.get("description"):
                text += f" — {value['description']}"
            lines.append(text)
        elif name == "decision" and isinstance(value, Mapping):
            lines.append("decision: " + _decision_text(value))
        elif name == "rejected" and isinstance(value, list):
            for r in value:
                lines.append(f"rejected: {r.get('policy')} ({r.get('file')}): {r.get('reason')}")
        else:
            lines.append(f"{name}: {_kv(value) if isinstance(value, Mapping) else _short(value)}")
    return lines


def _decision_text(v: Mapping[str, Any]) -> str:
    parts = []
    if "strategy" in v:
        parts.append(str(v["strategy"]))
    if v.get("actions"):
        parts.append("via " + ", ".join(f"{a.get('actuator')}.{a.get('action')}" for a in v["actions"] if a))
    elif "actuator" in v:
        parts.append(f"{v.get('actuator')}.{v.get('action')}")
    if "policy" in v:
        step = f" step {v['step']}" if v.get("step") is not None else ""
        parts.append(f"policy {v['policy']}{step}")
    if "policy_file" in v:
        parts.append(f"file {v['policy_file']} sha256:{v.get('policy_hash')}")
    if "idempotency_key" in v:
        parts.append(f"key {v['idempotency_key']}")
    if "reason" in v:
        parts.append(f"because {v['reason']}")
    return "; ".join(parts)


def _kv(m: Any) -> str:
    if not isinstance(m, Mapping):
        return _short(m)
    return ", ".join(f"{k}={_short(v)}" for k, v in m.items())


def _short(v: Any, limit: int = 160) -> str:
    import json

    if isinstance(v, float):
        v = round(v, 6)  # 1.0499999523 is 1.05 to a reader
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
