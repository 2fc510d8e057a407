"""A socket read holding hundreds of requests is handled over several reactor turns."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gatewayd.config import ServerConfig
from gatewayd.health import HealthService
from gatewayd.rpc.methods import MethodTable
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.server import build_factory

STREAMS = 300


def _many_checks() -> tuple[h2.connection.H2Connection, bytes]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
               (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    for _ in range(STREAMS):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers)
        client.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    return client, client.data_to_send()


def test_requests_beyond_the_budget_wait_a_turn_with_reading_paused() -> None:
    clock = Clock()
    methods = MethodTable()
    for method in HealthService([""]).methods():
        methods.add(method)
    config = ServerConfig(max_concurrent_streams=STREAMS + 10)
    factory, _ = build_factory(methods, clock, config, cors=CorsPolicy())
    connection = factory.build_h2()
    transport = StringTransport()
    connection.makeConnection(transport)
    client, data = _many_checks()
    client.receive_data(transport.value())
    transport.clear()

    def answered() -> int:
        events = client.receive_data(transport.value())
        transport.clear()
        return sum(1 for e in events if isinstance(e, h2.events.StreamEnded))

    connection.dataReceived(data)
    per_turn = connection.limits.streams_per_turn
    assert per_turn < STREAMS
    done = answered()
    assert done == per_turn
    assert transport.producerState == "paused"
    # The rest follows on later reactor turns (a Clock runs them all in one advance).
    clock.advance(0)
    done += answered()
    assert done == STREAMS
    assert transport.producerState == "producing"


def test_connections_share_one_budget_per_turn() -> None:
    clock = Clock()
    methods = MethodTable()
    for method in HealthService([""]).methods():
        methods.add(method)
    factory, _ = build_factory(methods, clock, ServerConfig(max_concurrent_streams=STREAMS + 10), cors=CorsPolicy())
    pairs = []
    for _ in range(2):
        connection = factory.build_h2()
        transport = StringTransport()
        connection.makeConnection(transport)
        client, data = _many_checks()
        client.receive_data(transport.value())
        transport.clear()
        pairs.append((connection, transport, client, data))

    def answered(transport: StringTransport, client: h2.connection.H2Connection) -> int:
        events = client.receive_data(transport.value())
        transport.clear()
        return sum(1 for e in events if isinstance(e, h2.events.StreamEnded))

    for connection, _, _, data in pairs:
        connection.dataReceived(data)
    first_turn = [answered(transport, client) for _, transport, client, _ in pairs]
    assert sum(first_turn) == factory.limits.streams_per_turn
    assert all(transport.producerState == "paused" for _, transport, _, _ in pairs)
    clock.advance(0)
    assert sum(first_turn) + sum(answered(t, c) for _, t, c, _ in pairs) == 2 * STREAMS
