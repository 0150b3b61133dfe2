"""Port mapping allocation and release on SQLite and PostgreSQL: no two live mappings on one public port, whatever
the number of threads and processes allocating at once; exhaustion; release, events, re-mapping; idle release."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing import get_context

import msgspec
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gateway.accounts.models import User
from gateway.db.base import utcnow
from gateway.db.session import WRITE_OPTION, Database, create_thread_engine
from gateway.environments.models import Environment, EnvironmentEvent, PortMapping
from gateway.environments.ports import (
    ALLOCATION_CONFLICTS,
    PORT_RELEASED,
    PortsExhausted,
    map_service,
    port_is_free,
    release_for_job,
    release_idle,
    release_idle_mappings,
)
from gateway.jobs.models import ENVIRONMENT, TrainingJob
from gateway.workspaces.models import Workspace


class Env(msgspec.Struct, frozen=True):
    environment_id: str
    job_id: str


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive ports nothing on this host listens on (outside the ephemeral range)."""
    for _ in range(100):
        low = random.randrange(20000, 32000 - size)
        if all(port_is_free(port) for port in range(low, low + size)):
            return low, low + size - 1
    raise RuntimeError("no free port range")


def _environment(session: Session, name: str) -> Env:
    user = session.scalar(select(User).where(User.name == "porter"))
    if user is None:
        user = User(name="porter", posix_name="porter")
        session.add(user)
        session.flush()
    workspace = session.scalar(select(Workspace).where(Workspace.slug == "ports"))
    if workspace is None:
        workspace = Workspace(slug="ports", name="Ports", slurm_account="ports", currency="EUR")
        session.add(workspace)
        session.flush()
    environment = Environment(workspace_id=workspace.id, user_id=user.id, name=name, spec={})
    session.add(environment)
    session.flush()
    return Env(environment_id=environment.id, job_id=_session_job(session, environment))


def _session_job(session: Session, environment: Environment) -> str:
    job = TrainingJob(
        workspace_id=environment.workspace_id,
        user_id=environment.user_id,
        name=environment.name,
        kind=ENVIRONMENT,
        spec={},
        script="",
        work_dir="/tmp",
        stdout_path="/tmp/out",
    )
    session.add(job)
    session.flush()
    environment.current_job_id = job.id
    return job.id


async def make_environment(database: Database, name: str = "dev") -> Env:
    return await database.run(lambda s: _environment(s, name))


async def new_session(database: Database, environment_id: str) -> str:
    """A second start of the environment: a new job."""
    return await database.run(lambda s: _session_job(s, s.get_one(Environment, environment_id)))


async def map_one(
    database: Database,
    env: Env,
    port_range: tuple[int, int],
    *,
    service: str = "ssh",
    node_port: int = 40022,
    hours: int = 48,
    job_id: str | None = None,
) -> PortMapping:
    return await database.run(
        lambda s: map_service(
            s,
            environment_id=env.environment_id,
            job_id=job_id or env.job_id,
            service=service,
            node="node1",
            host="127.0.0.1",
            node_port=node_port,
            auto_release_hours=hours,
            port_range=port_range,
        )
    )


def _live_ports(session: Session) -> list[int]:
    return list(session.scalars(select(PortMapping.public_port).where(PortMapping.released_at.is_(None))))


