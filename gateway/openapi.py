"""The OpenAPI document and its interactive page, as they really are.

The page is Swagger UI served from the installed ``swagger-ui-py`` package (no CDN: the docs work on a cluster's
private network). The document is Litestar's, finished by :func:`finish`: every error answer is described as the
problem+json body the gateway really sends (``Problem``), per operation where it can occur, and request bodies that
refuse unknown fields say so (``additionalProperties: false``).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, get
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath
from litestar.response import File

from gateway import __version__
from gateway.errors import PROBLEM_JSON, Problem
from gateway.schemas import request_bodies

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"
_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
"""The files of the swagger-ui-py package the page loads; nothing else of the package is served."""

_WRITES = frozenset({"post", "put", "patch", "delete"})
_LOGIN = ("/api/v1/auth/tokens", "post")
_NO_DATABASE = frozenset({"/healthz", "/readyz"})


@cache
def _assets_dir() -> Path:
    spec = importlib.util.find_spec("swagger_ui")  # not imported: only its files are wanted
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@get(f"{ASSETS_PATH}/{{name:str}}", include_in_schema=False, sync_to_thread=False, cache=3600)
def docs_asset(name: FromPath[str]) -> File:
    """One file of the docs page (Swagger UI's JS, CSS and icon), from the installed package."""
    if name not in _ASSETS:
        raise NotFoundException(f"no asset {name!r}")
    return File(_assets_dir() / name, media_type=_ASSETS[name], content_disposition_type="inline")


@cache
def _problem_components() -> dict[str, Any]:
    (_,), components = msgspec.json.schema_components([Problem], ref_template="#/components/schemas/{name}")
    return components


def _structs() -> dict[str, type[msgspec.Struct]]:
    """The gateway's msgspec structs by name (the names Litestar gives their components)."""
    found: dict[str, type[msgspec.Struct]] = {}
    pending: list[type[msgspec.Struct]] = list(msgspec.Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith(("gateway.", "slurm.")):
            found.setdefault(cls.__name__, cls)
    return found


def _zero_bounds(cls: type[msgspec.Struct]) -> dict[str, dict[str, int]]:
    """Field name -> the bounds at 0 of its number (Litestar drops a ``ge=0`` or ``gt=0``: it tests them for truth)."""
    info = msgspec.inspect.type_info(cls)
    bounds: dict[str, dict[str, int]] = {}
    if not isinstance(info, msgspec.inspect.StructType):
        return bounds
    for field in info.fields:
        types = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        for t in types:
            if isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType):
                if t.ge == 0:
                    bounds[field.encode_name] = {"minimum": 0}
                elif t.gt == 0:
                    bounds[field.encode_name] = {"exclusiveMinimum": 0}
    return bounds


_NODE_BOOTSTRAP = ("/api/v1/nodes/bootstrap", "post")
_STARTS_WORK = re.compile(r"/(jobs|jobs/test|environments|environments/\{[^}]+\}/(start|restart))$")


def _error_statuses(path: str, method: str, operation: dict[str, Any]) -> Iterator[int]:
    """The error statuses an operation can answer with, from what it takes and who may call it."""
    parameters = operation.get("parameters") or []
    body = "requestBody" in operation
    secured = bool(operation.get("security"))
    if parameters or body:
        yield 400  # validation of the body, path, query or headers
    if secured or (path, method) == _LOGIN:
        yield 401  # no, unknown, expired or revoked token; at login, a wrong password
        yield 403  # a role or platform admin required, a disabled account, an inactive workspace
    if (path, method) == _NODE_BOOTSTRAP:
        yield 401  # a node's one-time token: expired, spent, tampered or another node's (gateway.nodes)
    if "{" in path or secured:
        yield 404  # unknown resource; and anything in a workspace the caller is not a member of
    if method == "post" and _STARTS_WORK.search(path):
        yield 402  # the workspace is overdue (or suspended for it): new work waits for a top-up
    if method in _WRITES or path.endswith(("/logs", "/tensorboard", "/bootstrap-command")):
        yield 409  # the state does not allow it (duplicate name, last owner, a job that has ended, ...)
    if path.endswith("/tensorboard"):
        yield 502  # the environment's TensorBoard is not running or does not answer
    if "/uploads" in path or path.endswith("/download-url"):
        yield 502  # the storage source failed what the gateway asked of it
    if any(p.get("in") == "header" and p.get("name", "").lower() == "idempotency-key" for p in parameters):
        yield 422  # an Idempotency-Key reused with a different body
    if body:
        yield 413  # body over max_body_bytes
    if (path, method) in (_LOGIN, _NODE_BOOTSTRAP):
        yield 429  # password (or bootstrap token) guessing throttled
    if path not in _NO_DATABASE:
        yield 503  # database (or Slurm) not answering; Retry-After says when to try again


def _problem_response(status: int) -> dict[str, Any]:
    return {
        "description": f"{HTTPStatus(status).phrase} (RFC 9457 problem details)",
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """Litestar's OpenAPI document with the gateway's real error answers and closed request bodies."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_problem_components())
    structs = _structs()
    bodies = request_bodies([cls for name, cls in structs.items() if name in schemas])
    for name, schema in schemas.items():
        cls = structs.get(name)
        if cls is None or schema.get("type") != "object":
            continue
        if name in bodies:
            schema.update({k: v for k, v in bodies[name].items() if k not in ("title", "description")})
            if "description" in bodies[name]:
                schema.setdefault("description", bodies[name]["description"])  # the struct's docstring
        if cls.__struct_config__.forbid_unknown_fields:
            schema["additionalProperties"] = False
        for field, bound in _zero_bounds(cls).items():
            if field in schema.get("properties", {}):
                schema["properties"][field].update(bound)
    for name, schema in bodies.items():
        schemas.setdefault(name, schema)  # what they refer to (an enum), under msgspec's name for it
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code in [c for c in responses if c.startswith(("4", "5"))]:
                del responses[code]  # Litestar's own error shape, which the gateway never sends
            for status in _error_statuses(path, method, operation):
                responses[str(status)] = _problem_response(status)
            if path.endswith("/jobs/{job_id}/logs") and "200" in responses:  # follow=true streams them as text
                responses["200"].setdefault("content", {})["text/plain"] = {"schema": {"type": "string"}}
            if path.endswith("/billing/report") and "200" in responses:  # format=csv
                responses["200"].setdefault("content", {})["text/csv"] = {"schema": {"type": "string"}}
            if path == "/readyz":
                responses["503"] = {
                    "description": "The database does not answer",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                }
    return document


class _Finished:
    """Finishes the document once: render plugins are handed the same (cached) dict on every request."""

    _source: int | None = None
    _result: dict[str, Any] | None = None

    def __call__(self, document: dict[str, Any]) -> dict[str, Any]:
        if self._result is None or self._source != id(document):
            self._result = finish(msgspec.json.decode(msgspec.json.encode(document)))
            self._source = id(document)
        return self._result


class _OpenAPIJson(JsonRenderPlugin):
    def __init__(self, finished: _Finished) -> None:
        super().__init__(path="/openapi.json")
        self._finished = finished

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self._finished(openapi_schema))


class _SwaggerPage(SwaggerRenderPlugin):
    def __init__(self, finished: _Finished) -> None:
        super().__init__(
            path="/",
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
        )
        self._finished = finished

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, self._finished(openapi_schema))


def openapi_config() -> OpenAPIConfig:
    finished = _Finished()
    return OpenAPIConfig(
        title="RemoteGPU Gateway",
        version=__version__,
        path=SCHEMA_PATH,
        render_plugins=[_SwaggerPage(finished), _OpenAPIJson(finished)],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", description="token from POST /api/v1/auth/tokens"
                )
            }
        ),
    )
