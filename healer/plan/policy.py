"""Remediation policies: YAML runbooks, validated with ``file:line:column: key.path: message`` errors.

A policy file holds policies and, optionally, the fleet-wide guardrails (one disruption
``budget`` and any number of ``maintenance`` windows). A policy matches components (name
globs, labels from the config) and failure classes, may add conditions (diagnosis evidence,
time of day, the component's recent history), and gives an ordered escalation chain of steps.
Each step is a strategy (restart, rollback, failover, degrade, swap_model, compensate,
escalate) or a direct actuator call, expanded into the saga of actions Execute runs.

Loading is the only I/O here (files, time-zone data, installed actuator names); the result is
immutable and everything the pure planner needs is resolved up front. The set is versioned by
content hash: every decision records the hash of the file it came from and of the whole set.
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from healer.config import HealerConfig, component_probes, parse_duration
from healer.errors import PolicyError
from healer.yamldoc import YamlDocument, YamlDocumentError, YamlProblem, format_key_path, load_yaml_file

SCHEMA_MODELINE = "# yaml-language-server: $schema=../docs/policy.schema.json"
ACTUATOR_GROUP = "healer.actuators"

# The strategies a step can name, with what each expands to (see ``expand_step``).
STRATEGIES: tuple[str, ...] = (
    "restart",
    "rollback",
    "failover",
    "degrade",
    "swap_model",
    "compensate",
    "escalate",
)
# A step that names an actuator directly is recorded with this strategy.
RUN = "run"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "matches", "exists")
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")

Loc = tuple[str | int, ...]


# -- field types that keep the JSON Schema honest about what YAML may say ----------------------
def _duration(value: Any) -> Any:
    return parse_duration(value)


PDuration = Annotated[
    float,
    BeforeValidator(_duration),
    Field(ge=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
            ],
            "description": "a duration: seconds as a number, or a string such as 500ms, 5s, 2m, 1h",
        }
    ),
]

_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
_OPS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "eq": _SCALAR_SCHEMA,
        "ne": _SCALAR_SCHEMA,
        "in": {"type": "array", "items": _SCALAR_SCHEMA},
        "not_in": {"type": "array", "items": _SCALAR_SCHEMA},
        "gt": {"type": "number"},
        "gte": {"type": "number"},
        "lt": {"type": "number"},
        "lte": {"type": "number"},
        "matches": {"type": "string", "description": "a regular expression searched in the value"},
        "exists": {"type": "boolean"},
    },
}


def _check_condition(value: Any) -> Any:
    """A condition is a value (equal), a list (one of) or a mapping of operators."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                raise ValueError("a list condition holds plain values (the value must equal one of them)")
        return {"in": value}
    if not isinstance(value, dict):
        return {"eq": value}
    if not value:
        raise ValueError(f"empty condition: use an operator ({', '.join(OPERATORS)})")
    for op, arg in value.items():
        if op not in OPERATORS:
            near = difflib.get_close_matches(str(op), OPERATORS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(OPERATORS)})"
            raise ValueError(f"unknown operator {op!r}{hint}")
        if op in ("gt", "gte", "lt", "lte") and (isinstance(arg, bool) or not isinstance(arg, int | float)):
            raise ValueError(f"{op!r} compares numbers, got {arg!r}")
        if op in ("in", "not_in") and not isinstance(arg, list):
            raise ValueError(f"{op!r} takes a list of values, got {arg!r}")
        if op == "matches":
            if not isinstance(arg, str):
                raise ValueError(f"'matches' takes a regular expression string, got {arg!r}")
            try:
                re.compile(arg)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {arg!r}: {exc}") from None
        if op == "exists" and not isinstance(arg, bool):
            raise ValueError(f"'exists' takes true or false, got {arg!r}")
    return dict(value)


Condition = Annotated[
    dict[str, Any],
    BeforeValidator(_check_condition),
    WithJsonSchema(
        {
            "anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA}, _OPS_SCHEMA],
            "description": "a value (equal), a list (one of), or operators: " + ", ".join(OPERATORS),
        }
    ),
]

_NUM_OPS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {k: {"type": "number"} for k in ("eq", "ne", "gt", "gte", "lt", "lte")},
}


def _check_count(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | dict):
        raise ValueError(f"expected a count comparison such as {{gte: 3}}, got {value!r}")
    if isinstance(value, int):
        return {"gte": value}
    cond = _check_condition(value)
    for op in cond:
        if op not in ("eq", "ne", "gt", "gte", "lt", "lte"):
            raise ValueError(f"a count takes eq, ne, gt, gte, lt or lte, not {op!r}")
        if isinstance(cond[op], bool) or not isinstance(cond[op], int | float):
            raise ValueError(f"{op!r} compares numbers, got {cond[op]!r}")
    return cond


