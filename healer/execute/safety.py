"""What keeps payloads out of command lines and out of the file system outside healer's roots.

Actuator parameters come from policies, but the values substituted into them (component
names, incident numbers, keys) travel through events that may one day come from the network.
So a template may name only ``{component}``, ``{incident}`` and ``{key}``, the values must
match a strict pattern (no spaces, quotes, ``$``, ``;``, ``|``, ``&``, backquotes, ``..``), and
paths are checked to stay under an allowed root after resolving symlinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from healer.config import NAME_RE
from healer.errors import ActuatorError
from healer.fsutil import atomic_write, ensure_private_dir, fsync_dir

__all__ = ["atomic_write", "ensure_private_dir", "fsync_dir"]  # re-exported for the actuators

PLACEHOLDERS = frozenset({"component", "incident", "key"})
_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+=/-]{0,255}$")
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox", "env"})


def placeholders(template: str) -> list[str]:
    """The placeholders ``template`` uses; ValueError for anything but plain known names."""
    used: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"bad template {template!r}: {exc} (write {{{{ and }}}} for literal braces)"
        ) from None
    for _literal, fname, spec, conv in parsed:
        if fname is None:
            continue
        if fname not in PLACEHOLDERS:
            raise ValueError(
                f"placeholder {{{fname}}} in {template!r} is not allowed: only "
                "{component}, {incident} and {key} can be substituted"
            )
        if spec or conv:
            raise ValueError(f"placeholder {{{fname}}} in {template!r}: no format spec or conversion allowed")
        used.append(fname)
    return used


def check_templates(value: Any, where: str = "params") -> None:
    """Validate every string in a (nested) parameter value as a template."""
    if isinstance(value, str):
        try:
            placeholders(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    elif isinstance(value, Mapping):
        for k, v in value.items():
            check_templates(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_templates(v, f"{where}[{i}]")


def check_value(name: str, value: str) -> str:
    if not _VALUE_RE.match(value) or ".." in value:
        raise ActuatorError(
            f"refusing to substitute {name}={value!r}: values may only hold letters, digits and "
            "_ . : @ + = / - (no spaces, quotes, shell metacharacters or '..')"
        )
    return value


def template_values(component: str, incident: int, key: str) -> dict[str, str]:
    return {
        "component": safe_name(component, "component name"),
        "incident": str(int(incident)),
        "key": check_value("key", key),
    }


def render(template: str, values: Mapping[str, str]) -> str:
    used = placeholders(template)
    for name in used:
        check_value(name, values[name])
    return template.format_map({k: values[k] for k in used}) if used else template


def render_obj(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return render(value, values)
    if isinstance(value, Mapping):
        return {k: render_obj(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_obj(v, values) for v in value]
    return value


def safe_name(value: str, what: str = "name") -> str:
    """A single path segment: 1-64 of letters, digits, '.', '_', '-', starting alphanumeric."""
    if not NAME_RE.match(value) or ".." in value:
        raise ActuatorError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '..'"
        )
    return value


def inside(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` made absolute and checked to lie under one of ``roots`` (symlinks resolved)."""
    real = path.resolve(strict=False)
    for root in roots:
        if real.is_relative_to(root.resolve(strict=False)):
            return real
    raise ActuatorError(f"{path} is outside the directories healer may change ({', '.join(map(str, roots))})")


def atomic_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` in one rename (readers never see it missing)."""
    tmp = link.parent / f".{link.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(link.parent)


def check_argv0(argv0: str) -> None:
    if placeholders(argv0):
        raise ValueError(f"the program {argv0!r} cannot contain placeholders: it must be fixed in the policy")
    if os.path.basename(argv0) in SHELLS:
        raise ValueError(
            f"{argv0!r} is a shell or launcher: exec runs a program directly, never through a shell"
        )


async def run_argv(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None = None, output_limit: int = 2000
) -> tuple[int, str, str]:
    """Run ``argv`` (never a shell) in its own process group; kill the group if cut short."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise ActuatorError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    try:
        out, err = await proc.communicate()
    except BaseException:
        # Timeout or shutdown: leave nothing running behind the action's back.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    code = proc.returncode if proc.returncode is not None else -1
    return code, out.decode(errors="replace")[-output_limit:], err.decode(errors="replace")[-output_limit:]
