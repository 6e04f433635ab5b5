"""Daemon settings: one YAML file plus ``HEALER_*`` environment overrides.

The settings object is built once by the shell (CLI) and passed down; nothing reads it
globally. Validation errors name the file, the line, the key path and what is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from healer.errors import ConfigError
from healer.yamldoc import YamlDocumentError, YamlProblem, format_key_path, load_yaml_file

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Accept ``2``, ``1.5``, ``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"``; return seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s or 500ms, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"expected a duration such as 5s, 500ms or 2m, got {value!r}")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


Name = Annotated[str, BeforeValidator(lambda v: check_name(v) if isinstance(v, str) else v)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommandConfig(_Strict):
    """A process healer starts and supervises itself. Never run through a shell."""

    argv: list[str] = Field(min_length=1)
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    inherit_env: bool = True
    stop_timeout: Duration = 5.0  # SIGTERM, then SIGKILL after this long


class ProbeConfig(BaseModel):
    """Common probe settings; type-specific parameters are validated by the probe class."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    name: str | None = None
    interval: Duration = 2.0
    timeout: Duration = 1.0
    jitter: Duration = 0.0
    failure_threshold: int = Field(default=3, ge=1)  # N consecutive failures -> failing
    success_threshold: int = Field(default=1, ge=1)  # M consecutive passes -> passing

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ComponentConfig(_Strict):
    command: CommandConfig | None = None
    probes: list[ProbeConfig] = Field(default_factory=list)
    depends_on: list[Name] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    rto: Duration | None = None  # recovery time objective: detection -> verified healthy
    rpo: Duration | None = None  # recovery point objective: max age of restored state


def supervised_process_probe(spec: ProbeConfig) -> bool:
    """A process probe that watches the component's own supervised process."""
    params = spec.params
    return spec.type == "process" and params.get("pidfile") is None and params.get("cmdline") is None


def component_probes(comp: ComponentConfig) -> list[tuple[str, ProbeConfig]]:
    """The probes the Monitor runs for a component, with the names events and policies use.

    A probe's name is its ``name``, else ``TYPE#INDEX``; a supervised component without a
    process probe gets one first (``process#0``), which shifts the index of unnamed probes.
    """
    specs = list(comp.probes)
    if comp.command is not None and not any(supervised_process_probe(s) for s in specs):
        specs.insert(0, ProbeConfig(type="process", interval=1.0, failure_threshold=1))
    return [(s.name or f"{s.type}#{i}", s) for i, s in enumerate(specs)]


def detection_time(comp: ComponentConfig) -> float:
    """An upper bound on how long the Monitor takes to report a failure of ``comp``: over its
    probes, ``failure_threshold`` consecutive failed checks, each counted as ``interval + jitter
    + timeout``. The scheduler times the next check from when the last one was due (or from its
    end after a stall), so a real run of failed checks is shorter by up to ``threshold - 1``
    timeouts; the slack covers the scheduler's tick. 0 for a component without probes."""
    return max(
        (s.failure_threshold * (s.interval + s.jitter + s.timeout) for _, s in component_probes(comp)),
        default=0.0,
    )


class StoreConfig(_Strict):
    # FULL fsyncs every batch commit: an acknowledged event survives power loss, not just a crash.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    batch_max: int = Field(default=512, ge=1, le=10_000)


class BreakerConfig(_Strict):
    """Per-actuator, per-target circuit breakers around every actuator call."""

    fail_max: int = Field(default=3, ge=1, le=1000)  # consecutive failures that open the breaker
    reset_timeout: Duration = 30.0  # how long it stays open before one trial call (half-open)


class CompensationConfig(_Strict):
    """Retries of a saga's compensations (exponential backoff with jitter, through stamina)."""

    attempts: int = Field(default=5, ge=1, le=100)
    wait_initial: Duration = 0.5
    wait_max: Duration = 30.0
    wait_jitter: Duration = 0.5


_FAULT_RE = re.compile(
    r"^(before-intent|after-intent|after-effect|after-outcome|after-compensation-intent"
    r"|after-compensation-effect|after-undo-effect):([A-Za-z0-9_.*-]+)(#\d+)?$"
)