Count = Annotated[
    dict[str, Any],
    BeforeValidator(_check_count),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 0}, _NUM_OPS_SCHEMA],
            "description": "a number (at least that many) or a comparison such as {gte: 3}",
        }
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- conditions ----------------------------------------------------------------------------------
class TimeCondition(_Strict):
    """Local time of day and day of week, in ``timezone`` (default: the file's timezone)."""

    between: tuple[str, str] | None = Field(
        default=None, description='["HH:MM", "HH:MM"], start inclusive, end exclusive; wraps midnight'
    )
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None
    timezone: str | None = Field(default=None, description="an IANA zone such as Europe/Berlin")


class HistoryCondition(_Strict):
    """The component's recent history, counted from the event log."""

    within: PDuration = Field(default=3600.0, description="the window the counts look back over")
    incidents: Count | None = Field(
        default=None, description="incidents opened on the component in the window, the current one included"
    )
    escalations: Count | None = Field(
        default=None, description="incidents of the component escalated in the window"
    )
    actions: Count | None = Field(
        default=None, description="remediation attempts started on the component in the window"
    )


class Conditions(_Strict):
    evidence: dict[str, Condition] = Field(
        default_factory=dict,
        description="diagnosis evidence values by key (dotted keys reach into nested values)",
    )
    time: TimeCondition | None = None
    history: HistoryCondition | None = None


# -- steps -----------------------------------------------------------------------------------------
class ActionSpec(_Strict):
    """One call of an installed actuator."""

    actuator: str
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: PDuration | None = Field(default=None, description="default: the step's timeout")


class Verify(_Strict):
    probes: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None,
        min_length=1,
        description="the probes that must pass, by the names the config gives them (`name`, else "
        "TYPE#INDEX); default: all of the component's probes",
    )
    timeout: PDuration = Field(default=30.0, description="the probes must pass within this")
    stable_for: PDuration = Field(
        default=0.0, description="and then keep passing this long before the step counts as a success"
    )


class Approval(_Strict):
    timeout: PDuration = Field(default=900.0, description="how long to wait for `healer approve/deny`")
    default: Literal["deny", "approve"] = Field(default="deny", description="what a timeout decides")


class Step(_Strict):
    name: str | None = Field(default=None, description="a label for logs and postmortems")
    strategy: str | None = Field(default=None, description="one of: " + ", ".join(STRATEGIES))
    # A step that calls an actuator directly: one action, or a saga of several.
    actuator: str | None = Field(
        default=None, description="an installed actuator (with `action`), or a strategy name"
    )
    action: str | None = None
    params: dict[str, Any] = Field(
        default_factory=dict, description="actuator parameters (merged into a strategy's main action)"
    )
    actions: list[ActionSpec] | None = Field(
        default=None, description="a saga of actuator calls, run in order (direct steps, compensate)"
    )
    # restart
    via: Literal["process", "systemd"] = Field(default="process", description="restart: which actuator")
    unit: str | None = Field(default=None, description="restart via systemd: the unit")
    # rollback
    checkpoint: str = Field(
        default="latest",
        description="rollback: the checkpoint to restore: latest, before-incident, seq:N or label:NAME",
    )
    compensations: list[ActionSpec] = Field(
        default_factory=list, description="rollback: compensating actions run after the restore"
    )
    halt: Literal["stop", "pause"] = Field(
        default="stop",
        description="rollback: halt the agent by stopping it, or by asking it to pause over MQTT "
        "(dr.pause: waits for its acknowledgement, then falls back to stopping it)",
    )
    # failover
    standby: str | None = Field(default=None, description="failover: the standby component to promote")
    promote: ActionSpec | None = Field(
        default=None, description="failover: how to promote the standby (default: dr.promote)"
    )
    fence: bool = Field(default=True, description="failover: stop the failed active first")
    # degrade
    flags: dict[str, Any] | None = Field(default=None, description="degrade: feature flags to set")
    # swap_model
    link: str | None = Field(default=None, description="swap_model: the symlink to repoint")
    target: str | None = Field(
        default=None,
        description="swap_model: the version it points to (default: the previous one)",
    )
    restart: bool = Field(default=False, description="swap_model: restart the process after the swap")
    # escalate
    message: str | None = Field(default=None, description="escalate: what the human should know")
    # common
    when: Conditions | None = Field(default=None, description="skip this step unless these hold")
    max_attempts: int = Field(default=3, ge=1, le=100)
    window: PDuration | None = Field(
        default=None,
        description="count attempts on the component over this window (across incidents) "
        "instead of within the incident",
    )
    cooldown: PDuration = Field(
        default=5.0, description="minimum time since the same action on the component"
    )
    backoff: float = Field(default=2.0, ge=1.0, le=10.0, description="cooldown multiplier per attempt used")
    max_cooldown: PDuration = 300.0
    timeout: PDuration = Field(default=30.0, description="for each action of the step")
    verify: Verify | None = None
    verify_timeout: PDuration | None = Field(default=None, description="shorthand for verify.timeout")
    approval: Approval | None = Field(default=None, description="wait for a human before acting")
    on_failure: Literal["next", "escalate"] = Field(
        default="next", description="when the attempts are used up: the next step, or escalate now"
    )

    # -- derived ----------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """The strategy this step runs (a strategy name, or ``run`` for a direct actuator step)."""
        if self.strategy is not None:
            return self.strategy
        if self.actuator is not None and self.action is None and self.actuator in STRATEGIES:
            return self.actuator
        return RUN

    @property
    def verify_within(self) -> float:
        if self.verify is not None:
            return self.verify.timeout
        return self.verify_timeout if self.verify_timeout is not None else 30.0

    @property
    def stable_for(self) -> float:
        return self.verify.stable_for if self.verify is not None else 0.0

    @property
    def verify_probes(self) -> list[str] | None:
        """The probes the verification judges by (None: all of the component's)."""
        return list(self.verify.probes) if self.verify is not None and self.verify.probes else None

    def label(self, index: int) -> str:
        return f"step {index} ({self.name or self.kind})"


