"""Port mappings: public ports of the gateway host relayed over TCP to the services of environment sessions.

Two halves:

* **Allocation** (``map_service``, ``release_for_job``, ``release_idle``): synchronous units of work for
  ``Database.run``. No two live mappings share a public port, across processes and restarts, because the partial
  unique index ``uq_port_mappings_public_port_live`` says so; an insert that loses a race gets an IntegrityError in
  its own SAVEPOINT and tries the next port, so the caller's transaction goes on.
* **The relay** (``Relay``): in the ``remotegpu serve`` process, one listening socket per live mapping, kept in
  step with the database every couple of seconds; it relays bytes both ways (below) and writes
  ``last_accessed_at`` from the traffic it saw at most once a minute.

Which port a new mapping gets: the port the same environment's service had last, when it is free (a restarted
environment keeps its ``ssh -p`` line, and its own host key matches the user's ``known_hosts``); otherwise a free
port at random, ports released in the last ``COOL_DOWN`` only when no other is free. A port handed to another
user right after its release would meet someone's ``known_hosts`` entry for another environment's host key (or
their still running ``ssh`` retries); random picks also keep concurrent allocators from racing for the same port.
A port something else on this host listens on (a bind test on every address) is skipped: the relay could not
listen there.

How the relay moves bytes: through plain non-blocking sockets that the event loop watches (``add_reader``,
``add_writer``), not asyncio transports, which would copy every byte into a Python object and out again. A
connection accepted on a public port (``_Listener``) gets a socket to the service (``_Link``; what the client
sends meanwhile waits in the kernel), then a ``_Pump`` each way: when its source is readable it moves what is
there into a kernel pipe and from the pipe into the sink with splice(2), the bytes never entering the process
(bulk copies: ~0.3 ms of CPU per MB against ~0.44 through transports; ssh's traffic, which wakes the relay every
~50 KB, costs ~0.5 ms per MB either way: bench/README.md). A sink that does not take everything stops the
reading until it is writable again (backpressure: at most ``HOLD_SIZE`` held per direction), an EOF is passed on
as ``shutdown(SHUT_WR)`` (half-close: the other direction goes on), a failure of either socket closes both.
Where splice(2) is missing (not Linux) the same pumps go through a buffer of the process (recv_into/send)
instead. It runs on asyncio's own loop and on uvloop (``remotegpu serve``'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import socket
import time
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Literal

import msgspec
import structlog
from prometheus_client import Counter, Gauge
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.config import Settings
from gateway.db.base import utcnow
from gateway.db.session import Database
from gateway.environments.models import EnvironmentEvent, PortMapping
from gateway.errors import GatewayError
from gateway.jobs import events
from gateway.jobs.service import FINAL_STATES

log = structlog.get_logger("gateway.environments.ports")

COOL_DOWN = timedelta(hours=24)
"""A port released less than this long ago goes to a new mapping only when no other port is free."""
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - a bind test on every address, never a listening socket
PORT_RELEASED = "port_released"
"""The EnvironmentEvent kind written for each released mapping."""

ALLOCATION_CONFLICTS = Counter(
    "remotegpu_port_allocation_conflicts_total", "Public ports another allocator took first (the next was tried)"
)
PORTS_EXHAUSTED = Counter("remotegpu_ports_exhausted_total", "Port mappings refused: no free port in the range")
RELEASED = Counter("remotegpu_port_mappings_released_total", "Port mappings released", ["why"])


class PortsExhausted(GatewayError):
    """Every public port of the configured range is taken (a 503: ports come free as environments stop)."""

    status, kind, title = 503, "ports-exhausted", "No free public port"
    headers = {"Retry-After": "60"}

    def __init__(self, port_range: tuple[int, int]) -> None:
        low, high = port_range
        super().__init__(
            f"All public ports of the gateway host ({low}-{high}) are taken by live port mappings or other "
            "programs. Ports come free when environments stop or their mappings go unused; try again later, or ask "
            "an administrator to widen the range (port_range_start, port_range_end)."
        )
        self.port_range = port_range


# --- allocation ------------------------------------------------------------------------------------------------


def port_is_free(port: int, host: str = ANY_ADDRESS) -> bool:
    """Whether nothing on this host listens on ``port``: a bind test (SO_REUSEADDR, as the relay binds, so a
    closed connection's TIME_WAIT does not count). On every address by default: a listener on any one of them
    would keep the relay from listening there on Linux."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def candidate_ports(
    port_range: tuple[int, int],
    live: AbstractSet[int],
    *,
    recently_released: AbstractSet[int] = frozenset(),
    previous: int | None = None,
    rng: random.Random | None = None,
) -> Iterator[int]:
    """The ports ``map_service`` tries, in order: ``previous`` (when free), then every other free port of the range
    from a random start, ports in ``recently_released`` last. Lazy: the usual first pick costs no list of the range.
    """
    low, high = port_range
    if previous is not None and low <= previous <= high and previous not in live:
        yield previous
    size = high - low + 1
    start = (rng or random).randrange(size)
    later: list[int] = []
    for offset in range(size):
        port = low + (start + offset) % size
        if port in live or port == previous:
            continue
        if port in recently_released:
            later.append(port)
        else:
            yield port
    yield from later


