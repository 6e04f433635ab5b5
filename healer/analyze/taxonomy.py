"""The failure taxonomy, loaded from ``knowledge/taxonomy.yaml``: classification is data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from healer.errors import ConfigError
from healer.yamldoc import YamlDocumentError, load_yaml_file, parse_yaml


class _Class(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    when: dict[str, Any] = Field(default_factory=dict)


class _TaxonomyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    classes: list[_Class] = Field(min_length=1)


@dataclass(frozen=True)
class FailureClass:
    name: str
    description: str
    when: Mapping[str, Any]

    def matches(self, facts: Mapping[str, Any]) -> bool:
        for key, want in self.when.items():
            have = facts.get(key)
            if isinstance(want, list):
                if have not in want:
                    return False
            elif have != want:
                return False
        return True


@dataclass(frozen=True)
class Taxonomy:
    classes: tuple[FailureClass, ...]

    def classify(self, facts: Mapping[str, Any]) -> FailureClass | None:
        for cls in self.classes:
            if cls.matches(facts):
                return cls
        return None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]


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
        problems = "\n".join(f"  {p}" for p in doc.problems_from_validation(exc))
        raise ConfigError(f"invalid failure taxonomy:\n{problems}") from exc
    return Taxonomy(tuple(FailureClass(c.name, c.description, c.when) for c in parsed.classes))