class Match(_Strict):
    components: list[str] = Field(default_factory=lambda: ["*"], min_length=1, description="names or globs")
    labels: dict[str, str] = Field(default_factory=dict, description="labels set in the config")
    failures: list[str] = Field(min_length=1, description='failure classes, or "*"')


class PolicyModel(_Strict):
    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    priority: int = Field(default=0, description="higher first; ties: file name, then order in the file")
    match: Match
    when: Conditions | None = Field(default=None, description="the policy applies only when these hold")
    steps: list[Step] = Field(min_length=1)


class Budget(_Strict):
    """The fleet-wide disruption budget (at most one file sets it)."""

    max_concurrent: int | None = Field(default=None, ge=1, description="components under remediation at once")
    max_actions: int | None = Field(default=None, ge=1, description="remediation actions per window")
    window: PDuration = Field(default=600.0, description="the window max_actions counts over")
    min_healthy: float | None = Field(
        default=None, ge=0.0, le=1.0, description="no action while a group has fewer healthy than this"
    )
    group_by: str = Field(default="group", description="the label whose value names a component's group")


class Maintenance(_Strict):
    """No automatic action on matching components while the window is open."""

    name: str = Field(pattern=_NAME_PATTERN)
    components: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    cron: str | None = Field(default=None, description="when the window opens, e.g. '0 2 * * sun'")
    duration: PDuration | None = Field(default=None, description="how long it stays open (with cron)")
    start: dt.datetime | None = Field(default=None, description="an explicit window: ISO 8601 start")
    end: dt.datetime | None = Field(default=None, description="an explicit window: ISO 8601 end")
    timezone: str | None = None
    reason: str = ""


class _FileSettings(_Strict):
    version: Literal[1] = 1
    timezone: str = Field(default="UTC", description="for time conditions and cron windows in this file")
    budget: Budget | None = None
    maintenance: list[Maintenance] = Field(default_factory=list)


class PolicyFile(_FileSettings):
    policies: list[PolicyModel] = Field(default_factory=list)


class _FileShell(_FileSettings):
    """What the loader validates first: each policy is then validated on its own, so one
    broken policy does not hide the problems of the others."""

    policies: list[Any] = Field(default_factory=list)


# -- the loaded, resolved set ----------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    model: PolicyModel
    file: str
    file_hash: str
    index: int  # order within the file
    tz: dt.tzinfo = dt.UTC
    step_tz: tuple[dt.tzinfo, ...] = ()  # per step, for time conditions

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def steps(self) -> list[Step]:
        return self.model.steps

    def rejection(self, component: str, labels: Mapping[str, str], failure_class: str) -> str | None:
        """Why this policy's ``match`` does not apply, or None when it does (conditions aside)."""
        m = self.model.match
        if not _matches_any(component, m.components):
            return f"component {component!r} not in {m.components}"
        for key, want in m.labels.items():
            if labels.get(key) != want:
                return f"label {key}={want!r} not set on {component!r}"
        if failure_class not in m.failures and "*" not in m.failures:
            return f"failure {failure_class!r} not in {m.failures}"
        return None