def _port_taken(exc: IntegrityError) -> bool:
    """Whether the insert hit the live public port index (a race lost), not some other constraint."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:  # PostgreSQL: a unique violation (the only unique index of port_mappings)
        return bool(sqlstate == "23505")
    text = str(exc.orig)
    return "UNIQUE" in text and "public_port" in text


def map_service(
    session: Session,
    *,
    environment_id: str,
    job_id: str,
    service: str,
    node: str | None,
    host: str,
    node_port: int,
    auto_release_hours: int,
    port_range: tuple[int, int],
    check_host: str | None = ANY_ADDRESS,
) -> PortMapping:
    """The live mapping of the session's ``service`` to ``host:node_port``: the existing one updated (a callback
    repeated), else a new one on a free public port (see the module's docstring for which). ``check_host``: where
    the bind test tries each port, None for none. Raises PortsExhausted when no port of the range is free."""
    existing = session.scalars(
        select(PortMapping).where(
            PortMapping.job_id == job_id, PortMapping.service == service, PortMapping.released_at.is_(None)
        )
    ).first()
    if existing is not None:
        existing.node, existing.host, existing.node_port = node, host, node_port
        session.flush()
        return existing

    low, high = port_range
    in_range = PortMapping.public_port.between(low, high)
    live = set(session.scalars(select(PortMapping.public_port).where(PortMapping.released_at.is_(None), in_range)))
    recent = set(
        session.scalars(
            select(PortMapping.public_port).where(PortMapping.released_at > utcnow() - COOL_DOWN, in_range).distinct()
        )
    )
    previous = session.scalar(
        select(PortMapping.public_port)
        .where(PortMapping.environment_id == environment_id, PortMapping.service == service)
        .order_by(PortMapping.id.desc())
        .limit(1)
    )
    for port in candidate_ports(port_range, live, recently_released=recent, previous=previous):
        if check_host is not None and not port_is_free(port, check_host):
            continue
        mapping = PortMapping(
            environment_id=environment_id,
            job_id=job_id,
            service=service,
            node=node,
            host=host,
            node_port=node_port,
            public_port=port,
            auto_release_hours=auto_release_hours,
        )
        try:
            with session.begin_nested():  # a lost race rolls back this insert only
                session.add(mapping)
        except IntegrityError as exc:
            if not _port_taken(exc):
                raise
            ALLOCATION_CONFLICTS.inc()
            continue
        log.info("port_mapped", environment_id=environment_id, service=service, public_port=port, host=host)
        return mapping
    PORTS_EXHAUSTED.inc()
    log.warning("ports_exhausted", environment_id=environment_id, service=service, low=low, high=high)
    raise PortsExhausted(port_range)


_RETURNED = {"synchronize_session": "fetch", "populate_existing": True}
"""UPDATE ... RETURNING gives the rows as updated, also to objects the session had loaded before."""


def _release(session: Session, mappings: list[PortMapping], why: str) -> list[PortMapping]:
    for mapping in mappings:
        session.add(
            EnvironmentEvent(
                environment_id=mapping.environment_id,
                job_id=mapping.job_id,
                kind=PORT_RELEASED,
                message=f"Port {mapping.public_port} ({mapping.service}) released: {mapping.release_reason}",
                at=mapping.released_at,
            )
        )
    if mappings:
        session.flush()
        RELEASED.labels(why).inc(len(mappings))
    return mappings


def release_for_job(session: Session, job_id: str, reason: str) -> list[PortMapping]:
    """Release the session's live mappings (it ended), with a ``port_released`` event each; what it released."""
    now = utcnow()
    released = session.scalars(
        update(PortMapping)
        .where(PortMapping.job_id == job_id, PortMapping.released_at.is_(None))
        .values(released_at=now, release_reason=reason)
        .returning(PortMapping),
        execution_options=_RETURNED,
    ).all()
    return _release(session, list(released), "session")


@events.in_transaction
def release_ended(session: Session, changes: Sequence[events.StateChange]) -> None:
    """The live mappings of sessions whose jobs have just ended, released with the change that ends them."""
    ended = [c.job_id for c in changes if c.new in FINAL_STATES]
    if not ended:
        return
    live = select(PortMapping.job_id).where(PortMapping.job_id.in_(ended), PortMapping.released_at.is_(None))
    for job_id in set(session.scalars(live)):
        release_for_job(session, job_id, "session ended")


def release_idle(session: Session, now: datetime) -> list[PortMapping]:
    """Release live mappings without traffic for their ``auto_release_hours`` (``last_accessed_at + hours < now``),
    with a ``port_released`` event each; what it released.

    One UPDATE per distinct setting (in practice one), the idleness tested in its WHERE: traffic the relay writes
    meanwhile is seen (PostgreSQL re-tests a row updated concurrently), never released over."""
    released: list[PortMapping] = []
    settings = session.scalars(
        select(PortMapping.auto_release_hours).where(PortMapping.released_at.is_(None)).distinct()
    ).all()
    for hours in settings:
        released += session.scalars(
            update(PortMapping)
            .where(
                PortMapping.released_at.is_(None),
                PortMapping.auto_release_hours == hours,
                PortMapping.last_accessed_at < now - timedelta(hours=hours),
            )
            .values(released_at=now, release_reason=f"no traffic for {hours} hour{'' if hours == 1 else 's'}")
            .returning(PortMapping),
            execution_options=_RETURNED,
        ).all()
    return _release(session, released, "idle")


def _idle_pending(session: Session, now: datetime) -> bool:
    """Whether some live mapping is idle past its setting (a read: the worker's usual cycle writes nothing)."""
    rows = session.execute(
        select(PortMapping.auto_release_hours, func.min(PortMapping.last_accessed_at))
        .where(PortMapping.released_at.is_(None))
        .group_by(PortMapping.auto_release_hours)
    ).all()
    return any(oldest is not None and oldest + timedelta(hours=hours) < now for hours, oldest in rows)


async def release_idle_mappings(database: Database, now: datetime | None = None) -> int:
    """The worker's step: release idle mappings (with their events); how many. ``now``: tests' clock."""
    at = now or utcnow()
    if not await database.run(lambda s: _idle_pending(s, at), write=False):
        return 0
    released = await database.run(lambda s: release_idle(s, at))
    for mapping in released:
        log.info(
            "port_released_idle",
            environment_id=mapping.environment_id,
            service=mapping.service,
            public_port=mapping.public_port,
        )
    return len(released)


# --- the relay -------------------------------------------------------------------------------------------------

CONNECTIONS = Counter("remotegpu_relay_connections_total", "Connections accepted on mapped ports", ["service"])
UPSTREAM_FAILURES = Counter(
    "remotegpu_relay_upstream_failures_total", "Accepted connections whose service could not be reached", ["service"]
)
BYTES = Counter("remotegpu_relay_bytes_total", "Bytes relayed", ["service", "direction"])
OPEN_CONNECTIONS = Gauge("remotegpu_relay_open_connections", "Relayed connections open now")
LISTENING = Gauge("remotegpu_relay_listening_ports", "Live port mappings the relay listens on")
LIVE_MAPPINGS = Gauge("remotegpu_port_mappings_live", "Live port mappings in the database (the relay's last look)")
BIND_FAILURES = Counter("remotegpu_relay_bind_failures_total", "Attempts to listen on a mapped port that failed")

SPLICE = hasattr(os, "splice")
"""Whether bytes go socket -> pipe -> socket with splice(2) (Linux, Python >= 3.10), else through a buffer."""
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
HOLD_SIZE = 1 << 20
"""Bytes a direction of a connection holds at most (a pipe's size, else a buffer's); then it stops reading."""
SPARES = 8
"""Empty pipes kept for the next reads (more are closed when handed back)."""
CONNECT_TIMEOUT = 10.0
BACKLOG = 128
ACCEPT_BATCH = 32
"""Connections accepted per wake-up of a listening socket at most (then the loop's other work goes on)."""
ACCEPT_PAUSE = 1.0
"""Seconds a listening socket is left alone after accept() failed (e.g. out of file descriptors)."""
BIND_LOG_EVERY = 300.0
"""A port that stays unavailable is logged again after this many seconds (it is retried every reconcile)."""
FAILURE_LOG_EVERY = 60.0
"""A database that keeps failing the relay's looks is logged again after this many seconds."""


class Target(msgspec.Struct, frozen=True):
    """A live mapping as the relay needs it."""

    id: int
    public_port: int
    service: str
    host: str
    node_port: int


def live_targets(session: Session) -> list[Target]:
    rows = session.execute(
        select(
            PortMapping.id, PortMapping.public_port, PortMapping.service, PortMapping.host, PortMapping.node_port
        ).where(PortMapping.released_at.is_(None))
    ).all()
    return [Target(*row) for row in rows]


def touch(session: Session, accessed: dict[int, datetime]) -> None:
    """``last_accessed_at`` of live mappings (one executemany UPDATE)."""
    table = PortMapping.__table__
    assert isinstance(table, Table)
    statement = (
        update(table)
        .where(table.c.id == bindparam("mapping_id", type_=table.c.id.type), table.c.released_at.is_(None))
        .values(last_accessed_at=bindparam("at", type_=table.c.last_accessed_at.type))
    )
    session.execute(statement, [{"mapping_id": key, "at": at} for key, at in accessed.items()])


class _Pipe:
    """A kernel pipe between two sockets: splice(2) moves bytes socket -> pipe -> socket without copying them into
    the process."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # e.g. over the user's pipe-user-pages-soft: the default 64 KiB then
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, HOLD_SIZE)
        self.held = 0

    def fill(self, source: socket.socket) -> int:
        count = os.splice(source.fileno(), self.write_end, HOLD_SIZE, flags=_SPLICE_FLAGS)
        self.held += count
        return count

    def drain(self, sink: socket.socket) -> None:
        self.held -= os.splice(self.read_end, sink.fileno(), self.held, flags=_SPLICE_FLAGS)

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class _Buffer:
    """The same as a _Pipe where splice(2) is missing (not Linux) or no pipe can be made: a buffer of the process,
    read into with recv_into and sent from."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(HOLD_SIZE))
        self.start = 0
        self.held = 0

    def fill(self, source: socket.socket) -> int:
        count = source.recv_into(self.view)
        self.start, self.held = 0, count
        return count

    def drain(self, sink: socket.socket) -> None:
        sent = sink.send(self.view[self.start : self.start + self.held])
        self.start += sent
        self.held -= sent

    def close(self) -> None:
        """Nothing to give back: the buffer is the pump's own (a pipe goes back to its pool)."""


class _Spares:
    """Empty pipes (or buffers) for the pumps. A pump borrows one only while it holds bytes its sink has not taken
    yet, so an idle connection holds none (two file descriptors a connection, not six) and the usual wake-up (read,
    all of it written at once) gives it straight back for the next pump to use."""

    def __init__(self, splice: bool) -> None:
        self.splice = splice
        self.free: list[_Pipe | _Buffer] = []

    def take(self) -> _Pipe | _Buffer:
        if self.free:
            return self.free.pop()
        if self.splice:
            with contextlib.suppress(OSError):  # e.g. out of file descriptors: a buffer needs none
                return _Pipe()
        return _Buffer()

    def give(self, hold: _Pipe | _Buffer) -> None:
        if len(self.free) < SPARES:
            self.free.append(hold)
        else:
            hold.close()

    def close(self) -> None:
        for hold in self.free:
            hold.close()
        self.free.clear()


class _Pump:
    """One direction of a relayed connection: what ``source`` reads is written to ``sink``; its EOF is passed on as
    a half-close (``shutdown(SHUT_WR)``), the other direction going on.

    It watches one thing at a time: the source (readable) while it holds nothing, else the sink (writable) until it
    has taken everything held. So a slow sink stops the reading (backpressure: at most one pipe's worth held per
    direction, the rest waits in the kernel's socket buffers and TCP's window)."""

    def __init__(self, link: _Link, source: socket.socket, sink: socket.socket, *, to_service: bool) -> None:
        self.link = link
        self.spares = link.spares
        self.listener = link.listener
        self.source = source
        self.sink = sink
        self.to_service = to_service
        self.hold: _Pipe | _Buffer | None = None
        self.watching: Literal["source", "sink"] | None = None
        self.finished = False
        """The source's EOF was passed on."""

    def start(self) -> None:
        self._watch("source")

    def stop(self) -> None:
        self._watch(None)
        if self.hold is not None:  # bytes for a socket that is closed now
            self.hold.close()
            self.hold = None

    def _watch(self, what: Literal["source", "sink"] | None) -> None:
        if what == self.watching:
            return
        loop = self.link.loop
        if self.watching == "source":
            loop.remove_reader(self.source)
        elif self.watching == "sink":
            loop.remove_writer(self.sink)
        if what == "source":
            loop.add_reader(self.source, self._readable)
        elif what == "sink":
            loop.add_writer(self.sink, self._write)
        self.watching = what

    def _readable(self) -> None:
        spares = self.spares
        hold = spares.take()
        try:
            count = hold.fill(self.source)
        except BlockingIOError:  # woken for nothing
            spares.give(hold)
            return
        except OSError:  # e.g. a reset: the connection is dropped both ways
            spares.give(hold)
            self.link.close()
            return
        if not count:
            spares.give(hold)
            self._pass_eof()
            return
        self.listener.saw(count, to_service=self.to_service)
        self.hold = hold
        self._write()

    def _write(self) -> None:
        """Write what is held; what the sink does not take now is written when it is writable again."""
        hold = self.hold
        assert hold is not None
        while hold.held:
            try:
                hold.drain(self.sink)
            except BlockingIOError:
                self._watch("sink")
                return
            except OSError:
                self.link.close()
                return
        self.hold = None
        self.spares.give(hold)
        self._watch("source")

    def _pass_eof(self) -> None:
        self._watch(None)
        try:
            self.sink.shutdown(socket.SHUT_WR)
        except OSError:
            self.link.close()
            return
        self.finished = True
        self.link.pump_finished()


def _tune(sock: socket.socket) -> None:
    """What asyncio's transports would set: no Nagle delay (ssh's keystrokes), keep-alives (a peer that vanished
    without a FIN does not hold the connection forever)."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


async def _open_connection(host: str, port: int) -> socket.socket:
    """A connected non-blocking socket to ``host:port``, its addresses tried in turn (as create_connection does)."""
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    for family, kind, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled: the mapping was released or the relay stops
            sock.close()
            raise
        return sock
    raise error or OSError(f"{host} has no address")


class _Link:
    """One relayed connection: the client's socket (accepted on the public port), the service's (connected once
    the client's was accepted: what the client sends meanwhile waits in the kernel) and a pump each way."""

    def __init__(self, listener: _Listener, client: socket.socket) -> None:
        self.listener = listener
        self.spares = listener.spares
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.upstream: socket.socket | None = None
        self.pumps: list[_Pump] = []
        self.connecting: asyncio.Task[None] | None = None
        self.closed = False

    def start(self) -> None:
        self.listener.links.add(self)
        self.listener.active = True
        OPEN_CONNECTIONS.inc()
        CONNECTIONS.labels(self.listener.service).inc()
        self.connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        listener = self.listener
        host, port = listener.host, listener.node_port
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                upstream = await _open_connection(host, port)
        except OSError as exc:  # TimeoutError too
            self.connecting = None
            UPSTREAM_FAILURES.labels(listener.service).inc()
            log.warning(
                "relay_upstream_failed",
                public_port=listener.public_port,
                service=listener.service,
                target=f"{host}:{port}",
                error=str(exc) or type(exc).__name__,
            )
            self.close()
            return
        self.connecting = None
        _tune(upstream)
        self.upstream = upstream
        self.pumps = [
            _Pump(self, self.client, upstream, to_service=True),
            _Pump(self, upstream, self.client, to_service=False),
        ]
        for pump in self.pumps:
            pump.start()

    def pump_finished(self) -> None:
        if all(pump.finished for pump in self.pumps):
            self.close()  # EOF both ways: nothing is left to read, what was written the kernel still sends

    def close(self) -> None:
        """Close both sockets now: both ways ended, a socket failed, the mapping was released or the relay stops."""
        if self.closed:
            return
        self.closed = True
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        for pump in self.pumps:
            pump.stop()
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()
        OPEN_CONNECTIONS.dec()
        self.listener.links.discard(self)


async def _bind(host: str, port: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address ``host`` names (as create_server binds)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Listener:
    """A live mapping's listening sockets, its open connections and the traffic seen since the last write."""

    def __init__(self, target: Target, spares: _Spares) -> None:
        self.id = target.id
        self.public_port = target.public_port
        self.service = target.service
        self.host = target.host
        self.node_port = target.node_port
        self.spares = spares
        self.sockets: list[socket.socket] = []
        self.links: set[_Link] = set()
        self.active = False
        """Traffic (or a connection) since the last write of last_accessed_at."""
        self.bytes_in = 0
        self.bytes_out = 0
        self.bind_logged_at: float | None = None

    async def listen(self, host: str) -> None:
        self.sockets = await _bind(host, self.public_port)
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.add_reader(sock, self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: accept again in a moment (as asyncio's servers do)
                log.warning(
                    "relay_accept_failed", public_port=self.public_port, error=errno.errorcode.get(exc.errno or 0)
                )
                loop = asyncio.get_running_loop()
                loop.remove_reader(listening)
                loop.call_later(ACCEPT_PAUSE, self._resume, listening)
                return
            try:
                _tune(client)
            except OSError:  # reset before we got to it
                client.close()
                continue
            _Link(self, client).start()

    def _resume(self, listening: socket.socket) -> None:
        if listening in self.sockets:
            asyncio.get_running_loop().add_reader(listening, self._accept, listening)

    def close(self) -> None:
        """Stop listening and drop the open connections."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.remove_reader(sock)
            sock.close()
        self.sockets = []
        for link in list(self.links):
            link.close()
        self.count_bytes()

    def saw(self, count: int, *, to_service: bool) -> None:
        self.active = True
        if to_service:
            self.bytes_in += count
        else:
            self.bytes_out += count

    def count_bytes(self) -> None:
        if self.bytes_in:
            BYTES.labels(self.service, "to_service").inc(self.bytes_in)
            self.bytes_in = 0
        if self.bytes_out:
            BYTES.labels(self.service, "to_client").inc(self.bytes_out)
            self.bytes_out = 0


class Relay:
    """The TCP relays of all live port mappings, for one ``remotegpu serve`` process per gateway host.

    ``start()`` listens on what the database holds and keeps in step with it every ``reconcile_seconds``
    (``reconcile()`` does it at once, e.g. right after a callback made a mapping); ``stop()`` closes everything.
    A database that does not answer leaves the listeners and their connections as they are. ``splice=False``:
    the portable data path (buffers of the process) even where splice(2) is there (tests run both).
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        reconcile_seconds: float = 2.0,
        touch_seconds: float = 60.0,
        splice: bool = SPLICE,
    ) -> None:
        self.database = database
        self.host = settings.relay_host or settings.host
        self.reconcile_seconds = reconcile_seconds
        self.touch_seconds = touch_seconds
        self._listeners: dict[int, _Listener] = {}
        self._spares = _Spares(splice)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._touched_at = time.monotonic()
        self._failing_since: float | None = None
        self._failure_logged_at = 0.0

    @property
    def listening(self) -> dict[int, int]:
        """Public port by mapping id, for the mappings listened on now."""
        return {key: listener.public_port for key, listener in self._listeners.items() if listener.sockets}

    async def start(self) -> None:
        try:
            await self.reconcile()
        except Exception:
            log.exception("relay_reconcile_failed")  # the loop tries again
        self._task = asyncio.get_running_loop().create_task(self._run(), name="port-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:
            log.exception("relay_touch_failed")
        async with self._lock:
            for listener in list(self._listeners.values()):
                listener.close()
            self._listeners.clear()
            self._spares.close()
        LISTENING.set(0)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.reconcile_seconds)
            try:
                await self.reconcile()
                if time.monotonic() - self._touched_at >= self.touch_seconds:
                    await self.flush()
            except Exception:
                # e.g. the database away: the listeners and their connections stay as they are meanwhile
                now = time.monotonic()
                if self._failing_since is None or now - self._failure_logged_at >= FAILURE_LOG_EVERY:
                    log.exception("relay_reconcile_failed")
                    self._failure_logged_at = now
                self._failing_since = self._failing_since or now
            else:
                if self._failing_since is not None:
                    log.info("relay_reconcile_recovered", failed_seconds=round(time.monotonic() - self._failing_since))
                    self._failing_since = None

    async def reconcile(self) -> None:
        """Listen on every live mapping, stop listening (and drop the connections) of released ones."""
        async with self._lock:  # the read too: a stale look applied after a fresh one would close new listeners
            targets = await self.database.run(live_targets, write=False)
            wanted = {target.id: target for target in targets}
            for key in [key for key in self._listeners if key not in wanted]:
                self._listeners.pop(key).close()
            for target in targets:
                listener = self._listeners.get(target.id)
                if listener is None:
                    listener = self._listeners[target.id] = _Listener(target, self._spares)
                listener.host, listener.node_port = target.host, target.node_port  # a callback repeated
                if not listener.sockets:
                    await self._listen(listener)
                listener.count_bytes()
            LIVE_MAPPINGS.set(len(targets))
            LISTENING.set(sum(1 for listener in self._listeners.values() if listener.sockets))

    async def _listen(self, listener: _Listener) -> None:
        try:
            await listener.listen(self.host)
        except OSError as exc:
            BIND_FAILURES.inc()
            now = time.monotonic()
            if listener.bind_logged_at is None or now - listener.bind_logged_at >= BIND_LOG_EVERY:
                listener.bind_logged_at = now
                log.warning(
                    "relay_port_unavailable",
                    public_port=listener.public_port,
                    host=self.host,
                    error=errno.errorcode.get(exc.errno or 0, str(exc)),
                    retry_seconds=self.reconcile_seconds,
                )
            return
        if listener.bind_logged_at is not None:
            log.info("relay_port_listening", public_port=listener.public_port)
            listener.bind_logged_at = None

    async def flush(self) -> None:
        """Write ``last_accessed_at`` of the mappings that saw traffic since the last flush (one UPDATE)."""
        self._touched_at = time.monotonic()
        now = utcnow()
        active = [listener for listener in self._listeners.values() if listener.active]
        if not active:
            return
        for listener in active:
            listener.active = False
        try:
            await self.database.run(lambda s: touch(s, {listener.id: now for listener in active}))
        except Exception:
            for listener in active:  # written with the next flush
                listener.active = True
            raise
