"""An environment's TensorBoard through the gateway: ``{prefix}/...`` proxied to the session's TensorBoard.

``prefix`` is ``tensorboard_prefix(ws, id)``; the session's TensorBoard serves under that same prefix
(``--path_prefix``), so a request's path goes to it unchanged. Who may open it: the environment's owner, workspace
admins and owners, platform admins (``EnvironmentService.row``: a member sees only their own, 404 otherwise).

Browsers send no bearer header, so ``GET {prefix}/?token=<API token>`` checks the token and answers 303 to
``{prefix}/`` with a cookie: HttpOnly, SameSite=Strict, Path=prefix, holding ``v1.<environment>.<user>.<API token
id>.<expiry>.<HMAC>``. The HMAC's key is derived from the sessions' secret (gateway.environments.tokens) under a
label of its own, so neither can stand for the other. A cookie is good for COOKIE_SECONDS and only while its API
token is (revoked, expired, a disabled user: refused at once), for its one environment.

What reaches TensorBoard: the method, the path, the query, the body (streamed), the end-to-end headers, and nothing
of the caller's credentials (Authorization, Cookie): the process on the node belongs to the environment's owner,
and an admin who opens it must not hand it their token. What comes back: TensorBoard's answer, streamed, without
hop-by-hop headers and Set-Cookie (it would set cookies on the gateway's origin), with the gateway's
Content-Security-Policy (everything from the gateway itself: TensorBoard's own policy also allows a Google font
host and perfetto).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import httpx
import msgspec
import structlog
from litestar import Controller, Request, Response, get, route
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import Cookie, State
from litestar.di import Provide
from litestar.enums import HttpMethod
from litestar.openapi import ResponseSpec
from litestar.params import QueryParameter
from litestar.response import Stream
from sqlalchemy import select

from gateway.access_cache import ACCESS_CACHE
from gateway.accounts import auth
from gateway.accounts.models import ApiToken, User
from gateway.actor import Actor
from gateway.db.base import utcnow
from gateway.db.request_sessions import close_request_sessions
from gateway.dependencies import BEARER, lookup_session
from gateway.environments.controller import EnvironmentId, Environments, provide_environments
from gateway.environments.service import EnvironmentService, tensorboard_prefix
from gateway.errors import Conflict, GatewayError, Unauthorized
from gateway.workspaces.deps import CACHED_ACCESS, WORKSPACE_DEPENDENCIES, WS_PATH, Access

log = structlog.get_logger("gateway.environments.tensorboard")

COOKIE = "remotegpu_tensorboard"
COOKIE_SECONDS = 12 * 3600
_COOKIE_LABEL = b"remotegpu tensorboard cookie v1"
_COOKIE = re.compile(r"v1\.([0-9a-f]{32})\.([0-9]{1,18})\.([0-9]{1,18})\.([0-9]{1,12})\.([0-9a-f]{64})")
ENTRY = "tensorboard_entry"
"""Route option: ``?token=`` is taken here (and only here)."""

TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=10.0)
"""Connecting to the node, then each read and write; a TensorBoard that takes longer is a 502."""
LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0)
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline' data:; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; frame-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
"""TensorBoard's own policy without its outside hosts (www.gstatic.com, ui.perfetto.dev): its page, which loads
nothing from elsewhere, cannot be made to (its bundle's Google Fonts stylesheet stays blocked, as TensorBoard's
policy blocks it too)."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "cookie", "forwarded"}
_NOT_RETURNED = HOP_BY_HOP | {"set-cookie", "content-security-policy", "content-security-policy-report-only"}


class TensorBoardUnavailable(GatewayError):
    status, kind, title = 502, "tensorboard-unavailable", "TensorBoard is not reachable"


# --- the cookie ---------------------------------------------------------------------------------------------


class CookieClaims(msgspec.Struct, frozen=True):
    environment_id: str
    user_id: int
    token_id: int
    expires: int
    """Unix seconds."""


def cookie_key(sessions_secret: str) -> bytes:
    """The cookies' HMAC key: derived from the sessions' secret under a label of its own."""
    return hmac.new(sessions_secret.encode(), _COOKIE_LABEL, hashlib.sha256).digest()


