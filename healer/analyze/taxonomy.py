"""The failure taxonomy, loaded from ``knowledge/taxonomy.yaml``: classification is data.

The file names the failure classes and an ordered list of *signatures*. A signature is a
condition over the facts Analyze derives from the evidence (see ``analyzer.py``); the first
signature whose condition holds names the class. Conditions are compiled once at load, so a
typo in a fact name or an unknown operator is a load error with its location, not a silent
never-matching rule.

Condition language (a mapping; every entry must hold):

* ``fact: value`` -- equal; ``fact: [a, b]`` -- equal to one of them (``null`` means absent);
* ``fact: {op: arg, ...}`` with ``eq ne in not_in gt ge lt le contains contains_any empty exists``;
* ``any: [cond, ...]``, ``all: [cond, ...]``, ``not: cond`` combine conditions.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from healer.config import Duration
from healer.errors import ConfigError
from healer.yamldoc import YamlDocumentError, load_yaml_file, parse_yaml

Facts = Mapping[str, Any]
Predicate = Callable[[Facts], bool]

# Every fact the analyzer can derive. ``values.<key>`` facts come from the failing probes'
# measured values (whatever a probe reports), so they are checked by prefix only.
KNOWN_FACTS: dict[str, str] = {
    "observation": "the observation type that triggered the analysis",
    "supervised": "healer started the component's process itself",
    "managed": "the component is in the configuration (not only learned from telemetry)",
    "process_alive": "true / false for supervised components, null otherwise",
    "process_status": (
        "the OS state of the process (running, stopped, ...): sampled by the Monitor when a"
        " supervised component fails, else from the latest process probe"
    ),
    "exit_code": "exit status of the process that ended",
    "signal": "signal that ended the process (SIGKILL, ...)",
    "health": "failing / healthy / unknown",
    "failing_probes": "names of the failing probes",
    "failing_probe_types": "types of the failing probes (http, tcp, process, resources, ...)",
    "network_probes_failing": "a failing probe checks the component over the network",
    "local_probes_failing": "a failing probe checks the component on this host (process, exec, file, ...)",
    "only_network_probes_failing": "probes fail, and every failing one is a network probe",
    "transitions": "health transitions (healthy <-> failing) within the transition window",
    "open_breakers": "how many components report an open circuit breaker on this one",
    "failing_dependencies": "dependencies of the component that are failing (set for symptoms)",
    "report_kind": "kind of the agent-reported signal (state_corruption, quality, ...)",
    "report_value": "value of the agent-reported signal",
    "checkpoint_valid": "false when the component's last checkpoint failed verification",
    "peers_healthy": "other components on the same host that are healthy",
    "peers_failing": "other components on the same host that are failing, not counting its symptoms",
    "peers_healthy_ratio": "peers_healthy / (peers_healthy + peers_failing), null without peers",
}
VALUES_PREFIX = "values."

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


class _Class(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""


class _Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    class_: str = Field(alias="class")
    id: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    why: str = ""
    when: dict[str, Any] = Field(default_factory=dict)


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    transition_window: Duration = 60.0


class _ProbeKinds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    network: list[str] = Field(default_factory=lambda: ["http", "tcp", "mqtt_heartbeat"])
    local: list[str] = Field(default_factory=lambda: ["process", "exec", "heartbeat_file", "resources"])


class _TaxonomyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 2
    parameters: _Parameters = _Parameters()
    probe_kinds: _ProbeKinds = _ProbeKinds()
    classes: dict[str, _Class] = Field(min_length=1)
    signatures: list[_Signature] = Field(min_length=1)

    @field_validator("classes")
    @classmethod
    def _names(cls, v: dict[str, _Class]) -> dict[str, _Class]:
        for name in v:
            if not name.replace("_", "a").isalnum() or not name[:1].isalpha() or name != name.lower():
                raise ValueError(f"class name {name!r}: use lower-case letters, digits and '_'")
        return v


class ConditionError(ValueError):
    """A condition in the taxonomy file is not valid; ``path`` says where inside ``when``."""

    def __init__(self, path: Sequence[str | int], message: str) -> None:
        self.path = tuple(path)
        super().__init__(message)


@dataclass(frozen=True)
class FailureClass:
    name: str
    description: str


@dataclass(frozen=True)
class Signature:
    """One way of recognising a class: ``when`` as written, ``test`` compiled from it."""

    failure_class: FailureClass
    id: str
    why: str
    when: Mapping[str, Any]
    test: Predicate
    uses: frozenset[str] = frozenset()  # the facts the condition reads

    def matches(self, facts: Facts) -> bool:
        return self.test(facts)


@dataclass(frozen=True)
class Match:
    failure_class: FailureClass
    signature: Signature

    @property
    def name(self) -> str:
        return self.failure_class.name


@dataclass(frozen=True)
class Taxonomy:
    classes: Mapping[str, FailureClass]
    signatures: tuple[Signature, ...]
    transition_window: float = 60.0
    network_probe_types: frozenset[str] = frozenset({"http", "tcp", "mqtt_heartbeat"})
    local_probe_types: frozenset[str] = frozenset({"process", "exec", "heartbeat_file", "resources"})

    def classify(self, facts: Facts, before: Callable[[Signature], None] | None = None) -> Match | None:
        """The first signature, in file order, whose condition holds.

        ``before`` is called with each signature before it is tested: a caller can supply the
        expensive facts only once a signature needs them (``Signature.uses``)."""
        for sig in self.signatures:
            if before is not None:
                before(sig)
            if sig.test(facts):
                return Match(sig.failure_class, sig)
        return None

    @property
    def names(self) -> list[str]:
        return list(self.classes)


# -- the condition compiler -------------------------------------------------------------------
def compile_condition(cond: Any, path: tuple[str | int, ...] = ()) -> Predicate:
    """Turn a ``when`` mapping into a predicate over facts; raise ConditionError if invalid."""
    if not isinstance(cond, Mapping):
        raise ConditionError(path, f"a condition must be a mapping, got {type(cond).__name__}")
    tests: list[Predicate] = []
    for key, want in cond.items():
        here = (*path, key)
        if key in ("any", "all"):
            if not isinstance(want, list) or not want:
                raise ConditionError(here, f"'{key}' takes a non-empty list of conditions")
            subs = [compile_condition(c, (*here, i)) for i, c in enumerate(want)]
            tests.append(_any(subs) if key == "any" else _all(subs))
        elif key == "not":
            tests.append(_not(compile_condition(want, here)))
        else:
            _check_fact(key, here)
            tests.append(_fact_test(key, want, here))
    return _all(tests)


def _facts_used(cond: Any) -> set[str]:
    used: set[str] = set()
    if isinstance(cond, Mapping):
        for key, want in cond.items():
            if key in ("any", "all") and isinstance(want, list):
                for sub in want:
                    used |= _facts_used(sub)
            elif key == "not":
                used |= _facts_used(want)
            else:
                used.add(key)
    return used


def _check_fact(name: str, path: tuple[str | int, ...]) -> None:
    if name in KNOWN_FACTS or (name.startswith(VALUES_PREFIX) and len(name) > len(VALUES_PREFIX)):
        return
    near = difflib.get_close_matches(name, list(KNOWN_FACTS), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ConditionError(path, f"unknown fact {name!r}{hint}; known: {', '.join(KNOWN_FACTS)}, values.*")


def _fact_test(name: str, want: Any, path: tuple[str | int, ...]) -> Predicate:
    if isinstance(want, list):
        options = list(want)
        return lambda f: f.get(name) in options
    if not isinstance(want, Mapping):
        return _eq_test(name, want)
    if not want:
        raise ConditionError(path, "an operator mapping needs at least one operator")
    tests = [_operator(name, op, arg, (*path, op)) for op, arg in want.items()]
    return _all(tests)


def _operator(name: str, op: str, arg: Any, path: tuple[str | int, ...]) -> Predicate:
    if op == "eq":
        return _eq_test(name, arg)
    if op == "ne":
        return lambda f: not _eq(f.get(name), arg)
    if op in ("in", "not_in"):
        if not isinstance(arg, list):
            raise ConditionError(path, f"'{op}' takes a list")
        options = list(arg)
        if op == "in":
            return lambda f: f.get(name) in options
        return lambda f: f.get(name) not in options
    if op in _COMPARE:
        if isinstance(arg, bool) or not isinstance(arg, int | float):
            raise ConditionError(path, f"'{op}' takes a number, got {arg!r}")
        cmp = _COMPARE[op]
        return lambda f: _number(f.get(name)) is not None and cmp(_number(f.get(name)), arg)
    if op == "contains":
        return lambda f: _contains(f.get(name), arg)
    if op == "contains_any":
        if not isinstance(arg, list) or not arg:
            raise ConditionError(path, "'contains_any' takes a non-empty list")
        items = list(arg)
        return lambda f: any(_contains(f.get(name), item) for item in items)
    if op in ("empty", "exists"):
        if not isinstance(arg, bool):
            raise ConditionError(path, f"'{op}' takes true or false")
        if op == "exists":
            return lambda f: (f.get(name) is not None) == arg
        return lambda f: _is_empty(f.get(name)) == arg
    ops = ["eq", "ne", "in", "not_in", *_COMPARE, "contains", "contains_any", "empty", "exists"]
    near = difflib.get_close_matches(op, ops, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(ops)})"
    raise ConditionError(path, f"unknown operator {op!r}{hint}")


def _eq_test(name: str, want: Any) -> Predicate:
    # Specialised at compile time: most signatures test a boolean or null fact.
    if want is None or isinstance(want, bool):
        return lambda f: f.get(name) is want
    return lambda f: _eq(f.get(name), want)


def _eq(have: Any, want: Any) -> bool:
    # YAML `true` must not equal the number 1 (Python says True == 1).
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    return bool(have == want)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _contains(have: Any, item: Any) -> bool:
    if isinstance(have, str):
        return isinstance(item, str) and item in have
    if isinstance(have, list | tuple | set | frozenset):
        return item in have
    if isinstance(have, Mapping):
        return item in have
    return False


def _is_empty(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str | list | tuple | set | frozenset | Mapping):
        return len(v) == 0
    return False


# Plain loops, not all()/any() over generators: a storm classifies thousands of failures per batch.
def _all(tests: list[Predicate]) -> Predicate:
    if len(tests) == 1:
        return tests[0]
    frozen = tuple(tests)

    def test(f: Facts) -> bool:
        for t in frozen:  # noqa: SIM110 -- a plain loop is faster than all()/any()
            if not t(f):
                return False
        return True

    return test


def _any(tests: list[Predicate]) -> Predicate:
    frozen = tuple(tests)

    def test(f: Facts) -> bool:
        for t in frozen:  # noqa: SIM110 -- a plain loop is faster than all()/any()
            if t(f):
                return True
        return False

    return test


def _not(test: Predicate) -> Predicate:
    return lambda f: not test(f)


# -- loading ----------------------------------------------------------------------------------
def load_taxonomy(path: Path | None = None) -> Taxonomy:
    try:
        if path is None:
            text = resources.files("healer._knowledge").joinpath("taxonomy.yaml").read_text(encoding="utf-8")
            doc = parse_yaml(text, "knowledge/taxonomy.yaml")
        else:
            doc = load_yaml_file(path)
        parsed = _TaxonomyFile.model_validate(doc.plain())
    except YamlDocumentError as exc:
        raise ConfigError(f"invalid failure taxonomy:\n{exc}") from exc
    except ValidationError as exc:
        lines = "\n".join(f"  {p}" for p in doc.problems_from_validation(exc))
        raise ConfigError(f"invalid failure taxonomy:\n{lines}") from exc
    classes = {name: FailureClass(name, c.description) for name, c in parsed.classes.items()}
    problems: list[str] = []
    signatures: list[Signature] = []
    seen: set[str] = set()
    for i, sig in enumerate(parsed.signatures):
        loc: tuple[str | int, ...] = ("signatures", i)
        if sig.id in seen:
            problems.append(_located(doc, (*loc, "id"), f"duplicate signature id {sig.id!r}"))
        seen.add(sig.id)
        cls = classes.get(sig.class_)
        if cls is None:
            near = difflib.get_close_matches(sig.class_, list(classes), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(_located(doc, (*loc, "class"), f"unknown class {sig.class_!r}{hint}"))
            continue
        try:
            test = compile_condition(sig.when)
        except ConditionError as exc:
            problems.append(_located(doc, (*loc, "when", *exc.path), str(exc)))
            continue
        signatures.append(Signature(cls, sig.id, sig.why, sig.when, test, frozenset(_facts_used(sig.when))))
    for name in classes:
        if not any(s.class_ == name for s in parsed.signatures):
            problems.append(_located(doc, ("classes", name), f"class {name!r} has no signature"))
    if problems:
        raise ConfigError("invalid failure taxonomy:\n" + "\n".join(f"  {p}" for p in problems))
    kinds = parsed.probe_kinds
    return Taxonomy(
        classes,
        tuple(signatures),
        transition_window=parsed.parameters.transition_window,
        network_probe_types=frozenset(kinds.network),
        local_probe_types=frozenset(kinds.local),
    )


def _located(doc: Any, loc: tuple[str | int, ...], message: str) -> str:
    from healer.yamldoc import format_key_path

    line, col = doc.locate(loc)
    return f"{doc.path}:{line}:{col}: {format_key_path(loc)}: {message}"