class ExecuteConfig(_Strict):
    blocked_actuators: list[str] = Field(default_factory=list)  # entry-point names never loaded
    breaker: BreakerConfig = BreakerConfig()
    compensation: CompensationConfig = CompensationConfig()
    systemctl: str = "systemctl"  # looked up on PATH when the systemd actuator runs
    mqtt_host: str = "127.0.0.1"  # default broker of the mqtt_publish and feature_flag actuators
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    # symlink_swap and checkpoint_restore only touch paths under these (besides the state dir).
    allowed_roots: list[Path] = Field(default_factory=list)
    # Fault injection for crash tests: "POINT:ACTUATOR[#ACTION_INDEX]", comma-separated; the
    # daemon SIGKILLs itself there. Never set it in production.
    fault_exit_at: str | None = None

    @field_validator("fault_exit_at")
    @classmethod
    def _fault_points(cls, v: str | None) -> str | None:
        for part in (v or "").split(","):
            if part.strip() and not _FAULT_RE.match(part.strip()):
                raise ValueError(
                    f"invalid fault point {part.strip()!r}: expected POINT:ACTUATOR[#INDEX] "
                    "with POINT one of before-intent, after-intent, after-effect, after-outcome, "
                    "after-compensation-intent, after-compensation-effect, after-undo-effect (healer.dr)"
                )
        return v


class MqttTlsConfig(_Strict):
    ca: Path | None = None  # None: the system's trusted CAs
    cert: Path | None = None  # client certificate (with key) for brokers that require one
    key: Path | None = None

    @pydantic.model_validator(mode="after")
    def _cert_with_key(self) -> MqttTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


def _default_client_id() -> str:
    import socket

    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:50] or "host"
    return f"healer-{host}"


class MqttConfig(_Strict):
    """The daemon's one MQTT connection (telemetry in, its own status and events out)."""

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    tls: MqttTlsConfig | None = None
    username: str | None = None
    password: pydantic.SecretStr | None = None  # or HEALER_MQTT__PASSWORD
    keepalive: int = Field(default=10, ge=1, le=3600)  # seconds; low, so a dead link is seen soon
    client_id: Name = Field(default_factory=_default_client_id)
    topic_prefix: str = "healer"
    outbox_size: int = Field(default=10_000, ge=1, le=10_000_000)  # buffered while the broker is down
    max_payload: pydantic.ByteSize = Field(default=pydantic.ByteSize(65_536), ge=64)
    incoming_queue: int = Field(default=10_000, ge=1)  # no effect: messages are handled as read
    connect_timeout: Duration = 5.0
    reconnect_min: Duration = 0.2
    reconnect_max: Duration = 10.0
    drop_report_interval: Duration = 10.0  # telemetry.dropped summaries: at most one per interval
    publish_events: bool = True  # every recorded event to {prefix}/healer/{client_id}/events/{type}

    @pydantic.field_validator("topic_prefix")
    @classmethod
    def _plain_topic(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\x00") or v.startswith("/") or v.endswith("/"):
            raise ValueError("expected a topic prefix without wildcards or leading/trailing '/'")
        return v


class AnalysisConfig(_Strict):
    # After a root cause recovers, its symptoms get this long to recover on their own before
    # any that still fail are diagnosed (and remediated) on their own.
    settle_time: Duration = 5.0
    # A dependent whose probes fail (its process alive) while a dependency still looks healthy
    # waits for the dependency's probes to notice (their worst-case detection time, see
    # detection_time) before it is diagnosed on its own, so the dependency's failure, if that is
    # what it is, makes it a symptom instead of a root. At most this long; 0 disables the wait.
    max_dependency_hold: Duration = 30.0


class DrConfig(_Strict):
    # Retention: the newest N checkpoints per agent stay (plus HEAD and whatever an open incident
    # or a pending approval still refers to); the rest are removed, each one an event.
    keep_checkpoints: int = Field(default=10, ge=1, le=100_000)
    retention_interval: Duration = 60.0


def check_loopback(value: Any) -> Any:
    """The metrics endpoint has no authentication: it may only listen on a loopback address."""
    import ipaddress

    if not isinstance(value, str) or value == "localhost":
        return value
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected a loopback IP address such as 127.0.0.1 or ::1, got {value!r}") from None
    if not ip.is_loopback:
        raise ValueError(f"{value} is not a loopback address: the metrics endpoint has no authentication")
    return value


class MetricsConfig(_Strict):
    """The Prometheus endpoint (``http://ADDRESS:PORT/metrics``), served by the daemon."""

    enabled: bool = False
    address: Annotated[str, BeforeValidator(check_loopback)] = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class HealerConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HEALER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    state_dir: Path
    policies_dir: Path
    components: dict[Name, ComponentConfig] = Field(default_factory=dict)
    store: StoreConfig = StoreConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout: Duration = 10.0  # how long SIGTERM waits for an in-flight action
    stop_components_on_exit: bool = True
    execute: ExecuteConfig = ExecuteConfig()
    # Members of this group may use the control socket (approve, deny, silence, reload) too;
    # unset: only the daemon's own user.
    control_group: str | None = None
    mqtt: MqttConfig | None = None  # telemetry (heartbeats, last wills, breakers); off when absent
    analysis: AnalysisConfig = AnalysisConfig()
    metrics: MetricsConfig = MetricsConfig()
    dr: DrConfig = DrConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML document arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)