def _matches_any(component: str, patterns: Sequence[str]) -> bool:
    # "*" matches every name, the empty one too: the common catch-all needs no regex match
    # (~0.7 us each, per policy and per decision: a storm plans a thousand incidents at once).
    return any(pat == "*" or fnmatch.fnmatchcase(component, pat) for pat in patterns)


@dataclass(frozen=True)
class MaintenanceWindow:
    model: Maintenance
    file: str
    tz: dt.tzinfo

    def applies_to(self, component: str, labels: Mapping[str, str]) -> bool:
        m = self.model
        if not _matches_any(component, m.components):
            return False
        return all(labels.get(k) == v for k, v in m.labels.items())

    def open_until(self, now: float) -> float | None:
        """The end of the window if it is open at ``now``, else None. Pure: no clock, no files."""
        m = self.model
        if m.start is not None and m.end is not None:
            start, end = _aware(m.start, self.tz).timestamp(), _aware(m.end, self.tz).timestamp()
            return end if start <= now < end else None
        if m.cron is not None and m.duration is not None:
            local = dt.datetime.fromtimestamp(now, self.tz)
            # The latest opening at or before now (cronsim in reverse starts strictly before).
            probe = local + dt.timedelta(seconds=1)
            try:
                opened = next(iter(CronSim(m.cron, probe.replace(microsecond=0), reverse=True)))
            except (StopIteration, CronSimError, ValueError, OverflowError):
                return None
            end = opened.timestamp() + m.duration
            return end if opened.timestamp() <= now < end else None
        return None


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]
    files: Mapping[str, str]  # path -> sha256 of its content
    budget: Budget | None = None
    budget_file: str | None = None
    maintenance: tuple[MaintenanceWindow, ...] = ()
    installed: frozenset[str] | None = field(default=None, compare=False)

    @cached_property
    def hash(self) -> str:  # read by every decision: computed once (the set is immutable)
        blob = json.dumps(sorted(self.files.items())).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


EMPTY = PolicySet((), {})


@dataclass(frozen=True)
class Member:
    """What policies may refer to of one configured component: its labels and probe names."""

    labels: Mapping[str, str]
    probes: tuple[str, ...]


def fleet_of(config: HealerConfig) -> dict[str, Member]:
    """The configured components as the policy loader checks them (``load_policies(fleet=)``)."""
    return {
        name: Member(dict(comp.labels), tuple(n for n, _ in component_probes(comp)))
        for name, comp in config.components.items()
    }


_PAUSE_KEYS = frozenset({"timeout", "fallback", "prefix", "host", "port"})


