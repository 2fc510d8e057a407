"""A client that never reads an HTTP/1.1 event stream cannot make the gateway buffer without bound.

The HTTP/2 version is ``test_slow_client.py``. Here a plain socket with a small receive buffer
sends a SubscribeEvents request over HTTP/1.1 (Connect streaming, and gRPC-Web) and then reads
nothing. Large events are pushed by the backend (over the real push stream) until the gateway
gives up on that stream: once the socket pushes back, the bytes it takes are counted against
``server.stream_buffer_bytes`` and the stream ends RESOURCE_EXHAUSTED. Throughout, what the
gateway holds for that connection (its transport's write buffer) stays under Twisted's pause
threshold plus the stream bound plus two events and the end of the stream; after the end it
holds still, however many events follow. A normal stream of the same user receives every event. When the client
finally reads, it finds the queued events and the RESOURCE_EXHAUSTED end, in order.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor

from gatewayd._proto.gateway.v1.gateway_pb2 import GatewayEvent
from gatewayd._proto.push.v1 import push_pb2
from gatewayd.client.client import SUBSCRIBE_EVENTS_PATH
from gatewayd.client.wire import make_transport
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import Closer, RunningGateway, new_email
from gatewayd.testing.events import (
    RawStream,
    check_event,
    check_server_time,
    published_keys,
    same_user_sessions,
    subscribe_request,
)
from gatewayd.testing.raw_http1 import parse_http1_response
from gatewayd.testing.wait import until
from tests.integration import test_slow_client as h2_version

BUFFER_BYTES = h2_version.BUFFER_BYTES
gateway = h2_version.gateway  # the same fixture: a gateway with server.stream_buffer_bytes = BUFFER_BYTES

# Events of ~60 KiB: the kernel's send buffer for the connection grows up to tcp_wmem's maximum
# (4 MiB by default) before the socket pushes back, so it takes ~70 of them; the loop stops at the drop.
EVENT_BYTES = 60 * 1024
MAX_EVENTS = 300
EXTRA_EVENTS = 10  # published after the drop: the gateway must not queue them anywhere

CONTENT_TYPES = {"connect": "application/connect+proto", "grpc-web": "application/grpc-web+proto"}


def transport_backlog(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds that the kernel has not taken yet."""
    assert isinstance(transport, FileDescriptor)
    # FileDescriptor keeps written data in dataBuffer (from offset) and in _tempDataBuffer.
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class NonReadingClient:
    """A blocking socket with a 4 KiB receive buffer that sends one request and reads nothing until told."""

    def __init__(self, port: int, protocol: str, request: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        self.sock.connect(("127.0.0.1", port))
        body = b"\x00" + struct.pack(">I", len(request)) + request
        head = (f"POST {SUBSCRIBE_EVENTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {CONTENT_TYPES[protocol]}\r\nContent-Length: {len(body)}\r\n")
        head += "Connect-Protocol-Version: 1\r\n" if protocol == "connect" else "X-Grpc-Web: 1\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        self.received = bytearray()
        self.closed = False

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def read_available(self) -> bool:
        """Read what has arrived without blocking; True once the response is complete or closed."""
        self.sock.setblocking(False)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.closed = True
                    break
                self.received += chunk
        except BlockingIOError:
            pass
        return self.closed or self.received.endswith(b"\r\n0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def parse_response(raw: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """The status and the chunked body's envelopes ``(flags, payload)``."""
    response = parse_http1_response(raw)
    assert response.headers.get("transfer-encoding") == "chunked", response.headers
    body, envelopes = response.body, []
    while body:
        flags, length = body[0], struct.unpack(">I", body[1:5])[0]
        assert len(body) >= 5 + length, "truncated envelope"
        envelopes.append((flags, body[5:5 + length]))
        body = body[5 + length:]
    return response.status, envelopes


def end_status(protocol: str, flags: int, payload: bytes) -> str:
    """The code named by the stream's last envelope (Connect end-stream JSON, gRPC-Web trailers)."""
    if protocol == "connect":
        assert flags == 0x02, flags
        return str(json.loads(payload)["error"]["code"])
    assert flags == 0x80, flags
    trailers = dict(line.split(":", 1) for line in payload.decode().strip().split("\r\n"))
    return Code(int(trailers["grpc-status"].strip())).connect_name


@pytest.mark.parametrize("protocol", ["connect", "grpc-web"])
@pytest_twisted.ensureDeferred
async def test_an_http1_client_that_never_reads_is_dropped_with_bounded_buffers(
        gateway: RunningGateway, closer: Closer, protocol: str) -> None:
    hub = gateway.gateway.hub
    keys = await published_keys(gateway.url)
    slow_device, fast_device = await same_user_sessions(gateway, new_email("http1-slow"))
    fast = RawStream(closer(make_transport(protocol, reactor, gateway.url)), subscribe_request(fast_device))
    await fast.wait_messages(1)

    slow = NonReadingClient(gateway.port.getHost().port, protocol,
                            subscribe_request(slow_device).SerializeToString())
    try:
        await until(lambda: len(hub) == 2, lambda: f"hub size {len(hub)}")
        (server_side,) = [p for p in gateway.gateway.factory.connections
                          if p.transport is not None and p.transport.getPeer().port == slow.local_port]

        user_id = slow_device[1].user_id
        published: list[bytes] = []

        def push_event(text: str) -> None:
            payload = json.dumps({"n": len(published), "text": text}).encode()
            published.append(payload)
            gateway.backend.bus.publish(push_pb2.PushEvent(client_event=push_pb2.ClientEvent(
                user_id=user_id, event_type="test.big", event_id=f"big-{len(published)}", payload_bytes=payload)))

        peak = 0
        while len(hub) == 2 and len(published) < MAX_EVENTS:
            push_event("x" * EVENT_BYTES)
            await until(lambda: fast.ended or len(fast.messages) >= 1 + len(published), "the fast stream's event")
            peak = max(peak, transport_backlog(server_side.transport))
        assert len(hub) == 1, (f"the slow stream is still registered after {len(published)} large events; "
                               f"backlog {transport_backlog(server_side.transport)}, peak {peak}")
        assert not fast.ended, fast.outcome
        dropped_after = len(published)

        event_frame = 5 + max(len(m.SerializeToString()) for m in fast.messages)
        # Twisted pauses the producer once its buffer passes bufferSize; from then on at most
        # stream_buffer_bytes more (plus the event that crossed it and the end of the stream).
        bound = FileDescriptor.bufferSize + BUFFER_BYTES + 2 * event_frame + 1024
        assert 0 < peak <= bound, (peak, bound)

        # Dropped: more events reach the fast stream, and nothing more is queued for the slow one.
        held = transport_backlog(server_side.transport)
        for _ in range(EXTRA_EVENTS):
            push_event("y" * EVENT_BYTES)
        await fast.wait_messages(1 + len(published))
        assert transport_backlog(server_side.transport) <= held
        for event, payload in zip(fast.messages[1:], published, strict=True):
            assert check_event(event, keys) == json.loads(payload)

        # The client reads at last: the events that were queued, in order, then RESOURCE_EXHAUSTED.
        await until(slow.read_available, lambda: f"the slow response's end; {len(slow.received)} bytes")
        status, envelopes = parse_response(bytes(slow.received))
        assert status == 200, status
        *messages, (flags, end) = envelopes
        assert end_status(protocol, flags, end) == "resource_exhausted"
        events = [GatewayEvent.FromString(payload) for f, payload in messages]
        assert all(f == 0 for f, _ in messages)
        check_server_time(events[0], keys)
        # What the kernel and the bounded queue held when the stream was dropped: a prefix.
        assert 1 <= len(events) - 1 <= dropped_after
        for event, payload in zip(events[1:], published, strict=False):
            assert check_event(event, keys) == json.loads(payload)
    finally:
        slow.close()
    fast.cancel()
    await until(lambda: len(hub) == 0, lambda: f"hub size {len(hub)}")