def _cookie_mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def make_cookie(key: bytes, claims: CookieClaims) -> str:
    payload = f"v1.{claims.environment_id}.{claims.user_id}.{claims.token_id}.{claims.expires}"
    return f"{payload}.{_cookie_mac(key, payload)}"


def read_cookie(key: bytes, value: str, environment_id: str, now: float) -> CookieClaims | None:
    """The claims of a cookie made with ``key`` for ``environment_id`` that has not expired; else None."""
    found = _COOKIE.fullmatch(value)
    if found is None:
        return None
    payload = value.rsplit(".", 1)[0]
    if not hmac.compare_digest(found[5], _cookie_mac(key, payload)):
        return None
    claims = CookieClaims(environment_id=found[1], user_id=int(found[2]), token_id=int(found[3]), expires=int(found[4]))
    if claims.environment_id != environment_id or claims.expires <= now:
        return None
    return claims


async def _cookie_actor(request: Request[Any, Any, State], claims: CookieClaims) -> Actor:
    """The cookie's user, while its API token is good (through the access cache, which forgets a revoked token
    or a disabled user at its commit)."""

    async def load() -> tuple[Actor, datetime | None]:
        row = (
            await lookup_session(request)().execute(
                select(ApiToken.expires_at, User.name, User.is_admin, User.posix_name)
                .join(User, User.id == ApiToken.user_id)
                .where(
                    ApiToken.id == claims.token_id,
                    ApiToken.user_id == claims.user_id,
                    ApiToken.revoked_at.is_(None),
                    User.deleted_at.is_(None),
                    User.disabled.is_(False),
                )
            )
        ).first()
        if row is None or (row[0] is not None and row[0] <= utcnow()):
            raise Unauthorized("the API token behind this TensorBoard cookie is no longer valid")
        expires_at, name, is_admin, posix_name = row
        actor = Actor(
            name=name, user_id=claims.user_id, is_admin=is_admin, token_id=claims.token_id, posix_name=posix_name
        )
        return actor, expires_at

    # not a token hash (64 hex digits): no collision with the bearer tokens' entries
    return await ACCESS_CACHE.actor(f"tensorboard:{claims.user_id}:{claims.token_id}", load)


async def provide_viewer(request: Request[Any, Any, State], environment_id: EnvironmentId) -> Actor:
    """The caller: a bearer token; on the entry route ``?token=`` instead; else the environment's cookie."""
    if request.route_handler.opt.get(ENTRY) and (token := request.query_params.get("token")) is not None:
        return await auth.authenticate(lookup_session(request), token.strip())
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        return await auth.authenticate(lookup_session(request), secret.strip())
    value = request.cookies.get(COOKIE)
    if value:
        environments: EnvironmentService = request.app.state.environments
        claims = read_cookie(cookie_key(await environments.key.get()), value, environment_id, time.time())
        if claims is None:
            raise Unauthorized(
                "invalid or expired TensorBoard cookie: open the TensorBoard URL with ?token=<API token>"
            )
        return await _cookie_actor(request, claims)
    raise Unauthorized(
        "a bearer token (Authorization: Bearer <token>) is required; a browser opens the TensorBoard URL "
        "with ?token=<API token> once"
    )


# --- the proxy ------------------------------------------------------------------------------------------------


class Target(msgspec.Struct, frozen=True):
    host: str
    port: int
    node: str | None
    prefix: str


async def _target(environments: EnvironmentService, access: Access, environment_id: str) -> Target:
    """Where the environment's TensorBoard listens; 404 if the caller may not see it, 409 if it runs none or is
    not running (a state, not a failure: nothing upstream to fail yet). The lookup's session is closed here, before
    the proxying starts."""
    async with environments.database.session(write=False) as session:
        row = await environments.row(session, access, environment_id)
    env, current = row.env, row.session
    derived = row.derived()
    wanted = "tensorboard" in env.spec.get("services", [])
    if derived.state == "running" and current is not None:
        port = current.services.get("tensorboard")
        if port is None or not current.host:
            what = ", ".join(sorted(current.services)) or "nothing"
            raise Conflict(
                f"session {current.number} of environment {env.name!r} runs no TensorBoard (it runs {what})"
                + (": restart it to get one" if wanted else ": add 'tensorboard' to its services and restart it"),
                field="services",
            )
        return Target(
            host=current.host,
            port=int(port),
            node=current.node,
            prefix=tensorboard_prefix(access.workspace.slug, env.id),
        )
    if not wanted:
        raise Conflict(
            f"environment {env.name!r} does not run TensorBoard: add 'tensorboard' to its services and start it",
            field="services",
        )
    why = f" ({derived.reason})" if derived.reason else ""
    raise Conflict(
        f"environment {env.name!r} is {derived.state}{why}: its TensorBoard answers while it runs", field="state"
    )


