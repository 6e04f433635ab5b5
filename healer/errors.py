"""One error root for everything healer raises on purpose.

Callers catch the family they can handle; the CLI maps families to exit codes.
"""

from __future__ import annotations

from collections.abc import Sequence


class HealerError(Exception):
    """Root of every error healer raises deliberately."""


class ConfigError(HealerError):
    """The daemon configuration is missing, unparsable or invalid (CLI exit status 2)."""


class PolicyError(HealerError):
    """One or more policy files are invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StoreError(HealerError):
    """The knowledge store cannot be opened, migrated or written."""


class ActuatorError(HealerError):
    """An actuator could not perform or verify its action."""


class ProbeError(HealerError):
    """A probe could not run (as opposed to running and finding the target unhealthy)."""
