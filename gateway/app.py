"""Application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusController

from gateway import __version__
from gateway.access_cache import ACCESS_CACHE
from gateway.audit.controller import AuditController, WorkspaceAuditController
from gateway.auth.controller import AuthController, MeController
from gateway.config import Settings, load_settings
from gateway.db.session import Database
from gateway.dependencies import APP_DEPENDENCIES
from gateway.errors import EXCEPTION_HANDLERS
from gateway.health import healthz, readyz
from gateway.jobs.controller import JobController
from gateway.jobs.service import JobService
from gateway.observability import RequestContextMiddleware
from gateway.slurm_client import make_slurm_client
from gateway.users.controller import UserController
from gateway.workspaces.controller import MemberController, QuotaController, WorkspaceController
from slurm.client import SlurmClient

LOGIN_PATH = "/api/v1/auth/tokens"
CONTROLLERS = [
    AuthController,
    MeController,
    UserController,
    WorkspaceController,
    MemberController,
    QuotaController,
    AuditController,
    WorkspaceAuditController,
    JobController,
]


class MetricsController(PrometheusController):
    path = "/metrics"
    include_in_schema = False


def create_app(
    settings: Settings | None = None, database: Database | None = None, slurm: SlurmClient | None = None
) -> Litestar:
    """Build the gateway. ``database`` and ``slurm`` let tests share them; otherwise made from settings."""
    settings = settings or load_settings()
    owns_slurm = slurm is None
    slurm = slurm or make_slurm_client(settings)
    ACCESS_CACHE.configure(settings.access_cache_seconds)
    owns_database = database is None
    db = database or Database(settings.database_url, pool_size=settings.db_pool_size, echo=settings.db_echo)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_slurm:
                await slurm.close()
            if owns_database:
                await db.dispose()

    # Slow down password guessing: only the login route is throttled (every other path bypasses this).
    login_throttle = RateLimitConfig(
        rate_limit=("minute", settings.login_attempts_per_minute),
        exclude=[r"^/(?!api/v1/auth/tokens/?$)."],
        check_throttle_handler=lambda request: request.method == "POST" and request.url.path.startswith(LOGIN_PATH),
    )
    app = Litestar(
        route_handlers=[healthz, readyz, MetricsController, *CONTROLLERS],
        dependencies=APP_DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[login_throttle.middleware],
        lifespan=[lifespan],
        state=State({"settings": settings, "database": db, "jobs": JobService(db, slurm, settings)}),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="RemoteGPU Gateway",
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/"), ScalarRenderPlugin()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http", scheme="bearer", description="token from POST /api/v1/auth/tokens"
                    )
                }
            ),
        ),
    )
    # Around the whole application, not as route middleware: the router's own answers (unknown path 404, 405)
    # and refusals raised by route middleware (the login throttle's 429) are rendered by Litestar's outermost
    # exception handler, which route middleware never sees; they too get a request id, a log line and a count.
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)
    return app
