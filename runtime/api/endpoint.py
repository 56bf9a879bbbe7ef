"""Declarative routes: one Route per endpoint drives auth, tenant scope, rate limits,
body validation, the aiohttp router and the OpenAPI document alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from runtime.api.appkeys import CONTROL, METRICS, RATE_LIMITER, SETTINGS
from runtime.control.errors import BadRequest, ControlError, Forbidden, NotFound, Unauthorized
from runtime.control.models import Principal
from runtime.control.pagination import PageRequest
from runtime.control.plane import ControlPlane
from runtime.store.tables import ALL_TENANTS
from runtime.web.responses import error_response, json_response

# public: no key. admin: admin keys only, no tenant context. tenant: runtime key (its own
# tenant) or admin key naming the tenant in X-Tenant-ID. tenant_admin: as tenant, admin keys only.
# any: any valid key, the handler scopes by ctx.principal.
Auth = Literal["public", "admin", "tenant", "tenant_admin", "any"]
RouteClass = Literal["read", "write", "session", "realtime", "recording", "control", "outbound"]


@dataclass(frozen=True)
class QueryParam:
    name: str
    type: str = "string"
    description: str = ""


PAGE = (QueryParam("limit", "integer", "page size, 1..200 (default 50)"),
        QueryParam("offset", "integer", "items to skip (default 0)"))


@dataclass
class Ctx:
    request: web.Request
    control: ControlPlane
    principal: Principal | None
    tenant_id: str | None
    body: Any = None
    route: Route | None = None

    async def read_body(self) -> Any:
        """The route's body, read and validated now (a ``defer_body`` route calls this once it
        has authenticated its caller); errors are the endpoint's own 400/413/415/422."""
        if self.body is None and self.route is not None and self.route.body is not None:
            self.body = await _read_body(self.route, self.request)
        return self.body

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    def query(self, name: str) -> str | None:
        return self.request.query.get(name)

    def page(self) -> PageRequest:
        return PageRequest.parse(self.request.query.get("limit"), self.request.query.get("offset"))

    @property
    def tenant(self) -> str:
        if self.tenant_id is None:  # a route declared with a tenant auth mode always has one
            raise BadRequest("this route needs a tenant")
        return self.tenant_id


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth = "tenant"
    body: type[BaseModel] | None = None
    status: int = 200
    response: Any = None  # a dataclass/model type for the OpenAPI document
    paged: bool = False
    query: tuple[QueryParam, ...] = ()
    tag: str = "misc"
    rate_class: RouteClass | None = None
    errors: tuple[int, ...] = field(default=())
    media_type: str = "application/json"  # of the success body, for the OpenAPI document
    # A public route that authenticates in its handler: the body (still documented) is read and
    # validated only when the handler calls ctx.read_body(), so strangers get 401, not 422.
    defer_body: bool = False

    @property
    def effective_rate_class(self) -> RouteClass | None:
        if self.auth == "public":
            return None
        return self.rate_class or ("read" if self.method == "GET" else "write")


def bearer_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def authenticate(request: web.Request) -> Principal:
    key = bearer_key(request)
    if key is None:
        request.app[METRICS].auth_failures.inc()
        raise Unauthorized("missing API key: send Authorization: Bearer <key>")
    try:
        return await request.app[CONTROL].keys.authenticate(key)
    except Unauthorized:
        request.app[METRICS].auth_failures.inc()
        raise


async def _tenant_scope(route: Route, request: web.Request, principal: Principal) -> str | None:
    if route.auth in ("admin", "tenant_admin") and not principal.is_admin:
        raise Forbidden("this operation needs an admin key")
    if route.auth not in ("tenant", "tenant_admin"):
        return None
    if not principal.is_admin:
        return principal.tenant_id
    tenant_id = request.headers.get("X-Tenant-ID", "").strip()
    if not tenant_id:
        raise BadRequest("admin keys name the tenant with the X-Tenant-ID header", {"header": "X-Tenant-ID"})
    tenants = request.app[CONTROL].store.tenants
    if await tenants.get(tenant_id, tenant_id=ALL_TENANTS) is None:
        raise NotFound(f"tenant {tenant_id} not found", {"tenant_id": tenant_id})
    return tenant_id


class PayloadTooLarge(ControlError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ControlError):
    status = 415
    code = "unsupported_media_type"


async def _read_body(route: Route, request: web.Request) -> Any:
    try:
        raw = await request.read()  # enforces client_max_size
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].server.max_body_bytes
        raise PayloadTooLarge(f"request body is larger than {limit} bytes", {"max_bytes": limit}) from None
    if not raw:
        data: Any = {}
    else:
        if request.content_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json", {"content_type": request.content_type})
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    _refuse_nul(data, "the request body")
    try:
        return route.body.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(exc) from None


def _refuse_nul(value: Any, where: str) -> None:
    """PostgreSQL text cannot hold NUL characters: refuse them up front, on both backends alike."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"{where} contains a NUL character", {"where": where})
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, where)
            _refuse_nul(item, where)
    elif isinstance(value, list):
        for item in value:
            _refuse_nul(item, where)


class ValidationFailed(ControlError):
    status = 422
    code = "validation_error"

    def __init__(self, exc: ValidationError) -> None:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"].removeprefix("Value error, ")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        super().__init__(f"invalid request body: {summary}", {"errors": errors})


def make_handler(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    rate_class = route.effective_rate_class

    async def handle(request: web.Request) -> web.StreamResponse:
        principal = None
        tenant_id = None
        limit_headers: dict[str, str] = {}
        if route.auth != "public":
            principal = await authenticate(request)
            if rate_class is not None:
                decision = await request.app[RATE_LIMITER].check(principal.key_id, principal.scope, rate_class)
                if decision is not None:
                    limit_headers = decision.headers()
                    if not decision.allowed:
                        request.app[METRICS].rate_limited.labels(rate_class).inc()
                        retry = int(limit_headers["Retry-After"])
                        return error_response(
                            429, f"rate limit for {rate_class} requests reached; retry in {retry} s",
                            {"route_class": rate_class, "retry_after": retry, "limit": decision.limit,
                             "remaining": 0, "reset": decision.reset_at},
                            headers=limit_headers,
                        )
        try:
            if principal is not None:
                tenant_id = await _tenant_scope(route, request, principal)
            _refuse_nul(dict(request.match_info), "the path")
            _refuse_nul([v for q in route.query for v in request.query.getall(q.name, [])], "the query")
            read_now = route.body is not None and not route.defer_body
            body = await _read_body(route, request) if read_now else None
            result = await route.handler(Ctx(request, request.app[CONTROL], principal, tenant_id, body, route))
        except ControlError as exc:
            return error_response(exc.status, exc.message, exc.details, error=exc.code, headers=limit_headers)
        if isinstance(result, web.StreamResponse):
            result.headers.update(limit_headers)
            return result
        if result is None:
            return web.Response(status=204, headers=limit_headers)
        return json_response(result, status=route.status, headers=limit_headers)

    handle.__name__ = route.handler.__name__
    return handle
