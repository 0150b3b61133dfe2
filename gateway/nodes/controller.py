"""``/api/v1/nodes``: the GPU nodes, for platform admins (gateway.nodes.service), and the two routes a node being
bootstrapped calls without a user's token: the script, and the exchange of its one-time token."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any, cast

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter, QueryParameter

from gateway.db.session import Database
from gateway.dependencies import ADMIN_DEPENDENCIES, BEARER, AppSettings, CurrentActor, DbSession
from gateway.nodes import service
from gateway.nodes.salt_api import SaltApi
from gateway.nodes.schemas import (
    NODE_NAME,
    BootstrapCommandOut,
    BootstrapExchange,
    BootstrapOut,
    DrainBody,
    NodeCreate,
    NodeCreated,
    NodeOut,
    NodesOut,
    ProvisionCreate,
    ProvisionManyCreate,
    ResumeBody,
    RunOut,
    StateResultOut,
)
from slurm.client import SlurmClient

NameParam = Annotated[str, PathParameter(pattern=f"^{NODE_NAME}$", max_length=63, description="the node's name")]
RunIdParam = Annotated[int, PathParameter(ge=1, le=2**31 - 1)]
NodeQuery = Annotated[
    str | None, QueryParameter(pattern=f"^{NODE_NAME}$", max_length=63, description="only this node's")
]
Limit = Annotated[int, QueryParameter(ge=1, le=500)]
Offset = Annotated[int, QueryParameter(ge=0, le=10**9, schema_extra={"minimum": 0})]


def _salt(state: State) -> SaltApi | None:
    salt: SaltApi | None = state.get("salt")
    return salt


def _slurm(state: State) -> SlurmClient:
    slurm: SlurmClient = state.jobs.slurm
    return slurm


class NodeController(Controller):
    """GPU nodes: register, list beside Slurm's view, provision through Salt, drain and resume, remove."""

    path = "/api/v1/nodes"
    tags = ["nodes"]
    security = BEARER
    dependencies = ADMIN_DEPENDENCIES

    @get("/")
    async def list_nodes(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        settings: AppSettings,
        request: Request[object, object, State],
    ) -> Response[NodesOut]:
        """Every node with Slurm's state, GPUs and reason from the poller's last snapshot (no Slurm call), the
        gateway's jobs running there, and its last provision run."""
        del admin
        body = await service.list_nodes_json(request.app.state.database, db_session, settings)
        return Response(cast(Any, body), media_type=MediaType.JSON)

    @post("/")
    async def register_node(
        self, db_session: DbSession, admin: CurrentActor, settings: AppSettings, data: JSONBody[NodeCreate]
    ) -> NodeCreated:
        """Register a node; the answer carries a one-time bootstrap token (5 minutes) and the command to run on
        the node with it."""
        node, token = await service.register(db_session, admin, settings, data)
        return NodeCreated(node=node, bootstrap=token)

    @get("/{name:str}")
    async def get_node(self, db_session: DbSession, admin: CurrentActor, name: NameParam) -> NodeOut:
        del admin
        return await service.get_node(db_session, name)

    @delete("/{name:str}", status_code=204)
    async def remove_node(
        self, db_session: DbSession, admin: CurrentActor, request: Request[object, object, State], name: NameParam
    ) -> None:
        """Forget the node (its runs stay) and delete its minion key from the master."""
        await service.remove(db_session, admin, _salt(request.app.state), name)

    @get("/{name:str}/bootstrap-command")
    async def bootstrap_command(
        self, db_session: DbSession, admin: CurrentActor, settings: AppSettings, name: NameParam
    ) -> BootstrapCommandOut:
        """A new one-time token for the node (good for 5 minutes), in the shell command to run on it as root."""
        return await service.new_bootstrap_command(db_session, admin, settings, name)

    @post("/{name:str}/provision")
    async def provision_node(
        self, db_session: DbSession, admin: CurrentActor, name: NameParam, data: JSONBody[ProvisionCreate]
    ) -> RunOut:
        """Queue a run of the chosen states on this node: a dry run (``test=True``) unless ``apply`` is true."""
        run = await service.provision(db_session, admin, data, [name])
        return await service.run_out(db_session, run.id)

    @post("/provision")
    async def provision_nodes(
        self, db_session: DbSession, admin: CurrentActor, data: JSONBody[ProvisionManyCreate]
    ) -> RunOut:
        """Queue one run on several nodes (``nodes``; default every node), one Salt job per node, all at once."""
        run = await service.provision(db_session, admin, data, data.nodes)
        return await service.run_out(db_session, run.id)

    @get("/{name:str}/runs")
    async def node_runs(
        self, db_session: DbSession, admin: CurrentActor, name: NameParam, limit: Limit = 20, offset: Offset = 0
    ) -> list[RunOut]:
        del admin
        return await service.list_runs(db_session, name, limit, offset)

    @get("/runs")
    async def list_runs(
        self, db_session: DbSession, admin: CurrentActor, node: NodeQuery = None, limit: Limit = 20, offset: Offset = 0
    ) -> list[RunOut]:
        """Provision runs, newest first, with each node's progress."""
        del admin
        return await service.list_runs(db_session, node, limit, offset)

    @get("/runs/{run_id:int}")
    async def get_run(self, db_session: DbSession, admin: CurrentActor, run_id: RunIdParam) -> RunOut:
        del admin
        return await service.run_out(db_session, run_id)

    @get("/runs/{run_id:int}/results")
    async def run_results(
        self, db_session: DbSession, admin: CurrentActor, run_id: RunIdParam, node: NodeQuery = None
    ) -> list[StateResultOut]:
        """Each state's result per node (id, SLS, result, changed, comment, duration) in the order Salt ran them."""
        del admin
        return await service.run_results(db_session, run_id, node)

    @post("/{name:str}/drain", status_code=200)
    async def drain_node(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        request: Request[object, object, State],
        name: NameParam,
        data: JSONBody[DrainBody],
    ) -> NodeOut:
        """``scontrol update state=drain reason=...``: running jobs finish, no new one starts."""
        state = request.app.state
        database: Database = state.database
        return await service.set_slurm_state(db_session, database, admin, _slurm(state), name, "drain", data.reason)

    @post("/{name:str}/resume", status_code=200)
    async def resume_node(
        self,
        db_session: DbSession,
        admin: CurrentActor,
        request: Request[object, object, State],
        name: NameParam,
        data: JSONBody[ResumeBody | None] = None,
    ) -> NodeOut:
        """``scontrol update state=resume``: the node takes work again."""
        state = request.app.state
        database: Database = state.database
        reason = data.reason if data is not None else None
        return await service.set_slurm_state(db_session, database, admin, _slurm(state), name, "resume", reason)


@cache
def _script() -> str:
    return (Path(__file__).parent / "bootstrap.sh").read_text()


class NodeBootstrapController(Controller):
    """What a new node calls before it has any credentials: the script, then its one-time token's exchange."""

    path = "/api/v1/nodes"
    tags = ["nodes"]
    security: list[dict[str, list[str]]] = []

    @get("/bootstrap.sh", sync_to_thread=False, media_type="text/x-shellscript")
    def bootstrap_script(self) -> str:
        """The shell script the bootstrap command runs (no secret in it)."""
        return _script()

    @post("/bootstrap", status_code=200)
    async def exchange_token(
        self, request: Request[object, object, State], settings: AppSettings, data: JSONBody[BootstrapExchange]
    ) -> Response[BootstrapOut]:
        """Spend a node's one-time token (once; expired, replayed, tampered or another node's: 401, audited) for
        its pre-accepted minion key pair, the master's public key and fingerprint, and its minion config."""
        state = request.app.state
        answer = await service.exchange(state.database, settings, _salt(state), data)
        return Response(answer, headers={"Cache-Control": "no-store"})
