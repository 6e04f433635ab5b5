"""Remediation policies: YAML runbooks, validated with file:line:column errors.

A policy matches components (name globs, labels) and failure classes, and gives an ordered
chain of steps; each step has its own attempt limit and cooldown, and the chain moves on when
a step's attempts are used up. The set is versioned by content hash: every decision records
the hash of the file it came from.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from healer.config import Duration
from healer.errors import PolicyError
from healer.yamldoc import YamlDocumentError, YamlProblem, format_key_path, load_yaml_file

SCHEMA_MODELINE = "# yaml-language-server: $schema=../docs/policy.schema.json"

# strategy -> (actuator, action). The full language (rollback, failover, degrade, ...) extends this.
STRATEGIES: dict[str, tuple[str | None, str]] = {
    "restart": ("process", "restart"),
    "escalate": (None, "escalate"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    components: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    failures: list[str] = Field(min_length=1)


class Step(_Strict):
    strategy: str
    max_attempts: int = Field(default=3, ge=1, le=100)
    cooldown: Duration = 5.0  # minimum time since the previous action on the component
    backoff: float = Field(default=2.0, ge=1.0, le=10.0)  # cooldown multiplier per attempt used
    max_cooldown: Duration = 300.0
    timeout: Duration = 30.0  # for the action itself
    verify_timeout: Duration = 30.0  # the component must pass its probes within this

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in STRATEGIES:
            near = difflib.get_close_matches(v, STRATEGIES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(sorted(STRATEGIES))})"
            raise ValueError(f"unknown strategy {v!r}{hint}")
        return v


class PolicyModel(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    priority: int = 0  # higher first; ties keep file order
    match: Match
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _escalate_last(self) -> PolicyModel:
        for i, step in enumerate(self.steps[:-1]):
            if step.strategy == "escalate":
                raise ValueError(f"steps[{i}]: 'escalate' ends the chain; steps after it would never run")
        return self


class PolicyFile(_Strict):
    version: Literal[1] = 1
    policies: list[PolicyModel] = Field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    model: PolicyModel
    file: str
    file_hash: str
    index: int  # order within the file

    @property
    def name(self) -> str:
        return self.model.name

    def rejection(self, component: str, labels: Mapping[str, str], failure_class: str) -> str | None:
        """Why this policy does not apply, or None when it does."""
        m = self.model.match
        if not any(fnmatch.fnmatchcase(component, pat) for pat in m.components):
            return f"component {component!r} not in {m.components}"
        for key, want in m.labels.items():
            if labels.get(key) != want:
                return f"label {key}={want!r} not set on {component!r}"
        if failure_class not in m.failures and "*" not in m.failures:
            return f"failure {failure_class!r} not in {m.failures}"
        return None


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]
    files: Mapping[str, str]  # path -> sha256 of its content

    @property
    def hash(self) -> str:
        blob = json.dumps(sorted(self.files.items())).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def select(
        self, component: str, labels: Mapping[str, str], failure_class: str
    ) -> tuple[Policy | None, list[dict[str, str]]]:
        """The first policy in precedence order that applies, and the candidates rejected before it."""
        rejected: list[dict[str, str]] = []
        for pol in self.policies:
            why = pol.rejection(component, labels, failure_class)
            if why is None:
                return pol, rejected
            rejected.append({"policy": pol.name, "file": pol.file, "reason": why})
        return None, rejected


EMPTY = PolicySet((), {})


def load_policies(paths: Sequence[Path]) -> PolicySet:
    """Load policy files (directories are expanded to their ``*.yaml``/``*.yml`` files).

    All problems in all files are collected and raised together as :class:`PolicyError`.
    """
    files = _expand(paths)
    problems: list[YamlProblem] = []
    policies: list[Policy] = []
    hashes: dict[str, str] = {}
    seen: dict[str, str] = {}
    for path in files:
        try:
            doc = load_yaml_file(path)
        except YamlDocumentError as exc:
            problems.extend(exc.problems)
            continue
        digest = hashlib.sha256(doc.text.encode()).hexdigest()[:16]
        data = doc.plain()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.append(YamlProblem(str(path), 1, 1, "", "expected a mapping with a 'policies' list"))
            continue
        try:
            parsed = PolicyFile.model_validate(data)
        except ValidationError as exc:
            problems.extend(doc.problems_from_validation(exc))
            continue
        hashes[str(path)] = digest
        for i, model in enumerate(parsed.policies):
            if model.name in seen:
                line, col = doc.locate(("policies", i, "name"))
                problems.append(
                    YamlProblem(
                        str(path),
                        line,
                        col,
                        format_key_path(("policies", i, "name")),
                        f"duplicate policy name {model.name!r} (also in {seen[model.name]})",
                    )
                )
                continue
            seen[model.name] = str(path)
            policies.append(Policy(model, str(path), digest, i))
    if problems:
        raise PolicyError([str(p) for p in problems])
    # Precedence: priority (high first), then file name, then order in the file.
    policies.sort(key=lambda p: (-p.model.priority, p.file, p.index))
    return PolicySet(tuple(policies), hashes)


def _expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        else:
            out.append(p)
    return out


def policy_json_schema() -> dict[str, Any]:
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "healer remediation policies"
    return schema
