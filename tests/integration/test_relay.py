"""The TCP relay of port mappings against real sockets on 127.0.0.1: echo and half-close both ways, many connections
at once, large transfers, a released mapping's listener and connections closed, traffic written to the database.

Every test runs the relay four ways: its splice(2) data path and its portable one (buffers of the process), each on
asyncio's own loop (the test's) and on uvloop (``remotegpu serve``'s; a thread of its own, driven from the test)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from sqlalchemy import select

from gateway.config import Settings
from gateway.db.session import Database
from gateway.environments.models import PortMapping
from gateway.environments.ports import (
    BYTES,
    OPEN_CONNECTIONS,
    SPARES,
    SPLICE,
    UPSTREAM_FAILURES,
    Relay,
    map_service,
    release_for_job,
)
from tests.integration.test_port_mappings import Env, free_range, make_environment, map_one


class Service:
    """A real TCP service on 127.0.0.1: echoes what it reads; at the client's EOF it ends its own side too."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Service:
        self.server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError):  # a client that resets is one of the cases tested
                while data := await reader.read(1 << 18):
                    writer.write(data)
                    await writer.drain()
                writer.write_eof()
                await writer.drain()
        finally:
            writer.close()


async def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload`` while reading the echo, then half-close and read up to the service's EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        view = memoryview(payload)
        for start in range(0, len(payload), 1 << 20):
            writer.write(view[start : start + (1 << 20)])
            await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    received = await reader.read()  # to EOF: the relay passed our EOF on and the service's back
    await sending
    writer.close()
    return received


@pytest.fixture
async def env(clean_database: Database) -> Env:
    return await make_environment(clean_database)


T = TypeVar("T")


