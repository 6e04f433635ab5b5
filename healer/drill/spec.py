"""Drill files: YAML, validated like policies, every problem located as ``file:line:column``.

A drill names a steady state that must hold before and after, the faults to inject, the blast
radius they must stay inside (and what aborts the drill), and the criteria it is graded on.
Fault parameters are validated by the fault's own class (built-in or a ``healer.faults``
plugin), with positions pointing into the drill file; targets are checked against the config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from healer.config import Duration, HealerConfig, Name
from healer.errors import HealerError
from healer.yamldoc import YamlDocument, YamlDocumentError, YamlProblem, format_key_path, load_yaml_file

Loc = tuple[str | int, ...]


class DrillError(HealerError):
    """A drill file is missing, unparsable or invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid drill:\n" + "\n".join(f"  {p}" for p in self.problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpCheck(_Strict):
    url: str = Field(pattern=r"^https?://")
    status: int = Field(default=200, ge=100, le=599)


class SteadyState(_Strict):
    """What must hold before any fault is injected and again after every fault is reverted."""

    healthy: list[str] = Field(default_factory=lambda: ["*"])  # component names, or "*" for all
    http: list[HttpCheck] = Field(default_factory=list)
    timeout: Duration = 30.0  # how long to wait for it to hold


class BlastRadius(_Strict):
    components: list[Name] = Field(min_length=1)  # the only components the drill may touch
    max_concurrent: int = Field(default=1, ge=1, le=1000)  # faults active at once
    # A component outside the radius turning unhealthy aborts the drill and reverts every fault.
    abort_on_outside_failure: bool = True


class FaultSpec(BaseModel):
    """Common fault settings; kind-specific parameters are validated by the fault's class."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str = Field(min_length=1)
    target: Name | None = None  # the component the fault hits (fleet-wide kinds take none)
    after: Duration = 0.0  # offset from the drill's start
    duration: Duration | None = None  # how long the fault is held (None: until recovery)
    # Must healer open an incident on the target and resolve it? None: the kind's default.
    expect_recovery: bool | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Criteria(_Strict):
    rto: dict[Name, Duration] = Field(default_factory=dict)  # overrides the config's rto
    # Overrides the config's rpo; naming a component also requires a restore for it to be measured.
    rpo: dict[Name, Duration] = Field(default_factory=dict)
    expect_escalations: list[Name] = Field(default_factory=list)  # escalations that do not fail
    duplicate_side_effects: Literal["fail", "report"] = "fail"


class DrillFile(_Strict):
    version: Literal[1]
    name: Name
    description: str = ""
    timeout: Duration = 120.0  # the whole fault phase: injection until every recovery
    steady_state: SteadyState = SteadyState()
    blast_radius: BlastRadius
    faults: list[FaultSpec] = Field(min_length=1, max_length=100)
    criteria: Criteria = Criteria()

    @model_validator(mode="after")
    def _positive_timeout(self) -> DrillFile:
        if self.timeout <= 0:
            raise ValueError("timeout must be more than 0s")
        return self


@dataclass(frozen=True)
class Drill:
    """A validated drill: the file's content plus each fault's validated parameters."""

    path: Path
    spec: DrillFile
    params: tuple[BaseModel, ...]  # one per fault, the kind's Params model

    @property
    def name(self) -> str:
        return self.spec.name


def load_drill(path: Path, config: HealerConfig, kinds: Mapping[str, Any] | None = None) -> Drill:
    """Read and validate a drill file against ``config``; raise :class:`DrillError` on problems."""
    try:
        doc = load_yaml_file(path)
    except YamlDocumentError as exc:
        raise DrillError([str(p) for p in exc.problems]) from exc
    return validate_drill(doc, config, kinds)


def validate_drill(doc: YamlDocument, config: HealerConfig, kinds: Mapping[str, Any] | None = None) -> Drill:
    if kinds is None:
        from healer.drill.faults import fault_kinds

        kinds = fault_kinds()
    data = doc.plain()
    if not isinstance(data, dict):
        raise DrillError([str(YamlProblem(doc.path, 1, 1, "", "expected a mapping at the top level"))])
    try:
        spec = DrillFile.model_validate(data)
    except ValidationError as exc:
        raise DrillError([str(p) for p in doc.problems_from_validation(exc)]) from exc
    except (TypeError, ValueError) as exc:  # e.g. keys YAML allows but a model cannot take
        raise DrillError([str(YamlProblem(doc.path, 1, 1, "", f"invalid drill: {exc}"))]) from exc

    found: list[tuple[Loc, str]] = []
    names = set(config.components)
    radius = set(spec.blast_radius.components)

    def unknown(loc: Loc, name: str) -> None:
        found.append((loc, f"unknown component {name!r} (configured: {', '.join(sorted(names))})"))

    for i, comp in enumerate(spec.blast_radius.components):
        if comp not in names:
            unknown(("blast_radius", "components", i), comp)
    for i, comp in enumerate(spec.steady_state.healthy):
        if comp != "*" and comp not in names:
            unknown(("steady_state", "healthy", i), comp)
    for key in ("rto", "rpo", "expect_escalations"):
        value = getattr(spec.criteria, key)
        for i, comp in enumerate(value):
            if comp not in names:
                unknown(("criteria", key, comp if key != "expect_escalations" else i), comp)
    params: list[BaseModel] = []
    for i, fault in enumerate(spec.faults):
        base: Loc = ("faults", i)
        cls = kinds.get(fault.kind)
        if fault.target is None:
            if cls is not None and getattr(cls, "needs_target", True):
                found.append((base, f"a {fault.kind} fault needs a target component"))
        elif fault.target not in names:
            unknown((*base, "target"), fault.target)
        elif fault.target not in radius:
            found.append(
                (
                    (*base, "target"),
                    f"{fault.target!r} is outside the blast radius ({', '.join(sorted(radius))})",
                )
            )
        if cls is None:
            known = ", ".join(sorted(kinds))
            found.append(((*base, "kind"), f"unknown fault kind {fault.kind!r} (known: {known})"))
            continue
        try:
            p = cls.Params.model_validate(fault.params)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                found.append(((*base, *err["loc"]), err["msg"].removeprefix("Value error, ")))
            continue
        needs_duration = not _expects_recovery(cls, fault)
        if needs_duration and fault.duration is None:
            found.append(
                (
                    (*base, "duration"),
                    f"a {fault.kind} fault that healer is not expected to recover needs a duration",
                )
            )
        check = getattr(cls, "check", None)
        if check is not None:
            for loc, msg in check(fault, p, config):
                found.append(((*base, *loc), msg))
        params.append(p)
    if found:
        problems = []
        for loc, msg in found:
            line, col = doc.locate(loc)
            problems.append(str(YamlProblem(doc.path, line, col, format_key_path(loc), msg)))
        raise DrillError(problems)
    return Drill(Path(doc.path), spec, tuple(params))


def _expects_recovery(cls: Any, fault: FaultSpec) -> bool:
    if fault.expect_recovery is not None:
        return fault.expect_recovery
    return bool(getattr(cls, "recovers", True))


def expects_recovery(kinds: Mapping[str, Any], fault: FaultSpec) -> bool:
    return _expects_recovery(kinds[fault.kind], fault)