async def test_a_mapping_then_the_same_callback_again(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    port_range = free_range(20)
    ssh = await map_one(clean_database, env, port_range)
    assert port_range[0] <= ssh.public_port <= port_range[1]
    assert (ssh.host, ssh.node_port, ssh.auto_release_hours, ssh.released_at) == ("127.0.0.1", 40022, 48, None)
    again = await map_one(clean_database, env, port_range, node_port=40023)  # the supervisor called back again
    assert (again.id, again.public_port, again.node_port) == (ssh.id, ssh.public_port, 40023)
    board = await map_one(clean_database, env, port_range, service="tensorboard")
    assert board.public_port != ssh.public_port
    assert sorted(await clean_database.run(_live_ports)) == sorted([ssh.public_port, board.public_port])


async def test_a_port_something_listens_on_is_skipped(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    low, high = free_range(2)
    with listening(low):
        mapping = await map_one(clean_database, env, (low, high))
        assert mapping.public_port == high
        with pytest.raises(PortsExhausted):
            await map_one(clean_database, env, (low, high), service="tensorboard")


@contextmanager
def listening(port: int) -> Iterator[None]:
    """Another program listening on ``port`` of 127.0.0.1 for the block's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


async def test_exhausted_range_is_a_503_and_the_transaction_goes_on(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    port_range = free_range(3)
    ports = {(await map_one(clean_database, env, port_range, service=f"s{i}")).public_port for i in range(3)}
    assert ports == set(range(port_range[0], port_range[1] + 1))

    def refused_then_more(session: Session) -> int:
        with pytest.raises(PortsExhausted) as caught:
            map_service(
                session,
                environment_id=env.environment_id,
                job_id=env.job_id,
                service="s3",
                node=None,
                host="127.0.0.1",
                node_port=1,
                auto_release_hours=48,
                port_range=port_range,
            )
        assert caught.value.status == 503 and f"{port_range[0]}-{port_range[1]}" in caught.value.detail
        session.add(EnvironmentEvent(environment_id=env.environment_id, kind="note", message="after the 503"))
        session.flush()
        return len(_live_ports(session))

    assert await clean_database.run(refused_then_more) == 3
    notes = await clean_database.run(
        lambda s: s.scalars(select(EnvironmentEvent.message).where(EnvironmentEvent.kind == "note")).all()
    )
    assert notes == ["after the 503"]


async def test_concurrent_allocations_in_threads_never_share_a_port(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    port_range = free_range(24)
    results = await asyncio.gather(
        *(map_one(clean_database, env, port_range, service=f"s{i}") for i in range(30)), return_exceptions=True
    )
    mapped = [r for r in results if isinstance(r, PortMapping)]
    refused = [r for r in results if isinstance(r, PortsExhausted)]
    assert len(mapped) == 24 and len(refused) == 6, [r for r in results if isinstance(r, BaseException)]
    assert len({m.public_port for m in mapped}) == 24
    assert len(set(await clean_database.run(_live_ports))) == 24


def _warm_up() -> None:
    time.sleep(0.5)  # while the others start: each process has one task


def _allocate_in_process(url: str, env: Env, services: list[str], port_range: tuple[int, int], at: float) -> list[int]:
    """One process's allocations, on its own connection, started with the others at ``at``."""
    engine = create_thread_engine(url).execution_options(**{WRITE_OPTION: True})
    ports = []
    time.sleep(max(0.0, at - time.time()))
    try:
        for service in services:
            with Session(engine) as session:
                try:
                    mapping = map_service(
                        session,
                        environment_id=env.environment_id,
                        job_id=env.job_id,
                        service=service,
                        node="node1",
                        host="127.0.0.1",
                        node_port=22,
                        auto_release_hours=48,
                        port_range=port_range,
                    )
                except PortsExhausted:
                    ports.append(-1)
                    continue
                session.commit()
                ports.append(mapping.public_port)
    finally:
        engine.dispose()
    return ports


async def test_concurrent_allocations_in_processes_never_share_a_port(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    port_range = free_range(36)
    processes = 4
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        # every process started (and its imports done) before the clock they all wait for
        await asyncio.gather(*(loop.run_in_executor(pool, _warm_up) for _ in range(processes)))
        at = time.time() + 0.3
        futures = [
            loop.run_in_executor(
                pool,
                _allocate_in_process,
                clean_database.url,
                env,
                [f"p{p}s{i}" for i in range(10)],
                port_range,
                at,
            )
            for p in range(processes)
        ]
        results = [port for ports in await asyncio.gather(*futures) for port in ports]
    mapped = [port for port in results if port > 0]
    assert len(mapped) == 36 and results.count(-1) == 4
    assert len(set(mapped)) == 36
    assert sorted(await clean_database.run(_live_ports)) == sorted(mapped)


async def test_a_race_lost_on_the_unique_index_tries_the_next_port(clean_database: Database) -> None:
    """Two transactions at once on a one-port range: the second sees no live mapping (the first has not committed),
    inserts the same port, and on PostgreSQL waits on the index, then loses: PortsExhausted in its SAVEPOINT, its
    transaction still usable. (SQLite's write lock makes the second wait at BEGIN: it sees the port taken.)"""
    env = await make_environment(clean_database)
    port_range = free_range(1)
    engine = create_thread_engine(clean_database.url).execution_options(**{WRITE_OPTION: True})
    first_inserted = threading.Event()
    commit_first = threading.Event()
    outcome: dict[str, object] = {}

    def allocate(name: str, service: str) -> None:
        with Session(engine) as session:
            try:
                mapping = map_service(
                    session,
                    environment_id=env.environment_id,
                    job_id=env.job_id,
                    service=service,
                    node=None,
                    host="127.0.0.1",
                    node_port=22,
                    auto_release_hours=48,
                    port_range=port_range,
                    check_host=None,
                )
                outcome[name] = mapping.public_port
            except PortsExhausted as exc:
                outcome[name] = exc
            if name == "first":
                first_inserted.set()
                commit_first.wait(10)
            session.add(EnvironmentEvent(environment_id=env.environment_id, kind="note", message=name))
            session.commit()

    conflicts = ALLOCATION_CONFLICTS._value.get()
    try:
        first = threading.Thread(target=allocate, args=("first", "a"))
        first.start()
        assert first_inserted.wait(10)
        second = threading.Thread(target=allocate, args=("second", "b"))
        second.start()
        await asyncio.sleep(0.5)  # the second is waiting now (on the index, or on SQLite's lock)
        assert "second" not in outcome
        commit_first.set()
        first.join(10)
        second.join(10)
    finally:
        commit_first.set()
        engine.dispose()
    assert outcome["first"] == port_range[0]
    assert isinstance(outcome["second"], PortsExhausted)
    if clean_database.backend == "postgresql":
        assert ALLOCATION_CONFLICTS._value.get() == conflicts + 1
    notes = await clean_database.run(
        lambda s: sorted(
            m or "" for m in s.scalars(select(EnvironmentEvent.message).where(EnvironmentEvent.kind == "note"))
        )
    )
    assert notes == ["first", "second"]  # the loser's transaction committed its other work


async def test_session_end_releases_with_events_and_the_port_can_be_mapped_again(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    other = await make_environment(clean_database, "other")
    port_range = free_range(10)
    ssh = await map_one(clean_database, env, port_range)
    board = await map_one(clean_database, env, port_range, service="tensorboard")

    released = await clean_database.run(lambda s: release_for_job(s, env.job_id, "session ended"))
    assert sorted(m.id for m in released) == sorted([ssh.id, board.id])
    assert all(m.released_at is not None and m.release_reason == "session ended" for m in released)
    assert await clean_database.run(lambda s: release_for_job(s, env.job_id, "again")) == []
    assert await clean_database.run(_live_ports) == []
    events = await clean_database.run(
        lambda s: s.scalars(select(EnvironmentEvent).where(EnvironmentEvent.kind == PORT_RELEASED)).all()
    )
    assert sorted(e.message or "" for e in events) == sorted(
        [
            f"Port {ssh.public_port} (ssh) released: session ended",
            f"Port {board.public_port} (tensorboard) released: session ended",
        ]
    )
    assert {(e.environment_id, e.job_id) for e in events} == {(env.environment_id, env.job_id)}

    # Another environment does not get a port just released while others are free; the environment's next
    # session gets its own port back (the same ssh -p line, the same host key).
    others = [(await map_one(clean_database, other, port_range, service=f"s{i}")).public_port for i in range(8)]
    assert ssh.public_port not in others and board.public_port not in others
    next_job = await new_session(clean_database, env.environment_id)
    again = await map_one(clean_database, env, port_range, job_id=next_job)
    assert again.public_port == ssh.public_port and again.id != ssh.id and again.job_id == next_job


async def test_release_returns_rows_as_released_to_a_session_that_loaded_them(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    await map_one(clean_database, env, free_range(3))

    def load_then_release(session: Session) -> list[PortMapping]:
        loaded = session.scalars(select(PortMapping)).all()
        assert loaded[0].released_at is None
        return release_for_job(session, env.job_id, "stopped")

    (released,) = await clean_database.run(load_then_release)
    assert released.released_at is not None and released.release_reason == "stopped"


async def test_idle_mappings_are_released_after_their_hours(clean_database: Database) -> None:
    env = await make_environment(clean_database)
    port_range = free_range(5)
    short = await map_one(clean_database, env, port_range, service="ssh", hours=1)
    default = await map_one(clean_database, env, port_range, service="tensorboard")
    now = utcnow()
    assert await clean_database.run(lambda s: release_idle(s, now)) == []
    assert await release_idle_mappings(clean_database, now) == 0

    later = now + timedelta(hours=1, minutes=1)
    (released,) = await clean_database.run(lambda s: release_idle(s, later))
    assert released.id == short.id and released.release_reason == "no traffic for 1 hour"
    assert released.released_at == later

    # traffic (the relay's write) keeps the other one: 47 h after its last access it stays
    await clean_database.run(
        lambda s: s.execute(
            update(PortMapping).where(PortMapping.id == default.id).values(last_accessed_at=now + timedelta(hours=2))
        )
    )
    assert await release_idle_mappings(clean_database, now + timedelta(hours=49)) == 0
    assert await release_idle_mappings(clean_database, now + timedelta(hours=50, minutes=1)) == 1
    assert await clean_database.run(_live_ports) == []
    kinds = await clean_database.run(
        lambda s: s.scalar(
            select(func.count()).select_from(EnvironmentEvent).where(EnvironmentEvent.kind == PORT_RELEASED)
        )
    )
    assert kinds == 2

    # asked for again: mapped again (the same port, nobody else took it)
    again = await map_one(clean_database, env, port_range, service="ssh", hours=1)
    assert again.public_port == short.public_port and again.released_at is None