class UvloopRelay:
    """A Relay on uvloop in a thread of its own (with a Database of its own), driven from the test's loop."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self.thread = threading.Thread(target=lambda: uvloop.run(self._serve()), name="uvloop-relay", daemon=True)
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.relay: Relay | None = None
        self.done: asyncio.Event | None = None

    async def _serve(self) -> None:
        database = Database(self.url)
        self.loop, self.done = asyncio.get_running_loop(), asyncio.Event()
        self.relay = Relay(database, Settings(database_url=self.url, relay_host="127.0.0.1"), **self.options)
        try:
            await self.relay.start()
        finally:
            self.ready.set()
        await self.done.wait()
        await self.relay.stop()
        await database.dispose()

    def _submit(self, work: Callable[[Relay], Awaitable[T]]) -> asyncio.Future[T]:
        assert self.loop is not None and self.relay is not None
        relay = self.relay

        async def call() -> T:
            return await work(relay)

        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self.loop))

    async def start(self) -> None:
        self.thread.start()
        await asyncio.to_thread(self.ready.wait)

    async def reconcile(self) -> None:
        await self._submit(lambda relay: relay.reconcile())

    async def flush(self) -> None:
        await self._submit(lambda relay: relay.flush())

    async def stop(self) -> None:
        assert self.loop is not None and self.done is not None
        self.loop.call_soon_threadsafe(self.done.set)
        await asyncio.to_thread(self.thread.join, 10)

    @property
    def listening(self) -> dict[int, int]:
        assert self.loop is not None and self.relay is not None
        relay = self.relay

        async def look() -> dict[int, int]:
            return relay.listening

        return asyncio.run_coroutine_threadsafe(look(), self.loop).result(5)


AnyRelay = Relay | UvloopRelay
StartRelay = Callable[..., Awaitable[AnyRelay]]
no_splice = pytest.mark.skipif(not SPLICE, reason="no splice(2) here")


@pytest.fixture(
    params=[
        pytest.param("asyncio-splice", marks=no_splice),
        "asyncio-buffer",
        pytest.param("uvloop-splice", marks=no_splice),
        "uvloop-buffer",
    ]
)
async def start_relay(
    clean_database: Database, settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[StartRelay]:
    """Start a relay (keyword arguments: Relay's) the way the test's parameter says; stopped at the end."""
    loop, data_path = str(request.param).split("-")
    started: list[AnyRelay] = []

    async def start(**options: Any) -> AnyRelay:
        options["splice"] = data_path == "splice"
        relay: AnyRelay
        if loop == "uvloop":
            relay = UvloopRelay(settings.database_url, **options)
        else:
            relay = Relay(
                clean_database, Settings(database_url=settings.database_url, relay_host="127.0.0.1"), **options
            )
        await relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.stop()


@pytest.fixture
async def relay(start_relay: StartRelay) -> AnyRelay:
    return await start_relay()


async def mapped(database: Database, env: Env, relay: AnyRelay, node_port: int, service: str = "ssh") -> PortMapping:
    mapping = await map_one(database, env, free_range(8), service=service, node_port=node_port)
    await relay.reconcile()  # as the callback does: listening at once
    assert relay.listening[mapping.id] == mapping.public_port
    return mapping


async def last_accessed(database: Database, mapping_id: int) -> datetime:
    return await database.run(lambda s: s.get_one(PortMapping, mapping_id).last_accessed_at, write=False)


def counted(service: str, direction: str) -> float:
    return float(BYTES.labels(service, direction)._value.get())


async def test_bytes_both_ways_with_half_close(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    async with Service() as service:
        mapping = await mapped(clean_database, env, relay, service.port, service="echo")
        to_service, to_client = counted("echo", "to_service"), counted("echo", "to_client")
        assert await exchange(mapping.public_port, b"hello") == b"hello"
        assert await exchange(mapping.public_port, b"") == b""  # EOF at once: passed on, and back
        await relay.reconcile()  # counts the bytes into the metrics
        assert counted("echo", "to_service") - to_service == 5
        assert counted("echo", "to_client") - to_client == 5


async def test_the_service_half_closes_first(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    """The service ends its side first (sends, then EOF); the client still sends, and the service gets it all."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def speak_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        writer.write_eof()
        got.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_server(speak_first, "127.0.0.1", 0)
    try:
        mapping = await mapped(clean_database, env, relay, server.sockets[0].getsockname()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", mapping.public_port)
        assert await reader.read() == b"banner"  # the service's EOF reached us; our side is still open
        payload = os.urandom(3 << 20)
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(got, 10) == payload
        writer.close()
    finally:
        server.close()


async def test_many_connections_at_once(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    async with Service() as service:
        mapping = await mapped(clean_database, env, relay, service.port)
        open_before = open_connections()
        payloads = [os.urandom(256 << 10) + bytes([i]) for i in range(100)]
        echoed = await asyncio.wait_for(
            asyncio.gather(*(exchange(mapping.public_port, p) for p in payloads)), timeout=60
        )
        assert echoed == payloads
        await until(lambda: open_connections() == open_before)  # every link closed and forgotten


async def test_a_client_that_vanishes_mid_transfer(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    """A reset from the client while the service still sends: the service's side is closed, nothing is left."""
    closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(b"\0" * (1 << 20))
                await writer.drain()
        except ConnectionError:
            closed.set_result(None)
        finally:
            writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    try:
        mapping = await mapped(clean_database, env, relay, server.sockets[0].getsockname()[1])
        open_before = open_connections()
        sock = socket.create_connection(("127.0.0.1", mapping.public_port))
        await asyncio.sleep(0.2)  # the flood is under way, the relay's buffers full
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # an RST
        await asyncio.wait_for(closed, 10)
        await until(lambda: open_connections() == open_before)
    finally:
        server.close()


def open_connections() -> float:
    return float(OPEN_CONNECTIONS._value.get())


async def test_a_large_transfer_with_backpressure(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    """64 MiB each way at once through one connection: the bytes arrive whole and in order."""
    async with Service() as service:
        mapping = await mapped(clean_database, env, relay, service.port)
        payload = os.urandom(1 << 20) * 64
        echoed = await asyncio.wait_for(exchange(mapping.public_port, payload), timeout=120)
        assert len(echoed) == len(payload) and hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_a_released_mapping_stops_listening_and_drops_its_connections(
    clean_database: Database, env: Env, relay: AnyRelay
) -> None:
    async with Service() as service:
        mapping = await mapped(clean_database, env, relay, service.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", mapping.public_port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"

        await clean_database.run(lambda s: release_for_job(s, env.job_id, "session ended"))
        await relay.reconcile()
        assert mapping.id not in relay.listening
        with contextlib.suppress(ConnectionResetError):  # closed by the relay: EOF or a reset
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", mapping.public_port)


async def test_traffic_is_written_as_last_accessed_at(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    async with Service() as service:
        mapping = await mapped(clean_database, env, relay, service.port)
        before = await last_accessed(clean_database, mapping.id)
        await relay.flush()
        assert await last_accessed(clean_database, mapping.id) == before  # no traffic, no write
        assert await exchange(mapping.public_port, b"x" * 1000) == b"x" * 1000
        await relay.flush()
        after = await last_accessed(clean_database, mapping.id)
        assert after > before


async def test_the_loop_follows_the_database(clean_database: Database, env: Env, start_relay: StartRelay) -> None:
    """No reconcile() called: new mappings listen, released ones stop, traffic is written, each within moments."""
    relay = await start_relay(reconcile_seconds=0.05, touch_seconds=0.1)
    async with Service() as service:
        mapping = await map_one(clean_database, env, free_range(8), node_port=service.port)
        await until(lambda: mapping.id in relay.listening)
        before = await last_accessed(clean_database, mapping.id)
        assert await exchange(mapping.public_port, b"abc") == b"abc"
        await until(lambda: newer(clean_database, mapping.id, before))
        await clean_database.run(lambda s: release_for_job(s, env.job_id, "session ended"))
        await until(lambda: mapping.id not in relay.listening)
    assert relay.listening == {}


async def newer(database: Database, mapping_id: int, than: datetime) -> bool:
    return await last_accessed(database, mapping_id) > than


async def until(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0) -> None:
    """Wait for ``condition`` (a plain or an async callable) to hold, polling it."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.03)
    raise AssertionError(f"not within {seconds} s")


async def test_a_port_another_program_holds_is_retried(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    async with Service() as service:
        low, high = free_range(1)
        squatter = socket.socket()
        squatter.bind(("127.0.0.1", low))
        squatter.listen()
        try:
            mapping = await clean_database.run(
                lambda s: map_service(
                    s,
                    environment_id=env.environment_id,
                    job_id=env.job_id,
                    service="ssh",
                    node=None,
                    host="127.0.0.1",
                    node_port=service.port,
                    auto_release_hours=48,
                    port_range=(low, high),
                    check_host=None,  # as if another host's gateway had allocated it
                )
            )
            await relay.reconcile()
            await relay.reconcile()  # logged once, retried, no crash
            assert mapping.id not in relay.listening
        finally:
            squatter.close()
        await relay.reconcile()
        assert relay.listening[mapping.id] == low
        assert await exchange(low, b"back") == b"back"


async def test_a_service_that_is_not_there_closes_the_client(
    clean_database: Database, env: Env, relay: AnyRelay
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]  # bound, never listening: connections are refused
        failures = UPSTREAM_FAILURES.labels("ssh")._value.get()
        mapping = await mapped(clean_database, env, relay, dead_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", mapping.public_port)
        writer.write(b"hello?")
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert UPSTREAM_FAILURES.labels("ssh")._value.get() == failures + 1


async def test_a_mapping_pointed_elsewhere_by_a_repeated_callback(
    clean_database: Database, env: Env, relay: AnyRelay
) -> None:
    async with Service() as first, Service() as second:
        mapping = await mapped(clean_database, env, relay, first.port)
        moved = await map_one(clean_database, env, (mapping.public_port, mapping.public_port), node_port=second.port)
        assert moved.id == mapping.id
        await relay.reconcile()
        await first.__aexit__()  # only the second service is there now
        assert await exchange(mapping.public_port, b"moved") == b"moved"
        rows = await clean_database.run(lambda s: s.scalars(select(PortMapping.node_port)).all(), write=False)
        assert rows == [second.port]


async def test_bytes_and_eof_before_the_service_is_connected(
    clean_database: Database, env: Env, relay: AnyRelay
) -> None:
    """Sent and half-closed before the relay even accepted: the bytes wait, reach the service, the echo comes back."""
    async with Service() as service:
        mapping = await mapped(clean_database, env, relay, service.port)
        sock = socket.create_connection(("127.0.0.1", mapping.public_port))
        sock.sendall(b"early bird")  # no await since the connect: the relay has not run meanwhile
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        assert await asyncio.wait_for(reader.read(), 10) == b"early bird"
        writer.close()


async def test_a_service_that_does_not_read_stops_the_client(
    clean_database: Database, env: Env, relay: AnyRelay
) -> None:
    """Backpressure: while the service reads nothing the client's writes stall after the kernel's buffers and one
    hold's worth (no unbounded buffering in the relay); once it reads, every byte arrives in order."""
    reading = asyncio.Event()
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reading.wait()
        got.set_result(await reader.read())
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    try:
        mapping = await mapped(clean_database, env, relay, server.sockets[0].getsockname()[1])
        _, writer = await asyncio.open_connection("127.0.0.1", mapping.public_port)
        chunk, written = os.urandom(1 << 20), 0
        while written < 256 << 20:
            writer.write(chunk)
            written += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except TimeoutError:
                break  # stalled
        assert written < 128 << 20  # socket buffers (a few MiB each) and the relay's hold, not the whole stream
        reading.set()
        writer.write_eof()
        received = await asyncio.wait_for(got, 30)
        assert len(received) == written and received == chunk * (written // len(chunk))
        writer.close()
    finally:
        server.close()


def open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_idle_connections_hold_no_pipe(clean_database: Database, env: Env, relay: AnyRelay) -> None:
    """Two file descriptors in the relay per open connection: a pipe is borrowed only while bytes wait for a sink."""
    async with Service() as service:
        mapping = await mapped(clean_database, env, relay, service.port)
        await exchange(mapping.public_port, b"warm")  # the first spare pipe made
        before = open_fds()
        streams = [await asyncio.open_connection("127.0.0.1", mapping.public_port) for _ in range(20)]
        for reader, writer in streams:
            writer.write(b"x" * 100_000)
            assert await reader.readexactly(100_000) == b"x" * 100_000
        # each: the test's client socket, the relay's two, the service's one
        assert open_fds() - before <= 20 * 4 + 2 * SPARES
        for _, writer in streams:
            writer.close()