def proxy_client(state: State) -> httpx.AsyncClient:
    """The application's one pool of connections to TensorBoards (made on first use)."""
    client: httpx.AsyncClient | None = state.get("tensorboard_client")
    if client is None:
        client = httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS, follow_redirects=False, trust_env=False)
        state["tensorboard_client"] = client
    return client


async def close_proxy_client(state: State) -> None:
    client: httpx.AsyncClient | None = state.get("tensorboard_client")
    if client is not None:
        del state["tensorboard_client"]
        await client.aclose()


def forwarded_headers(headers: list[tuple[bytes, bytes]], *, scheme: str, host: str | None) -> list[tuple[str, str]]:
    """The request's end-to-end headers for TensorBoard: no hop-by-hop ones (nor those ``Connection`` names),
    no credentials, no client-made ``X-Forwarded-*``; the gateway's own ``X-Forwarded-Proto`` and ``-Host``."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    out = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in _NOT_FORWARDED or name in named or name.startswith("x-forwarded-"):
            continue
        out.append((name, raw_value.decode("latin-1")))
    out.append(("x-forwarded-proto", scheme))
    if host:
        out.append(("x-forwarded-host", host))
    return out


def returned_headers(headers: httpx.Headers, origin: str = "") -> dict[str, str]:
    """TensorBoard's response headers for the caller: no hop-by-hop ones, no cookies, the gateway's CSP, and a
    redirect to TensorBoard's own address (``origin``) made a path on the gateway."""
    named = {t.strip().lower() for v in headers.get_list("connection") for t in v.split(",")}
    out: dict[str, str] = {}
    for name, value in headers.multi_items():
        name = name.lower()
        if name in _NOT_RETURNED or name in named:
            continue
        if name == "location" and origin and value.startswith(origin + "/"):
            value = value[len(origin) :]
        out[name] = f"{out[name]}, {value}" if name in out else value
    out["content-security-policy"] = CSP
    out.setdefault("x-content-type-options", "nosniff")
    return out


