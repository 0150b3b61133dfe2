"""Structured JSON logs carrying a per-request id; request metrics; the middleware that does both."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

from gateway.db.request_sessions import close_request_sessions

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

access_log = structlog.get_logger("gateway.access")
_access_logger = logging.getLogger("gateway.access")

REQUESTS = Counter("remotegpu_requests_total", "HTTP requests", ["method", "path", "status_code"])
REQUEST_SECONDS = Histogram("remotegpu_request_duration_seconds", "HTTP request latency", ["method", "path"])
UNMATCHED = "<unmatched>"
"""Path label of requests that matched no route, so random URLs cannot blow up the label set."""


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route stdlib and structlog records through one renderer (JSON lines by default)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        # filter_by_level first: a disabled level costs one check, not the whole processor chain.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our own access log replaces uvicorn's (it carries the request id).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """Keep a caller's well-formed X-Request-ID (so traces join up); otherwise make a fresh one."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return os.urandom(16).hex()


class RequestContextMiddleware:
    """Pure ASGI middleware around every request: request id into scope state, log context and response header;
    access log; request count and latency by method, route template and status; and, at the end, closing the
    request's database sessions whatever happened (Litestar skips generator-dependency cleanup when a later
    parameter fails validation)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # prometheus_client's .labels() is comparatively slow; keep the children we have made.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", ()))
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            await close_request_sessions(scope)
            elapsed = time.perf_counter() - started
            self._observe(scope, status, elapsed)
            if _access_logger.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.reset_contextvars(**tokens)

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        path = str(scope.get("path_template") or UNMATCHED)  # set by Litestar's router once a route matched
        if path == "/metrics":
            return
        method = str(scope.get("method", ""))
        counter = self._counters.get((method, path, status))
        if counter is None:
            counter = self._counters[(method, path, status)] = REQUESTS.labels(method, path, str(status))
        histogram = self._histograms.get((method, path))
        if histogram is None:
            histogram = self._histograms[(method, path)] = REQUEST_SECONDS.labels(method, path)
        counter.inc()
        histogram.observe(elapsed)
