"""Port mappings' pure parts: the order ports are tried in, the bind test, the 503, the relay's holds (a pipe for
splice(2) or a buffer) between a pair of sockets."""

from __future__ import annotations

import os
import random
import socket

import pytest

from gateway.environments.ports import (
    SPARES,
    SPLICE,
    PortsExhausted,
    _Buffer,
    _Pipe,
    _Spares,
    candidate_ports,
    port_is_free,
)
from gateway.errors import GatewayError


def test_every_free_port_once_live_ones_never() -> None:
    live = {100, 103, 105}
    ports = list(candidate_ports((100, 109), live, rng=random.Random(1)))
    assert sorted(ports) == [101, 102, 104, 106, 107, 108, 109]


def test_the_environments_previous_port_first_when_free() -> None:
    ports = list(candidate_ports((100, 109), {101}, previous=107, recently_released={107}, rng=random.Random(2)))
    assert ports[0] == 107 and ports.count(107) == 1 and len(ports) == 9


def test_a_previous_port_that_is_live_or_out_of_range_is_not_tried() -> None:
    assert 101 not in candidate_ports((100, 103), {101}, previous=101)
    assert 200 not in candidate_ports((100, 103), set(), previous=200)


def test_recently_released_ports_come_last() -> None:
    recent = {100, 101, 102}
    ports = list(candidate_ports((100, 109), set(), recently_released=recent, rng=random.Random(3)))
    assert set(ports[-3:]) == recent and len(ports) == 10


def test_the_first_pick_is_spread_over_the_range() -> None:
    """Concurrent allocators (and successive users) rarely start on the same port."""
    rng = random.Random(4)
    firsts = {next(candidate_ports((30000, 30999), set(), rng=rng)) for _ in range(200)}
    assert len(firsts) > 150


def test_a_full_range_yields_nothing() -> None:
    assert list(candidate_ports((5, 7), {5, 6, 7})) == []


def test_the_bind_test_sees_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)  # on every address: 127.0.0.1 is one of them
        assert not port_is_free(port, "127.0.0.1")
    assert port_is_free(port)


def test_ports_exhausted_is_a_503_naming_the_range_with_retry_after() -> None:
    exc = PortsExhausted((30000, 30999))
    assert isinstance(exc, GatewayError)
    assert (exc.status, exc.kind) == (503, "ports-exhausted")
    assert "30000-30999" in exc.detail
    assert exc.headers is not None and int(exc.headers["Retry-After"]) > 0
    assert exc.errors is None


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        one = socket.create_connection(listener.getsockname())
        other, _ = listener.accept()
    return one, other


@pytest.mark.parametrize(
    "make", [pytest.param(_Pipe, marks=pytest.mark.skipif(not SPLICE, reason="no splice(2) here")), _Buffer]
)
def test_a_hold_moves_bytes_from_one_socket_to_another(make: type[_Pipe | _Buffer]) -> None:
    (sender, source), (sink, receiver) = tcp_pair(), tcp_pair()
    hold = make()
    try:
        source.setblocking(False)
        sink.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing to read yet
            hold.fill(source)
        payload = os.urandom(32_000)  # fits the sockets' buffers: nothing here waits for a reader
        sender.sendall(payload)
        sender.shutdown(socket.SHUT_WR)
        while hold.fill(source):  # to the EOF
            while hold.held:
                hold.drain(sink)
        sink.shutdown(socket.SHUT_WR)
        received = b""
        while data := receiver.recv(1 << 16):
            received += data
        assert received == payload
    finally:
        hold.close()
        for sock in (sender, source, sink, receiver):
            sock.close()


def test_spares_are_reused_and_capped() -> None:
    spares = _Spares(splice=SPLICE)
    first = spares.take()
    spares.give(first)
    assert spares.take() is first  # the usual wake-up: the same pipe again
    many = [first] + [spares.take() for _ in range(SPARES + 3)]
    for hold in many:
        spares.give(hold)
    assert len(spares.free) == SPARES  # the rest closed
    spares.close()
    assert spares.free == []
    assert isinstance(_Spares(splice=False).take(), _Buffer)
