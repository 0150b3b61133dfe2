"""A session's callback token: what only its Slurm job has, to tell the gateway where its services listen.

``<job id>.<HMAC-SHA256(key, job id)>``, the key being this gateway instance's secret (in the database, made on
first use). Nothing of it is stored: it is made again for each sbatch of the session (recovery included) and
given only to that job (slurm.client.Submission.secrets: never on a command line). It is good for one call
(the session's ``reported_at`` spends it) and only while the session's job has not ended.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.db.session import Database
from gateway.jobs.models import GatewayInstance
from gateway.jobs.origin import instance_id

VARIABLE = "REMOTEGPU_SESSION_TOKEN"
_TOKEN = re.compile(r"([0-9a-f]{32})\.([0-9a-f]{64})")


def _sign(key: str, job_id: str, purpose: str) -> str:
    return hmac.new(key.encode(), f"{purpose}:{job_id}".encode(), hashlib.sha256).hexdigest()


def make(key: str, job_id: str, purpose: str = "session") -> str:
    """``purpose``: what the token is good for (``session``: the callback; ``stage-in``: reading the job's
    datasets); one purpose's token is worth nothing for another."""
    return f"{job_id}.{_sign(key, job_id, purpose)}"


def verified_job_id(key: str, token: str, purpose: str = "session") -> str | None:
    """The job id a token was made for, if it was made with ``key`` for ``purpose``; else None."""
    found = _TOKEN.fullmatch(token)
    if found is None or not hmac.compare_digest(found[2], _sign(key, found[1], purpose)):
        return None
    return found[1]


def _key(session: Session) -> str:
    """Unit of work: the instance's key, made if it has none (two processes racing agree: set only if null)."""
    found = session.scalar(select(GatewayInstance.secret))
    if found is None:
        session.execute(
            update(GatewayInstance).where(GatewayInstance.secret.is_(None)).values(secret=secrets.token_hex(32))
        )
        found = session.scalar(select(GatewayInstance.secret))
    assert found is not None
    return str(found)


class SessionKey:
    """The key, read once per process."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._value: str | None = None

    async def get(self) -> str:
        if self._value is None:
            await instance_id(self.database)  # the row the key lives in
            self._value = str(await self.database.run(_key))
        return self._value
