"""``http``: one HTTP request with an ``Idempotency-Key`` header; fails on an unexpected status.

Idempotent for GET, PUT and DELETE; for POST and PATCH only when the policy says the server
honours the idempotency key (``idempotent: true``). ``verify`` is an optional read-only request
that tells whether the intended state holds (expected status) or not (``absent_status``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator

from healer.errors import ActuatorError
from healer.execute.actuators import ActionContext
from healer.execute.builtins import Base, Params
from healer.execute.safety import check_templates, render, render_obj, template_values

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


def _check_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
    if "{" in urlsplit(v).netloc:
        raise ValueError(f"the host of {v!r} cannot be a placeholder")
    check_templates(v, "url")
    return v


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, int) else v


class _Verify(Params):
    method: Method = "GET"
    url: str
    expect_status: list[int] = Field(default_factory=lambda: [200])
    absent_status: list[int] = Field(default_factory=lambda: [404])

    _url = field_validator("url")(_check_url)
    _status = field_validator("expect_status", "absent_status", mode="before")(_one_or_many)


class _Request(Params):
    method: Method = "POST"
    url: str
    body: Any = None  # sent as JSON
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    idempotent: bool | None = None
    verify: _Verify | None = None

    _url = field_validator("url")(_check_url)
    _status = field_validator("expect_status", mode="before")(_one_or_many)

    @field_validator("body")
    @classmethod
    def _json(cls, v: Any) -> Any:
        json.dumps(v)  # must be JSON (it is recorded in the log too)
        check_templates(v, "body")
        return v


class HttpActuator(Base):
    name: ClassVar[str] = "http"
    idempotent: ClassVar[bool] = False  # per request: see is_idempotent
    default_timeout: ClassVar[float] = 30.0
    PARAMS: ClassVar[Mapping[str, type[Params]]] = {"request": _Request}
    actions: ClassVar[frozenset[str]] = frozenset(PARAMS)

    def is_idempotent(self, action: str, params: Mapping[str, Any]) -> bool:
        declared = params.get("idempotent")
        if declared is not None:
            return bool(declared)
        return str(params.get("method", "POST")).upper() in ("GET", "PUT", "DELETE")

    def target(self, action: str, params: Mapping[str, Any], component: str) -> str:
        parts = urlsplit(str(params.get("url", "")))
        return parts.netloc or component

    async def perform(self, ctx: ActionContext) -> dict[str, Any]:
        p: _Request = self.parse(ctx.action, ctx.params)
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        url = render(p.url, values)
        headers = {**p.headers, "Idempotency-Key": ctx.idempotency_key}
        body = render_obj(p.body, values)
        resp = await self._send(p.method, url, headers, body)
        result = {"status": resp.status_code, "url": url, "body": resp.text[:500]}
        if resp.status_code not in p.expect_status:
            raise ActuatorError(f"{p.method} {url} answered {resp.status_code}: {resp.text[:200]}")
        return result

    async def verify(self, ctx: ActionContext) -> bool | None:
        p: _Request = self.parse(ctx.action, ctx.params)
        if p.verify is None:
            return None
        values = template_values(ctx.component, ctx.incident, ctx.idempotency_key)
        url = render(p.verify.url, values)
        resp = await self._send(p.verify.method, url, {"Idempotency-Key": ctx.idempotency_key}, None)
        if resp.status_code in p.verify.expect_status:
            return True
        if resp.status_code in p.verify.absent_status:
            return False
        return None

    async def _send(self, method: str, url: str, headers: dict[str, str], body: Any) -> httpx.Response:
        client = self.services.http
        own = client is None
        if client is None:
            client = httpx.AsyncClient(trust_env=False, timeout=None)  # noqa: S113  the executor's timeout bounds it
        try:
            kwargs: dict[str, Any] = {"headers": headers}
            if body is not None:
                kwargs["json"] = body
            return await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ActuatorError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        finally:
            if own:
                await client.aclose()