def _raw_path(request: Request[Any, Any, State], prefix: str) -> bytes:
    """The path as sent (percent-escapes kept), with its query: TensorBoard's path under the same prefix."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    raw = raw.split(b"?", 1)[0]
    if not raw.startswith(prefix.encode()):  # a path the router matched after decoding: built from its parts
        raw = (prefix + quote(request.scope["path"][len(prefix) :])).encode()
    query = request.scope.get("query_string", b"")
    return raw + (b"?" + query if query else b"")


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:  # the answer has begun: all that is left is to cut it short
        log.info("tensorboard_stream_cut", error=f"{type(exc).__name__}: {exc}")
    finally:
        await upstream.aclose()


async def proxy(request: Request[Any, Any, State], target: Target) -> Response[Any]:
    """The request to TensorBoard and its answer back, both streamed."""
    await close_request_sessions(request.scope)  # no database connection held while TensorBoard answers
    headers = forwarded_headers(
        list(request.scope["headers"]), scheme=request.url.scheme, host=request.headers.get("host")
    )
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    client = proxy_client(request.app.state)
    upstream_request = client.build_request(
        request.method,
        httpx.URL(scheme="http", host=target.host, port=target.port, raw_path=_raw_path(request, target.prefix)),
        headers=headers,
        content=request.stream() if has_body else None,
    )
    where = f"on {target.node or target.host} (port {target.port})"
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.TimeoutException as exc:
        raise TensorBoardUnavailable(
            f"TensorBoard {where} did not answer in time ({type(exc).__name__}): it may be busy loading its logs; "
            "try again shortly"
        ) from None
    except httpx.HTTPError as exc:
        raise TensorBoardUnavailable(
            f"TensorBoard {where} does not answer ({type(exc).__name__}: {exc}): the session may be ending, "
            "or TensorBoard has stopped"
        ) from None
    return Stream(
        _relay(upstream),
        status_code=upstream.status_code,
        headers=returned_headers(upstream.headers, origin=str(upstream_request.url.copy_with(raw_path=b""))),
        media_type=upstream.headers.get("content-type") or "application/octet-stream",
        background=BackgroundTask(upstream.aclose),  # also when the caller went away before the end
    )


class TensorBoardController(Controller):
    """``{prefix}`` and everything under it; ``GET {prefix}/`` is TensorBoard's page."""

    path = WS_PATH + "/environments/{environment_id:str}/tensorboard"
    tags = ["environments"]
    security = BEARER
    dependencies = {
        **WORKSPACE_DEPENDENCIES,
        "actor": Provide(provide_viewer),
        "environments": Provide(provide_environments, sync_to_thread=False),
    }

    @get(
        "/",
        operation_id="openTensorBoard",
        summary="Open an environment's TensorBoard",
        media_type="text/html",
        opt={ENTRY: True},
        responses={
            303: ResponseSpec(
                None,
                description="?token= was good: to this page, with the cookie (Set-Cookie) that stands for it",
                media_type="text/plain",
            )
        },
    )
    async def entry(
        self,
        request: Request[Any, Any, State],
        access: Access,
        environments: Environments,
        environment_id: EnvironmentId,
        token: Annotated[
            str | None,
            QueryParameter(
                description="an API token, for a browser: checked, then a 303 to this page with a cookie for it "
                "(HttpOnly, SameSite=Strict, this path only, 12 h)",
                max_length=128,
            ),
        ] = None,
    ) -> Response[Any]:
        """TensorBoard's page, as the environment's owner or a workspace admin (others: 404).

        With ``Authorization: Bearer`` or the cookie ``?token=`` sets; 409 if the environment runs no TensorBoard
        or is not running, 502 if it runs and TensorBoard does not answer.
        """
        if token is not None:
            return await _issue_cookie(request, access, environments, environment_id)
        return await proxy(request, await _target(environments, access, environment_id))

    @route(
        "/{path:path}",
        http_method=[
            HttpMethod.GET,
            HttpMethod.HEAD,
            HttpMethod.POST,
            HttpMethod.PUT,
            HttpMethod.PATCH,
            HttpMethod.DELETE,
        ],
        include_in_schema=False,
        opt={CACHED_ACCESS: True},  # a read snapshot: nothing here writes to the gateway's database
    )
    async def anything(
        self,
        request: Request[Any, Any, State],
        access: Access,
        environments: Environments,
        environment_id: EnvironmentId,
    ) -> Response[Any]:
        """TensorBoard's assets and data (``data/runs``, ``data/plugin/...``: some of them POSTs)."""
        return await proxy(request, await _target(environments, access, environment_id))


async def _issue_cookie(
    request: Request[Any, Any, State], access: Access, environments: EnvironmentService, environment_id: str
) -> Response[Any]:
    """``?token=`` was good: a cookie for this environment, if the caller may see it, and 303 to the page."""
    async with environments.database.session(write=False) as session:
        row = await environments.row(session, access, environment_id)
    actor = access.actor
    if actor.user_id is None or actor.token_id is None:
        raise Unauthorized("a user's API token is required")
    prefix = tensorboard_prefix(access.workspace.slug, row.env.id)
    claims = CookieClaims(
        environment_id=row.env.id,
        user_id=actor.user_id,
        token_id=actor.token_id,
        expires=int(time.time()) + COOKIE_SECONDS,
    )
    settings = request.app.state.settings
    secure = request.url.scheme == "https" or settings.gateway_url.startswith("https://")
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    location = prefix + "/" + ("?" + urlencode(rest) if rest else "")
    cookie = Cookie(
        key=COOKIE,
        value=make_cookie(cookie_key(await environments.key.get()), claims),
        path=prefix,
        max_age=COOKIE_SECONDS,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    log.info("tensorboard_cookie", environment=row.env.id, user=actor.name, role=_role(access))
    return Response(
        content=b"",
        status_code=303,
        headers={"Location": location, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        cookies=[cookie],
        media_type="text/plain",
    )


def _role(access: Access) -> str:
    return access.role.value if access.role is not None else "platform admin"