# -- strategies -> actions -------------------------------------------------------------------------
def expand_step(step: Step) -> list[dict[str, Any]]:
    """The saga of actions a step runs, in order: ``{"actuator", "action", "params", "timeout"}``.

    ``escalate`` runs nothing. Each strategy's expansion is documented in docs/policies.md.
    """
    t = step.timeout

    def act(actuator: str, action: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {"actuator": actuator, "action": action, "params": dict(params or {}), "timeout": t}

    def spec(a: ActionSpec) -> dict[str, Any]:
        return {
            "actuator": a.actuator,
            "action": a.action,
            "params": dict(a.params),
            "timeout": a.timeout if a.timeout is not None else t,
        }

    kind = step.kind
    p = dict(step.params)
    if kind == "restart":
        if step.via == "systemd":
            return [act("systemd", "restart", {"unit": step.unit, **p})]
        return [act("process", "restart", p)]
    if kind == "rollback":
        # healer.dr: halt, restore (verified, never before a pivot), undo the ledger's effects
        # after it (exactly once), any extra compensations, restart; verify follows as for any step.
        agent = {k: v for k, v in p.items() if k == "agent"}
        if step.halt == "pause":
            # Pause params (timeout, fallback, prefix, host, port) come from `params` too.
            mqtt = {k: v for k, v in p.items() if k in _PAUSE_KEYS}
            halt, resume = act("dr", "pause", {**agent, **mqtt}), act("dr", "resume", {**agent, **mqtt})
        else:
            halt, resume = act("process", "stop"), act("process", "start")
        return [
            halt,
            act(
                "dr",
                "restore",
                {"checkpoint": step.checkpoint, **{k: v for k, v in p.items() if k not in _PAUSE_KEYS}},
            ),
            act("dr", "compensate", agent),
            *(spec(a) for a in step.compensations),
            resume,
        ]
    if kind == "failover":
        # The dr actuator fences by token, hands the standby the latest good checkpoint, starts it.
        promote = step.promote or ActionSpec(actuator="dr", action="promote")
        first = [act("process", "stop")] if step.fence else []
        params = {"standby": step.standby, **promote.params, **p}
        return [*first, spec(promote.model_copy(update={"params": params}))]
    if kind == "degrade":
        return [act("feature_flag", "set", {"flags": dict(step.flags or {}), **p})]
    if kind == "swap_model":
        # symlink_swap works on ROOT/LINK with versions beside it: `link` names the link by its
        # path, `target` a version (a name, or a path beside the link); no target: back to the
        # version the link named before (the `previous` link).
        root, name = os.path.split(str(step.link or ""))
        where = {"root": root, "link": name}
        if step.target:
            swap = act("symlink_swap", "swap", {**where, "to": os.path.basename(step.target), **p})
        else:
            swap = act("symlink_swap", "rollback", {**where, **p})
        return [swap, *([act("process", "restart")] if step.restart else [])]
    if kind == "compensate":
        return [spec(a) for a in step.actions or []]
    if kind == "escalate":
        return []
    if step.actions is not None:
        return [spec(a) for a in step.actions]
    return [act(str(step.actuator), str(step.action), p)]


# -- loading and checking ----------------------------------------------------------------------------
def installed_actuators() -> frozenset[str]:
    """Names registered under the ``healer.actuators`` entry-point group, read now (not cached)."""
    names = {ep.name for ep in entry_points(group=ACTUATOR_GROUP)}
    names.add("process")  # the built-in is always there, registered or not
    return frozenset(names)


def _actuator_actions(name: str) -> frozenset[str] | None:
    """The actions an installed actuator declares (class attribute ``actions``), if it declares them."""
    for ep in entry_points(group=ACTUATOR_GROUP):
        if ep.name != name:
            continue
        try:
            cls = ep.load()
        except Exception:  # a broken plugin is reported by the daemon's registry, not here
            return None
        # The Actuator protocol's `actions`; `ACTIONS` is accepted from plugins written before it.
        actions = getattr(cls, "actions", None) or getattr(cls, "ACTIONS", None)
        if isinstance(actions, frozenset | set | tuple | list) and all(isinstance(a, str) for a in actions):
            return frozenset(actions)
        return None
    return None


def _hint(value: str, known: Iterable[str]) -> str:
    known = sorted(set(known))
    near = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(known)})"


def _zone(name: str) -> dt.tzinfo:
    if name.upper() == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


_CHECKPOINT_TARGET = re.compile(r"^(latest|before-incident|seq:[0-9]+|label:.+)$")


