"""Guardrails and policy conditions: pure functions of the snapshot, the policies and ``now``.

Every counter comes from :class:`FleetState`, which is folded from the event log, so a limit
reached before a daemon restart or a policy reload is still reached after it. A check returns
what it saw (``state``) and, when it blocks, the next time it may allow the action
(``retry_at``; None when only a change in the fleet can free it, such as a budget slot).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from healer.knowledge.projections import FleetState, IncidentView
from healer.plan.policy import DAYS, Budget, Conditions, PolicySet, Step

# The order guardrails are evaluated in (approval sits between the two groups: nobody is asked
# to approve an action a silence or a maintenance window forbids anyway).
BEFORE_APPROVAL = ("silence", "maintenance")
AFTER_APPROVAL = ("cooldown", "budget.max_concurrent", "budget.max_actions", "budget.min_healthy")


class Check(NamedTuple):
    """One guardrail's verdict. A named tuple rather than a frozen dataclass: Plan builds six per
    decision, and a frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field) cost
    ~1.2 us against ~0.5 us, several microseconds of a plan's ~25 in a storm."""

    name: str
    ok: bool
    state: dict[str, Any]
    retry_at: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"guardrail": self.name, "ok": self.ok, "state": self.state}
        if not self.ok:
            out["next_allowed_at"] = self.retry_at
            out["reason"] = self.reason
        return out


