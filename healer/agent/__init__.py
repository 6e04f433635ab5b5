"""The library agents import to be watched by healer.

Light on purpose: the standard library, aiomqtt and blake3 (pybreaker only if you use
:meth:`AgentLink.circuit_breaker`). See ``docs/telemetry.md`` for the wire protocol.
"""

from healer.agent.link import AgentLink, BreakerTelemetry

__all__ = ["AgentLink", "BreakerTelemetry"]