class _Checker:
    """Checks pydantic cannot express: names, combinations, installed actuators, time zones."""

    def __init__(self, installed: frozenset[str] | None, fleet: Mapping[str, Member] | None = None) -> None:
        self.installed = installed
        self.fleet = fleet
        self.found: list[tuple[Loc, str]] = []
        self._actions_cache: dict[str, frozenset[str] | None] = {}

    def add(self, loc: Loc, msg: str) -> None:
        self.found.append((loc, msg))

    def zone(self, loc: Loc, name: str | None, default: dt.tzinfo) -> dt.tzinfo:
        if name is None:
            return default
        try:
            return _zone(name)
        except ValueError as exc:
            self.add(loc, str(exc))
            return default

    def conditions(self, loc: Loc, cond: Conditions | None) -> None:
        if cond is None or cond.time is None:
            return
        t = cond.time
        if t.between is not None:
            for i, hhmm in enumerate(t.between):
                if not _HHMM.match(hhmm):
                    self.add((*loc, "time", "between", i), f"expected a time such as 08:30, got {hhmm!r}")
        if t.between is None and t.days is None:
            self.add((*loc, "time"), "a time condition needs `between` or `days`")

    def actuator(self, loc: Loc, name: str, action: str | None, action_loc: Loc) -> None:
        if self.installed is None:
            return
        if name not in self.installed:
            self.add(loc, f"unknown actuator {name!r}{_hint(name, {*self.installed, *STRATEGIES})}")
            return
        if action is None:
            return
        if name not in self._actions_cache:
            self._actions_cache[name] = _actuator_actions(name)
        known = self._actions_cache[name]
        if known is not None and action not in known:
            self.add(action_loc, f"actuator {name!r} has no action {action!r}{_hint(action, known)}")

    def verify_probes(self, loc: Loc, match: Match, step: Step) -> None:
        """Every probe a step's verification names must be a probe of every configured component
        the policy can match (checked only when the config is known: the daemon, ``-c``)."""
        names = step.verify_probes
        if self.fleet is None or not names:
            return
        matched = [
            (comp, member)
            for comp, member in sorted(self.fleet.items())
            if any(fnmatch.fnmatchcase(comp, pat) for pat in match.components)
            and all(member.labels.get(k) == v for k, v in match.labels.items())
        ]
        for k, probe in enumerate(names):
            lacking = [(c, m) for c, m in matched if probe not in m.probes]
            if not lacking:
                continue
            who = ", ".join(c for c, _ in lacking[:5]) + (
                f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
            )
            known = {p for _, m in lacking for p in m.probes}
            near = difflib.get_close_matches(probe, sorted(known), n=1)
            first, member = lacking[0]
            hint = (
                f" (did you mean {near[0]!r}?)"
                if near
                else f" ({first} has: {', '.join(member.probes) or 'no probes'})"
            )
            self.add(
                (*loc, "verify", "probes", k),
                f"unknown probe {probe!r}: not a probe of {who}, matched by this policy{hint}",
            )

    def spec(self, loc: Loc, a: ActionSpec) -> None:
        self.actuator((*loc, "actuator"), a.actuator, a.action, (*loc, "action"))

    def step(self, loc: Loc, step: Step, is_last: bool) -> None:
        s = step
        if s.strategy is not None and s.actuator is not None:
            self.add((*loc, "actuator"), "a step has either `strategy` or `actuator`, not both")
            return
        if s.strategy is None and s.actuator is None and s.actions is None:
            self.add(loc, "a step needs a `strategy` (" + ", ".join(STRATEGIES) + ") or an `actuator`")
            return
        if s.strategy is not None and s.strategy not in STRATEGIES:
            self.add((*loc, "strategy"), f"unknown strategy {s.strategy!r}{_hint(s.strategy, STRATEGIES)}")
            return
        if s.verify is not None and s.verify_timeout is not None:
            self.add((*loc, "verify_timeout"), "set either `verify_timeout` or `verify.timeout`, not both")
        for k, probe in enumerate(s.verify_probes or []):
            if probe in (s.verify_probes or [])[:k]:
                self.add((*loc, "verify", "probes", k), f"probe {probe!r} is listed twice")
        kind = s.kind
        if kind == RUN:
            if s.actions is not None:
                if s.actuator is not None:
                    self.add((*loc, "actions"), "a direct step has either `actuator` + `action` or `actions`")
                if not s.actions:
                    self.add((*loc, "actions"), "list at least one action")
                for i, a in enumerate(s.actions):
                    self.spec((*loc, "actions", i), a)
            else:
                assert s.actuator is not None
                if s.actuator in STRATEGIES:
                    self.add(
                        (*loc, "action"),
                        f"{s.actuator!r} is a strategy, not an actuator: drop `action`, "
                        "or name an installed actuator",
                    )
                    return
                if self.installed is not None and s.actuator not in self.installed:
                    self.actuator((*loc, "actuator"), s.actuator, None, ())
                    return
                if s.action is None:
                    self.add((*loc, "action"), f"actuator {s.actuator!r} needs an `action`")
                    return
                self.actuator((*loc, "actuator"), s.actuator, s.action, (*loc, "action"))
        else:
            needs = {
                "failover": ("standby",),
                "degrade": ("flags",),
                "swap_model": ("link",),
                "compensate": ("actions",),
            }.get(kind, ())
            for key in needs:
                if getattr(s, key) in (None, [], {}):
                    self.add((*loc, key), f"strategy {kind!r} needs `{key}`")
            if kind == "swap_model" and s.link and not os.path.isabs(s.link):
                self.add((*loc, "link"), f"link must be an absolute path, got {s.link!r}")
            if (
                kind == "swap_model"
                and s.link
                and s.target
                and "/" in s.target
                and os.path.dirname(s.target.rstrip("/")) != os.path.dirname(s.link)
            ):
                self.add(
                    (*loc, "target"),
                    f"target must be a version beside the link (in {os.path.dirname(s.link)}), "
                    f"got {s.target!r}",
                )
            if kind == "rollback" and not _CHECKPOINT_TARGET.match(s.checkpoint):
                self.add(
                    (*loc, "checkpoint"),
                    f"checkpoint must be latest, before-incident, seq:N or label:NAME, got {s.checkpoint!r}",
                )
            if kind == "restart" and s.via == "systemd" and not s.unit:
                self.add((*loc, "unit"), "restart via systemd needs the `unit` to restart")
            if kind not in ("compensate",) and s.actions is not None:
                self.add((*loc, "actions"), f"strategy {kind!r} does not take `actions`")
            if kind == "escalate" and not is_last:
                self.add((*loc, "strategy"), "'escalate' ends the chain; steps after it would never run")
            if kind == "escalate" and s.approval is not None:
                self.add((*loc, "approval"), "escalating needs no approval: it takes no action")
            for i, a in enumerate(s.compensations):
                self.spec((*loc, "compensations", i), a)
            if s.promote is not None:
                self.spec((*loc, "promote"), s.promote)
            for i, a in enumerate(s.actions or []):
                self.spec((*loc, "actions", i), a)
            if self.installed is not None:
                # Every actuator the expansion needs must be installed (rollback needs
                # checkpoint_restore, degrade needs feature_flag, ...): say which and why.
                explicit = {x.actuator for x in [*s.compensations, *(s.actions or [])]}
                if s.promote is not None:
                    explicit.add(s.promote.actuator)
                for planned in expand_step(s):
                    name = planned["actuator"]
                    if name not in self.installed and name not in explicit:
                        where = (*loc, "strategy") if s.strategy is not None else (*loc, "actuator")
                        hint = ""
                        if kind == "failover" and s.promote is None:
                            hint = (
                                ": say how to promote the standby with `promote: {actuator, action, params}`"
                            )
                        self.add(
                            where,
                            f"strategy {kind!r} runs actuator {name!r} ({planned['action']}), "
                            f"which is not installed{hint}",
                        )
                        break
        self.conditions((*loc, "when"), s.when)


