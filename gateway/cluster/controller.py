from __future__ import annotations

from litestar import Controller, get

from gateway.cluster import service
from gateway.cluster.schemas import ClusterOut
from gateway.dependencies import BEARER, AppSettings, CurrentActor, DbSession


class ClusterController(Controller):
    path = "/api/v1/cluster"
    tags = ["cluster"]
    security = BEARER

    @get("/")
    async def get_cluster(self, db_session: DbSession, actor: CurrentActor, settings: AppSettings) -> ClusterOut:
        """Partitions, GPU types, nodes and free counts, from the poller's last snapshot (never a Slurm call):
        ``stale`` when it is older than three poll intervals or the last read failed."""
        del actor  # any authenticated user
        return await service.cluster(db_session, settings.poll_interval_seconds)