# -- conditions --------------------------------------------------------------------------------------
def _lookup(evidence: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    if key in evidence:
        return True, evidence[key]
    node: Any = evidence
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def holds(cond: Mapping[str, Any], present: bool, value: Any) -> bool:
    """One condition against one value. A missing value satisfies only ``ne``, ``not_in`` and
    ``exists: false``."""
    for op, arg in cond.items():
        if op == "exists":
            ok = present == bool(arg)
        elif not present:
            ok = op in ("ne", "not_in")
        elif op == "eq":
            ok = value == arg
        elif op == "ne":
            ok = value != arg
        elif op == "in":
            ok = value in arg
        elif op == "not_in":
            ok = value not in arg
        elif op == "matches":
            ok = re.search(str(arg), str(value)) is not None
        else:
            num = _number(value)
            ok = num is not None and (
                (op == "gt" and num > arg)
                or (op == "gte" and num >= arg)
                or (op == "lt" and num < arg)
                or (op == "lte" and num <= arg)
            )
        if not ok:
            return False
    return True


def _cond_text(cond: Mapping[str, Any]) -> str:
    return ", ".join(f"{op} {arg!r}" for op, arg in cond.items())


def history_counts(state: FleetState, component: str, within: float, now: float) -> dict[str, int]:
    comp = state.components.get(component)
    if comp is None:
        return {"incidents": 0, "escalations": 0, "actions": 0}
    since = now - within
    incidents = escalations = 0
    for iid in comp.incident_ids:
        inc = state.incidents.get(iid)
        if inc is None:
            continue
        if inc.opened_at >= since:
            incidents += 1
        if inc.escalated_at is not None and inc.escalated_at >= since:
            escalations += 1
    actions = sum(1 for ts, _ in comp.attempt_log if ts >= since)
    return {"incidents": incidents, "escalations": escalations, "actions": actions}


def unmet(
    cond: Conditions | None, state: FleetState, inc: IncidentView, now: float, tz: dt.tzinfo
) -> str | None:
    """Why ``cond`` does not hold for this incident now, or None when it holds."""
    if cond is None:
        return None
    for key, c in cond.evidence.items():
        present, value = _lookup(inc.evidence, key)
        if not holds(c, present, value):
            seen = repr(value) if present else "absent"
            return f"evidence {key} is {seen}, wanted {_cond_text(c)}"
    if cond.time is not None:
        local = dt.datetime.fromtimestamp(now, tz)
        day = DAYS[local.weekday()]
        if cond.time.days is not None and day not in cond.time.days:
            return f"{day} is not one of {cond.time.days} ({_zone_name(tz)})"
        if cond.time.between is not None:
            start, end = cond.time.between
            hhmm = f"{local.hour:02d}:{local.minute:02d}"
            s, e = _pad(start), _pad(end)
            inside = (s <= hhmm < e) if s <= e else (hhmm >= s or hhmm < e)
            if not inside:
                return f"local time {hhmm} ({_zone_name(tz)}) is not between {start} and {end}"
    if cond.history is not None:
        h = cond.history
        counts = history_counts(state, inc.component, h.within, now)
        for key in ("incidents", "escalations", "actions"):
            c = getattr(h, key)
            if c is not None and not holds(c, True, counts[key]):
                return f"{counts[key]} {key} in the last {h.within:g}s, wanted {_cond_text(c)}"
    return None


def _pad(hhmm: str) -> str:
    h, m = hhmm.split(":")
    return f"{int(h):02d}:{m}"


def _zone_name(tz: dt.tzinfo) -> str:
    return str(getattr(tz, "key", None) or tz.tzname(None) or "UTC")


# -- guardrails ---------------------------------------------------------------------------------------
def check_silence(state: FleetState, component: str, now: float) -> Check:
    active = [
        s for s in state.silences.values() if s.active(now) and fnmatch.fnmatchcase(component, s.component)
    ]
    if not active:
        return Check("silence", True, {"active": 0})
    until = max(s.until for s in active)
    first = min(active, key=lambda s: s.id)
    return Check(
        "silence",
        False,
        {"silences": [s.id for s in active], "until": until, "reason": first.reason, "by": first.by},
        retry_at=until,
        reason=f"silenced until {_hms(until)} ({first.reason or 'no reason given'})",
    )


def check_maintenance(policies: PolicySet, component: str, labels: Mapping[str, str], now: float) -> Check:
    open_windows = []
    for w in policies.maintenance:
        if w.applies_to(component, labels):
            until = w.open_until(now)
            if until is not None:
                open_windows.append((w, until))
    if not open_windows:
        return Check("maintenance", True, {"open": 0})
    until = max(u for _, u in open_windows)
    names = [w.model.name for w, _ in open_windows]
    return Check(
        "maintenance",
        False,
        {"windows": names, "until": until},
        retry_at=until,
        reason=f"maintenance window {', '.join(names)} open until {_hms(until)}",
    )


def cooldown_delay(step: Step, used: int) -> float:
    """Cooldown before the next attempt, with exponential backoff over the attempts used."""
    if used <= 0:
        return step.cooldown
    return min(step.cooldown * step.backoff ** (used - 1), max(step.max_cooldown, step.cooldown))


def check_cooldown(state: FleetState, component: str, kind: str, step: Step, used: int, now: float) -> Check:
    delay = cooldown_delay(step, used)
    comp = state.components.get(component)
    last = comp.last_action_by.get(kind) if comp is not None else None
    st: dict[str, Any] = {"kind": kind, "last_action_at": last, "delay": delay, "attempts_used": used}
    if last is None or now >= last + delay:
        return Check("cooldown", True, st)
    return Check(
        "cooldown",
        False,
        st,
        retry_at=last + delay,
        reason=f"{kind} on {component} {now - last:.1f}s ago; cooldown {delay:g}s "
        f"(backoff x{step.backoff:g} over {used} attempt(s))",
    )


def in_flight(state: FleetState, exclude: int | None = None) -> list[IncidentView]:
    """Open incidents under remediation: planned at least once and not yet closed."""
    out = []
    for iid in state.active_incident.values():
        inc = state.incidents.get(iid)
        if inc is not None and inc.is_open and inc.plan is not None and inc.id != exclude:
            out.append(inc)
    return sorted(out, key=lambda i: i.id)


def waiting_for_budget(state: FleetState, before: int) -> list[IncidentView]:
    """Incidents queued for a concurrency slot ahead of incident ``before`` (first come, first served)."""
    out = []
    for iid in state.active_incident.values():
        inc = state.incidents.get(iid)
        if (
            inc is not None
            and inc.is_open
            and inc.id < before
            and inc.phase == "deferred"
            and (inc.deferred or {}).get("guardrail") == "budget.max_concurrent"
        ):
            out.append(inc)
    return out


def check_concurrency(state: FleetState, inc: IncidentView, budget: Budget | None) -> Check:
    if budget is None or budget.max_concurrent is None:
        return Check("budget.max_concurrent", True, {"limit": None})
    limit = budget.max_concurrent
    flying = in_flight(state, exclude=inc.id)
    st: dict[str, Any] = {"limit": limit, "in_flight": [i.component for i in flying]}
    if inc.plan is not None:
        return Check("budget.max_concurrent", True, {**st, "holds_slot": True})
    ahead = waiting_for_budget(state, inc.id)
    st["queued_ahead"] = [i.component for i in sorted(ahead, key=lambda i: i.id)]
    if len(flying) + len(ahead) < limit:
        return Check("budget.max_concurrent", True, st)
    return Check(
        "budget.max_concurrent",
        False,
        st,
        retry_at=None,
        reason=f"{len(flying)}/{limit} components under remediation"
        + (f", {len(ahead)} queued ahead" if ahead else ""),
    )


def check_rate(state: FleetState, budget: Budget | None, now: float) -> Check:
    if budget is None or budget.max_actions is None:
        return Check("budget.max_actions", True, {"limit": None})
    since = now - budget.window
    recent = [t for t in state.plan_times if t > since]
    st: dict[str, Any] = {"limit": budget.max_actions, "window": budget.window, "used": len(recent)}
    if len(recent) < budget.max_actions:
        return Check("budget.max_actions", True, st)
    retry = recent[len(recent) - budget.max_actions] + budget.window
    return Check(
        "budget.max_actions",
        False,
        st,
        retry_at=retry,
        reason=f"{len(recent)} actions in the last {budget.window:g}s (limit {budget.max_actions})",
    )


def check_min_healthy(
    state: FleetState,
    component: str,
    all_labels: Mapping[str, Mapping[str, str]],
    budget: Budget | None,
) -> Check:
    if budget is None or budget.min_healthy is None:
        return Check("budget.min_healthy", True, {"limit": None})
    key = budget.group_by
    group = all_labels.get(component, {}).get(key)
    if group is None:
        return Check("budget.min_healthy", True, {"group": None, "group_by": key})
    members = sorted(n for n, lbl in all_labels.items() if lbl.get(key) == group)
    # Healthy: passing its probes with no incident of its own (a crash is an incident before the
    # probes notice it).
    healthy = [
        n for n in members if state.component(n).health == "healthy" and n not in state.active_incident
    ]
    fraction = len(healthy) / len(members) if members else 1.0
    st: dict[str, Any] = {
        "group": group,
        "healthy": len(healthy),
        "members": len(members),
        "fraction": round(fraction, 4),
        "min_healthy": budget.min_healthy,
    }
    if fraction >= budget.min_healthy:
        return Check("budget.min_healthy", True, st)
    return Check(
        "budget.min_healthy",
        False,
        st,
        retry_at=None,
        reason=f"group {key}={group}: {len(healthy)}/{len(members)} healthy, below {budget.min_healthy:g}: "
        "too much is failing at once for automatic action",
    )


def _hms(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
