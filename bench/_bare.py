"""The baseline: a bare Litestar route, no database, no middleware."""

from litestar import Litestar, get


@get("/bare")
async def bare() -> dict[str, str]:
    return {"slug": "bench-ws", "name": "Bench", "status": "active"}


app = Litestar([bare], logging_config=None)
