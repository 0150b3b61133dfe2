"""Application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders, State
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.plugins.prometheus import PrometheusController
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

from gateway.access_cache import ACCESS_CACHE
from gateway.accounts.controller import AuthController, MeController, UserController
from gateway.accounts.ssh_keys import SshKeyController
from gateway.audit.controller import AuditController, WorkspaceAuditController
from gateway.billing.controller import BillingController, PriceController
from gateway.cluster.controller import ClusterController
from gateway.config import Settings, load_settings
from gateway.datasets.controller import StageInController, StorageSourceController, dataset_controllers
from gateway.datasets.stagein import StageInService
from gateway.datasets.sync_controller import SYNC_CONTROLLERS
from gateway.db.session import Database
from gateway.dependencies import APP_DEPENDENCIES
from gateway.environments.controller import EnvironmentController, SessionCallbackController
from gateway.environments.ports import Relay
from gateway.environments.service import EnvironmentService
from gateway.environments.tensorboard import TensorBoardController, close_proxy_client
from gateway.errors import EXCEPTION_HANDLERS
from gateway.health import healthz, readyz
from gateway.jobs.controller import JobController
from gateway.jobs.poller import Poller, recover_at_startup
from gateway.jobs.service import JobService
from gateway.nodes.controller import NodeBootstrapController, NodeController
from gateway.nodes.service import salt_api
from gateway.observability import RequestContextMiddleware
from gateway.openapi import docs_asset, openapi_config
from gateway.slurm_client import make_slurm_client
from gateway.workspaces.controller import MemberController, QuotaController, WorkspaceController
from slurm.client import SlurmClient

LOGIN_PATH = "/api/v1/auth/tokens"
BOOTSTRAP_PATH = "/api/v1/nodes/bootstrap"
"""Nodes' one-time token exchanges: unauthenticated, so throttled like password logins."""
CONTROLLERS = [
    AuthController,
    MeController,
    SshKeyController,
    UserController,
    WorkspaceController,
    MemberController,
    QuotaController,
    AuditController,
    WorkspaceAuditController,
    JobController,
    EnvironmentController,
    SessionCallbackController,
    TensorBoardController,
    ClusterController,
    PriceController,
    StorageSourceController,
    StageInController,
    *SYNC_CONTROLLERS,
    BillingController,
    NodeController,
    NodeBootstrapController,
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

    jobs = JobService(db, slurm, settings)
    environments = EnvironmentService(db, settings, jobs)
    stage_in = StageInService(db, settings, jobs)
    salt = salt_api(settings)  # None without salt_api_url: nodes are listed and drained, not provisioned

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # What a crash of the last gateway left half-submitted is settled now, not only by a worker. (Apps given
        # a Slurm client, i.e. tests, poll when they choose.)
        poller = Poller(db, slurm, jobs)
        recovery = (
            asyncio.create_task(recover_at_startup(poller, settings.poll_interval_seconds)) if owns_slurm else None
        )
        # the environments' port mappings listen here (a served gateway; tests given a Slurm client run their own)
        relay = Relay(db, settings) if settings.relay_enabled and owns_slurm else None
        if relay is not None:
            await relay.start()
            environments.mapped.append(relay.reconcile)
        try:
            yield
        finally:
            if relay is not None:
                await relay.stop()
            if recovery is not None:
                recovery.cancel()
                with suppress(asyncio.CancelledError):
                    await recovery
            await close_proxy_client(app.state)
            if salt is not None:
                await salt.close()
            if owns_slurm:
                await slurm.close()
            if owns_database:
                await db.dispose()

    # Slow down password and token guessing: only the login and the nodes' bootstrap exchange are throttled (every
    # other path bypasses this).
    login_throttle = RateLimitConfig(
        rate_limit=("minute", settings.login_attempts_per_minute),
        exclude=[r"^/(?!(?:api/v1/auth/tokens|api/v1/nodes/bootstrap)/?$)."],
        check_throttle_handler=lambda request: (
            request.method == "POST" and request.url.path.rstrip("/") in (LOGIN_PATH, BOOTSTRAP_PATH)
        ),
    )
    allow: dict[str, str] = {}
    app = Litestar(
        route_handlers=[healthz, readyz, MetricsController, docs_asset, *CONTROLLERS, *dataset_controllers(settings)],
        before_send=[partial(_complete_allow, allow)],
        dependencies=APP_DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[login_throttle.middleware],
        lifespan=[lifespan],
        state=State(
            {
                "settings": settings,
                "database": db,
                "jobs": jobs,
                "environments": environments,
                "stage_in": stage_in,
                "salt": salt,
            }
        ),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        openapi_config=openapi_config(),
    )
    # Around the whole application, not as route middleware: the router's own answers (unknown path 404, 405)
    # and refusals raised by route middleware (the login throttle's 429) are rendered by Litestar's outermost
    # exception handler, which route middleware never sees; they too get a request id, a log line and a count.
    app.asgi_handler = RequestContextMiddleware(app.asgi_handler)
    allow.update({r.path_format: ", ".join(sorted(r.methods)) for r in app.routes if isinstance(r, HTTPRoute)})
    return app


async def _complete_allow(allow: dict[str, str], message: Message, scope: Scope) -> None:
    """OPTIONS answers name every method of the path. (Litestar's OPTIONS handler keeps the methods of the first
    controller that registered the path, e.g. ``POST`` but not ``GET`` for a list-and-create path.)"""
    if message["type"] == "http.response.start" and scope.get("method") == "OPTIONS":
        methods = allow.get(str(scope.get("path_template")))
        if methods and message["status"] == 204:
            MutableScopeHeaders.from_message(message)["allow"] = methods