def load_policies(
    paths: Sequence[Path],
    *,
    installed: frozenset[str] | None = None,
    fleet: Mapping[str, Member] | None = None,
) -> PolicySet:
    """Load policy files (directories expand to their ``*.yaml``/``*.yml`` files).

    ``installed``: the actuator names steps may use (default: read the entry points now).
    ``fleet``: the configured components (:func:`fleet_of`), when known: probe names in
    ``verify.probes`` are checked against the components each policy matches. All problems in
    all files are collected and raised together as :class:`PolicyError`, one line each:
    ``file:line:column: key.path: message``.
    """
    if installed is None:
        installed = installed_actuators()
    files = _expand(paths)
    problems: list[YamlProblem] = []
    policies: list[Policy] = []
    hashes: dict[str, str] = {}
    seen: dict[str, tuple[str, int]] = {}
    budget: tuple[Budget, str] | None = None
    windows: list[MaintenanceWindow] = []
    for path in files:
        try:
            doc = load_yaml_file(path)
        except YamlDocumentError as exc:
            problems.extend(exc.problems)
            continue
        before = len(problems)
        result = _parse(doc, problems)
        if result is None:
            continue
        parsed, models, loose = result
        checker = _Checker(installed, fleet)
        for sloc, step, last in loose:
            checker.step(sloc, step, last)
        file_tz = checker.zone(("timezone",), parsed.timezone, dt.UTC)
        resolved: list[Policy] = []
        for i, model in models:
            loc: Loc = ("policies", i)
            if model.name in seen:
                other = seen[model.name]
                where = f"policies[{other[1]}] of this file" if other[0] == str(path) else other[0]
                checker.add((*loc, "name"), f"duplicate policy name {model.name!r} (also {where})")
            else:
                seen[model.name] = (str(path), i)
            checker.conditions((*loc, "when"), model.when)
            tz = file_tz
            if model.when is not None and model.when.time is not None:
                tz = checker.zone((*loc, "when", "time", "timezone"), model.when.time.timezone, file_tz)
            step_tz = []
            for j, step in enumerate(model.steps):
                checker.step((*loc, "steps", j), step, j == len(model.steps) - 1)
                checker.verify_probes((*loc, "steps", j), model.match, step)
                stz = file_tz
                if step.when is not None and step.when.time is not None:
                    stz = checker.zone(
                        (*loc, "steps", j, "when", "time", "timezone"), step.when.time.timezone, file_tz
                    )
                step_tz.append(stz)
            resolved.append(Policy(model, str(path), "", i, tz, tuple(step_tz)))
        if parsed.budget is not None:
            if budget is not None:
                checker.add(("budget",), f"the disruption budget is fleet-wide: already set in {budget[1]}")
            else:
                budget = (parsed.budget, str(path))
        for i, m in enumerate(parsed.maintenance):
            mloc: Loc = ("maintenance", i)
            tz = checker.zone((*mloc, "timezone"), m.timezone, file_tz)
            explicit = m.start is not None or m.end is not None
            if m.cron is not None and explicit:
                checker.add(mloc, "a window is either `cron` + `duration` or `start` + `end`")
            elif m.cron is not None:
                try:
                    CronSim(m.cron, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
                except CronSimError as exc:
                    checker.add((*mloc, "cron"), f"invalid cron expression {m.cron!r}: {exc}")
                if m.duration is None or m.duration <= 0:
                    checker.add((*mloc, "duration"), "a cron window needs a positive `duration`")
            elif explicit:
                if m.start is None or m.end is None:
                    checker.add(mloc, "an explicit window needs both `start` and `end`")
                elif _aware(m.end, tz) <= _aware(m.start, tz):
                    checker.add((*mloc, "end"), "the window ends before it starts")
            else:
                checker.add(mloc, "a window needs `cron` + `duration` or `start` + `end`")
            windows.append(MaintenanceWindow(m, str(path), tz))
        for loc, msg in checker.found:
            line, col = doc.locate(loc)
            problems.append(YamlProblem(str(path), line, col, format_key_path(loc), msg))
        if len(problems) > before:
            continue
        digest = hashlib.sha256(doc.text.encode()).hexdigest()[:16]
        hashes[str(path)] = digest
        policies.extend(Policy(p.model, p.file, digest, p.index, p.tz, p.step_tz) for p in resolved)
    if problems:
        order = {str(f): i for i, f in enumerate(files)}
        problems.sort(key=lambda p: (order.get(p.path, len(order)), p.line, p.column))
        raise PolicyError([str(p) for p in problems])
    # Precedence: priority (high first), then file name, then order in the file.
    policies.sort(key=lambda p: (-p.model.priority, p.file, p.index))
    return PolicySet(
        tuple(policies),
        hashes,
        budget=budget[0] if budget else None,
        budget_file=budget[1] if budget else None,
        maintenance=tuple(windows),
        installed=installed,
    )


def _parse(
    doc: YamlDocument, problems: list[YamlProblem]
) -> tuple[_FileShell, list[tuple[int, PolicyModel]], list[tuple[Loc, Step, bool]]] | None:
    """The file's settings, its valid policies (with their index) and the valid steps of its
    invalid policies (so their own problems are reported too); problems are appended."""
    data = doc.plain()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(YamlProblem(doc.path, 1, 1, "", "expected a mapping with a 'policies' list"))
        return None
    try:
        shell = _FileShell.model_validate(data)
    except ValidationError as exc:
        problems.extend(doc.problems_from_validation(exc))
        return None
    except (ValueError, TypeError, RecursionError) as exc:  # never let odd input escape as a crash
        problems.append(YamlProblem(doc.path, 1, 1, "", f"cannot read policy file: {exc}"))
        return None
    good: list[tuple[int, PolicyModel]] = []
    loose: list[tuple[Loc, Step, bool]] = []
    for i, raw in enumerate(shell.policies):
        try:
            good.append((i, PolicyModel.model_validate(raw)))
        except ValidationError as exc:
            problems.extend(doc.problems_from_validation(exc, prefix=("policies", i)))
            steps = raw.get("steps") if isinstance(raw, dict) else None
            if isinstance(steps, list):
                for j, one in enumerate(steps):
                    try:
                        loose.append(
                            (("policies", i, "steps", j), Step.model_validate(one), j == len(steps) - 1)
                        )
                    except (ValidationError, ValueError, TypeError):
                        continue
        except (ValueError, TypeError, RecursionError) as exc:
            line, col = doc.locate(("policies", i))
            problems.append(YamlProblem(doc.path, line, col, f"policies[{i}]", f"cannot read policy: {exc}"))
    return shell, good, loose


def _expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        else:
            out.append(p)
    return out


def _aware(value: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def policy_json_schema() -> dict[str, Any]:
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "healer remediation policies"
    return schema


def policy_schema_text() -> str:
    """The schema exactly as ``healer policy schema`` prints it and docs/policy.schema.json holds it."""
    return json.dumps(policy_json_schema(), indent=2) + "\n"
