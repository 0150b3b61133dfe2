"""The one error model: domain exceptions, rendered as RFC 9457 problem+json by ``exception_handlers``."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy.exc import OperationalError

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("gateway.errors")


class FieldError(msgspec.Struct, omit_defaults=True):
    field: str
    message: str
    source: str | None = None


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 body. ``errors`` names each offending field for validation problems."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


class GatewayError(Exception):
    """Base of the errors services raise; each maps to one HTTP status and problem type."""

    status = 400
    kind = "bad-request"
    title = "Bad request"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, *, field: str | None = None, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or ([FieldError(field=field, message=detail)] if field else None)


class InvalidInput(GatewayError):
    status, kind, title = 400, "validation-error", "Invalid input"


class Unauthorized(GatewayError):
    status, kind, title = 401, "unauthorized", "Authentication required"
    headers = {"WWW-Authenticate": 'Bearer realm="remotegpu"'}


class Forbidden(GatewayError):
    status, kind, title = 403, "forbidden", "Forbidden"


class PaymentRequired(GatewayError):
    """The workspace is overdue (its balance below zero) or suspended for it: new work waits for a top-up."""

    status, kind, title = 402, "payment-required", "Payment required"


class NotFound(GatewayError):
    status, kind, title = 404, "not-found", "Not found"


class Conflict(GatewayError):
    status, kind, title = 409, "conflict", "Conflict"


class Unavailable(GatewayError):
    """What the request needs is not configured or not reachable (e.g. no ``secret_keys`` to seal keys with)."""

    status, kind, title = 503, "unavailable", "Service unavailable"


_HTTP_KINDS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    402: ("payment-required", "Payment required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("too-many-requests", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}

_BACKTICK = re.compile(r"`([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def field_of(key: str | None, message: str) -> str:
    """Name the offending field from Litestar/msgspec's (key, message) pair.

    msgspec reports unknown and missing fields against the whole body (``key='data'``) with the field in
    backticks; everything else already carries the field as the key, or as ``- at `$.a.b``` in the message.
    """
    at = _AT_PATH.search(message)
    if at and at.group(1):
        return at.group(1).replace("[...]", "")
    if key:
        key = key.replace("[...]", "")  # msgspec's marker for "some value of this mapping"
    if message.startswith(("Object contains unknown field", "Object missing required field")):
        names = _BACKTICK.findall(message)
        if names:
            return names[0] if not key or key == "data" else f"{key}.{names[0]}"
    return key or "body"


def problem_type(kind: str) -> str:
    return f"urn:remotegpu:problem:{kind}"


def _request_id(request: Request[Any, Any, Any]) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def _response(
    request: Request[Any, Any, Any], problem: Problem, headers: dict[str, str] | None = None
) -> Response[Any]:
    problem.instance = request.url.path
    problem.request_id = _request_id(request)
    return Response(
        content=msgspec.json.encode(problem),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def handle_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return _response(
        request,
        Problem(
            type=problem_type(exc.kind),
            title=exc.title,
            status=exc.status,
            detail=exc.detail,
            errors=exc.errors,
        ),
        exc.headers,
    )


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return handle_unexpected(request, exc)
    kind, title = _HTTP_KINDS.get(status, ("http-error", "HTTP error"))
    errors: list[FieldError] | None = None
    detail = exc.detail
    if isinstance(exc, ValidationException) or status == 400:
        kind, title = "validation-error", "Invalid input"
        if isinstance(exc.extra, list) and exc.extra:
            errors = [
                FieldError(
                    field=field_of(item.get("key"), str(item.get("message", ""))),
                    message=str(item.get("message", "")),
                    source=item.get("source"),
                )
                for item in exc.extra
                if isinstance(item, dict)
            ]
        elif detail.startswith("JSON is malformed"):
            errors = [FieldError(field="body", message=detail, source="body")]
        if errors:
            detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    headers = dict(exc.headers) if exc.headers else None
    return _response(
        request,
        Problem(type=problem_type(kind), title=title, status=status, detail=detail, errors=errors),
        headers,
    )


def handle_database_unavailable(request: Request[Any, Any, Any], exc: OperationalError) -> Response[Any]:
    """The database refused or lost the connection, or stayed locked past its busy timeout: try again soon."""
    log.warning("database_unavailable", path=request.url.path, error=str(exc.orig or exc)[:300])
    return _response(
        request,
        Problem(
            type=problem_type("database-unavailable"),
            title="Database unavailable",
            status=503,
            detail="The database did not answer; try again in a few seconds.",
        ),
        {"Retry-After": "5"},
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled_exception", path=request.url.path, exc_info=exc)
    return _response(
        request,
        Problem(
            type=problem_type("internal-error"),
            title="Internal server error",
            status=HTTP_500_INTERNAL_SERVER_ERROR,
            detail="An unexpected error occurred; quote the request id to your admin.",
        ),
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    GatewayError: handle_gateway_error,
    HTTPException: handle_http_exception,
    OperationalError: handle_database_unavailable,
    Exception: handle_unexpected,
}

__all__ = [
    "EXCEPTION_HANDLERS",
    "Conflict",
    "FieldError",
    "Forbidden",
    "GatewayError",
    "InvalidInput",
    "NotFound",
    "Problem",
    "Unauthorized",
]