ExtraCheck = Callable[[HealerConfig], list[tuple[tuple[str | int, ...], str]]]


def load_config(path: Path, extra_checks: ExtraCheck | None = None) -> HealerConfig:
    """Read, validate and resolve a config file; raise :class:`ConfigError` saying what is wrong.

    ``extra_checks`` lets the caller add validation that needs other layers (probe parameter
    schemas from installed plugins, the dependency graph) while keeping positions in the file.
    """
    try:
        doc = load_yaml_file(path)
    except YamlDocumentError as exc:
        raise ConfigError(_render(exc.problems)) from exc
    data = doc.plain()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(_render([YamlProblem(str(path), 1, 1, "", "expected a mapping at the top level")]))
    try:
        cfg = HealerConfig(**data)
    except ValidationError as exc:
        problems = doc.problems_from_validation(exc)
        problems = [_mention_env(p) for p in problems]
        raise ConfigError(_render(problems)) from exc
    cfg = _resolve_paths(cfg, path.parent)
    cfg = _resolve_mqtt_paths(cfg, path.parent)
    found = dependency_problems(cfg) + probe_name_problems(cfg)
    if not found and extra_checks is not None:
        found = extra_checks(cfg)
    if found:
        problems = []
        for loc, msg in found:
            line, col = doc.locate(loc)
            problems.append(YamlProblem(str(path), line, col, format_key_path(loc), msg))
        raise ConfigError(_render(problems))
    return cfg


def dependency_problems(cfg: HealerConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Unknown dependencies and dependency cycles, located at the offending ``depends_on``."""
    import networkx as nx

    found: list[tuple[tuple[str | int, ...], str]] = []
    graph = nx.DiGraph()
    for name, comp in cfg.components.items():
        graph.add_node(name)
        for i, dep in enumerate(comp.depends_on):
            if dep not in cfg.components:
                found.append((("components", name, "depends_on", i), f"unknown component {dep!r}"))
            else:
                graph.add_edge(name, dep)
    if not found:
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            return found
        names = [edge[0] for edge in cycle] + [cycle[0][0]]
        found.append((("components", names[0], "depends_on"), "dependency cycle: " + " -> ".join(names)))
    return found


def probe_name_problems(cfg: HealerConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Two probes of a component with one name: events and policies could not tell them apart."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    for name, comp in cfg.components.items():
        seen: dict[str, int] = {}
        offset = len(component_probes(comp)) - len(comp.probes)  # the implicit process probe
        for i, (probe, _spec) in enumerate(component_probes(comp)[offset:]):
            if probe in seen:
                found.append(
                    (
                        ("components", name, "probes", i, "name"),
                        f"duplicate probe name {probe!r} (also probes[{seen[probe]}])",
                    )
                )
            else:
                seen[probe] = i
    return found


def _mention_env(p: YamlProblem) -> YamlProblem:
    top = p.key_path.split(".", 1)[0].split("[", 1)[0]
    var = f"HEALER_{top.upper()}"
    if top and any(k == var or k.startswith(var + "__") for k in os.environ):
        return YamlProblem(
            p.path, p.line, p.column, p.key_path, f"{p.message} (value from environment {var})"
        )
    return p


def _render(problems: list[YamlProblem]) -> str:
    return "invalid configuration:\n" + "\n".join(f"  {p}" for p in problems)


def _resolve_paths(cfg: HealerConfig, base: Path) -> HealerConfig:
    def res(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    comps = {}
    for name, comp in cfg.components.items():
        resolved = comp
        if comp.command is not None and comp.command.cwd is not None:
            command = comp.command.model_copy(update={"cwd": res(comp.command.cwd)})
            resolved = comp.model_copy(update={"command": command})
        comps[name] = resolved
    execute = cfg.execute.model_copy(update={"allowed_roots": [res(p) for p in cfg.execute.allowed_roots]})
    return cfg.model_copy(
        update={
            "state_dir": res(cfg.state_dir),
            "policies_dir": res(cfg.policies_dir),
            "components": comps,
            "execute": execute,
        }
    )


def _resolve_mqtt_paths(cfg: HealerConfig, base: Path) -> HealerConfig:
    """TLS files named relative to the config file, like every other path in it."""
    if cfg.mqtt is None or cfg.mqtt.tls is None:
        return cfg
    found = {k: v.expanduser() for k, v in cfg.mqtt.tls.model_dump().items() if v is not None}
    resolved = {k: v if v.is_absolute() else (base / v).resolve() for k, v in found.items()}
    tls = cfg.mqtt.tls.model_copy(update=resolved)
    return cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"tls": tls})})
