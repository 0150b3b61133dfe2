"""The hub's calls to the gateway's API, as the logged-in user (their own token: roles and quotas apply)."""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx
from tornado.web import HTTPError


class GatewayError(HTTPError):
    """The gateway refused (a 4xx): ``jupyterhub_message`` is its own words, shown on the hub's pages as they are.

    A tornado ``HTTPError`` because the hub passes only those through from a failed start to the spawn form (with
    their status, 400/402/409 here); any other exception becomes "Unhandled error starting server" there."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, "%s", detail, reason=None)
        self.status = status
        self.jupyterhub_message = detail

    def __str__(self) -> str:
        return self.jupyterhub_message


class GatewayUnreachable(Exception):
    """No answer, or a 5xx: the state is unknown (never taken for a stopped server)."""


def detail_of(response: httpx.Response) -> str:
    """The problem+json ``detail`` (with the field it names), else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text[:300]}"
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
        errors = body.get("errors") or []
        field = errors[0].get("field") if errors and isinstance(errors[0], dict) else None
        return f"{detail} ({field})" if field and str(field) not in detail else detail
    return f"{response.status_code}: {response.text[:300]}"


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every call (the system's trust store): building one per client cost the hub's event
    loop ~30 ms of CPU per call, for each poll of each server."""
    return ssl.create_default_context()


async def call(
    base_url: str,
    token: str,
    method: str,
    path: str,
    *,
    json: Any = None,
    timeout: float = 30,  # noqa: ASYNC109
) -> Any:
    """One API call; the decoded body (None for 204). Raises GatewayError (4xx) or GatewayUnreachable."""
    url = base_url.rstrip("/") + "/api/v1" + path
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=_tls()) as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await client.request(method, url, json=json, headers=headers)
    except httpx.HTTPError as error:
        raise GatewayUnreachable(f"{method} {path}: {type(error).__name__}: {error}") from error
    if response.status_code >= 500:
        raise GatewayUnreachable(f"{method} {path}: {response.status_code} {detail_of(response)}")
    if response.status_code >= 400:
        raise GatewayError(response.status_code, detail_of(response))
    return response.json() if response.content else None
