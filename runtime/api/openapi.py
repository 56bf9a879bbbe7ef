"""The OpenAPI 3.1 document, built from the same Route list that builds the router."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from runtime.api.appkeys import ROUTES
from runtime.api.endpoint import Route
from runtime.web.responses import ERROR_WORDS

_PATH_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{model}"


def _hoist(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    return schema


def _model_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    name = model.__name__
    if name not in components:
        components[name] = _hoist(model.model_json_schema(ref_template=_REF), components)
    return {"$ref": _REF.format(model=name)}


def _dataclass_ref(cls: type, components: dict[str, Any]) -> dict[str, Any]:
    name = cls.__name__
    if name not in components:
        schema = _hoist(TypeAdapter(cls).json_schema(ref_template=_REF), components)
        for hidden in getattr(cls, "_hidden", ()):
            schema.get("properties", {}).pop(hidden, None)
            if hidden in schema.get("required", []):
                schema["required"].remove(hidden)
        components[name] = schema
    return {"$ref": _REF.format(model=name)}


def _errors_for(route: Route) -> list[int]:
    codes = set(route.errors)
    if route.auth != "public":
        codes |= {401, 403, 429}  # 403: admin-only routes, and any key of a disabled tenant
        if route.auth in ("tenant", "tenant_admin"):
            codes |= {400, 403, 404}
    if _PATH_PARAM.search(route.path):
        codes |= {400, 404}
    if route.body is not None:
        codes |= {400, 409, 413, 415, 422}
    if route.paged:
        codes.add(400)
    return sorted(codes)


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{route.handler.__name__}",
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [],
        "responses": {},
    }
    for name in _PATH_PARAM.findall(route.path):
        op["parameters"].append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
    for q in route.query:
        op["parameters"].append({
            "name": q.name, "in": "query", "required": False, "schema": {"type": q.type},
            "description": q.description,
        })
    if route.auth in ("tenant", "tenant_admin"):
        op["parameters"].append({
            "name": "X-Tenant-ID", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "admin keys: the tenant this request acts on (runtime keys: ignored)",
        })
    if route.auth == "public":
        op["security"] = []
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _model_ref(route.body, components)}},
        }
    if route.status == 204:
        op["responses"]["204"] = {"description": "done"}
    else:
        schema: dict[str, Any] = {"type": "object"}
        if route.response is not None:
            item = _dataclass_ref(route.response, components)
            schema = item
            if route.paged:
                schema = {
                    "type": "object",
                    "required": ["items", "total", "limit", "offset"],
                    "properties": {"items": {"type": "array", "items": item}, "total": {"type": "integer"},
                                   "limit": {"type": "integer"}, "offset": {"type": "integer"}},
                }
        elif route.paged:
            schema = {"$ref": _REF.format(model="Page")}
        if route.media_type != "application/json":
            schema = {"type": "string"}
        op["responses"][str(route.status)] = {
            "description": "success", "content": {route.media_type: {"schema": schema}},
        }
    for code in _errors_for(route):
        op["responses"][str(code)] = {
            "description": ERROR_WORDS.get(code, "error"),
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
        }
    return op


@lru_cache(maxsize=8)
def _build(routes: tuple[Route, ...]) -> dict[str, Any]:
    components: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "message", "details"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                           "details": {"type": "object"}},
        },
        "Page": {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {"items": {"type": "array", "items": {"type": "object"}}, "total": {"type": "integer"},
                           "limit": {"type": "integer"}, "offset": {"type": "integer"}},
        },
    }
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "voicectl API",
            "version": "1",
            "description": "Control and runtime API of a voicectl appliance. Errors are "
                           '{"error", "message", "details"}; lists are {"items", "total", "limit", "offset"}.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "vk_admin_... or vk_rt_... API key"}},
            "schemas": components,
        },
        "paths": paths,
    }


def openapi_document(app: web.Application) -> dict[str, Any]:
    return _build(tuple(app[ROUTES]))
