"""The built-in actuators. Each registers under the ``healer.actuators`` entry-point group like
any plugin; :class:`Base` gives them pydantic parameter models per action."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from healer.execute.actuators import ActuatorServices


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base:
    """Validation shared by the built-ins: one pydantic model per action."""

    name: ClassVar[str]
    idempotent: ClassVar[bool]
    default_timeout: ClassVar[float]
    actions: ClassVar[frozenset[str]]
    PARAMS: ClassVar[Mapping[str, type[Params]]]

    def __init__(self, services: ActuatorServices) -> None:
        self.services = services

    def parse(self, action: str, params: Mapping[str, Any]) -> Any:
        model = self.PARAMS.get(action)
        if model is None:
            raise ValueError(
                f"{self.name} actuator cannot {action!r} (it can: {', '.join(sorted(self.PARAMS))})"
            )
        return model.model_validate(dict(params))

    def validate(self, action: str, params: Mapping[str, Any]) -> None:
        self.parse(action, params)
