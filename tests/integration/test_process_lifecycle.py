"""The ``twist gatewayd`` process: SIGTERM drains (PROTOCOL.md section 7); bad starts fail loudly.

A real ``twist gatewayd --dev`` subprocess. With an event stream open over
each protocol and a unary call in flight, SIGTERM must end every stream with
UNAVAILABLE (the gRPC trailer, the gRPC-Web trailer frame, the Connect
end-stream message, each read by ``gatewayd.client``), let the unary call
finish, and exit 0 within the drain time.

Two calls are in flight, each with its request only half sent when SIGTERM
arrives, so they are certainly in flight during the drain: a Connect unary
request over HTTP/1.1 (``Expect: 100-continue`` makes the gateway say when
it holds the request) and a gRPC call over HTTP/2 (a PING after the frames;
its ACK says the gateway has read them). The rest of each follows once the
streams have ended (and, on HTTP/2, the GOAWAY has arrived).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import hyperframe.frame
import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, protocol, task
from twisted.internet import reactor as default_reactor

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandResponse
from gatewayd.client.client import GatewayClient
from gatewayd.client.errors import RpcCallError
from gatewayd.client.sign import sign_request
from gatewayd.client.verify import verify_response
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame
from gatewayd.signing import GatewayKey
from gatewayd.testing.client import login
from gatewayd.testing.devprocess import TWIST, DevGatewayProcess, start_dev_process
from gatewayd.testing.redis import free_port

DEFAULT_DRAIN_S = 10.0  # server.drain_timeout_s's default, which the dev process runs with
START_TIMEOUT_S = 20.0
PROTOCOLS = ("grpc", "grpc-web", "connect")


@pytest.fixture
def dev_gateway(tmp_path: Path) -> Iterator[DevGatewayProcess]:
    """``twist gatewayd --dev`` on a free loopback port, ready (backend, stores, push) when yielded."""
    gateway = start_dev_process(tmp_path)
    try:
        yield gateway
    finally:
        gateway.stop()


class _RawHttp(protocol.Protocol):
    """One HTTP/1.1 exchange, written by hand so the body can be sent in two halves."""

    def __init__(self) -> None:
        self.received = b""
        self.continued: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.continued.called and b"100 Continue\r\n\r\n" in self.received:
            self.continued.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.continued.called:
            self.continued.errback(AssertionError(f"closed before 100 Continue: {self.received!r}"))
        self.closed.callback(self.received)


class _RawH2(protocol.Protocol):
    """One gRPC call over h2c, driven frame by frame with the h2 library (client side)."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config)
        self.pinged: defer.Deferred[None] = defer.Deferred()
        self.goaway: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.headers: dict[str, str] = {}
        self.data = b""
        # The h2 library closes its whole client state on any GOAWAY; a graceful one (the
        # gRPC-style drain) keeps streams up to last_stream_id alive, so stay open after it.
        table = self.h2._frame_dispatch_table
        receive_goaway = table[hyperframe.frame.GoAwayFrame]

        def goaway_keeps_streams(frame: Any) -> Any:
            result = receive_goaway(frame)
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            return result

        table[hyperframe.frame.GoAwayFrame] = goaway_keeps_streams

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        self.transport.write(self.h2.data_to_send())

    def send(self, headers: list[tuple[str, str]] | None, data: bytes, end: bool, ping: bool = False) -> None:
        if headers is not None:
            self.h2.send_headers(1, headers)
        self.h2.send_data(1, data, end_stream=end)
        if ping:
            self.h2.ping(b"inflight")
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.PingAckReceived) and not self.pinged.called:
                self.pinged.callback(None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                if not self.goaway.called:
                    self.goaway.callback(event.last_stream_id)
            elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                self.headers.update(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived):
                self.data += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and not self.ended.called:
                self.ended.callback(None)
        self._flush()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.ended.called:
            self.ended.errback(AssertionError(f"connection lost before the call ended: {reason}"))


def _final_response(raw: bytes) -> tuple[int, bytes]:
    """Status and (de-chunked) body of the last response in ``raw``, after any 100 Continue."""
    if raw.startswith(b"HTTP/1.1 100"):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
    if headers.get(b"transfer-encoding") == b"chunked":
        out = b""
        while True:
            size_line, body = body.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, body = out + body[:size], body[size + 2 :]
        body = out
    return status, body


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = default_reactor.seconds() + timeout
    while not predicate():
        if default_reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(default_reactor, 0.01)


@pytest_twisted.ensureDeferred
async def test_sigterm_ends_streams_unavailable_finishes_unary_and_exits(dev_gateway: DevGatewayProcess) -> None:
    key, session = await login(dev_gateway.url, "lifecycle@example.com")
    clients = {p: GatewayClient(dev_gateway.url, p, key=key, session=session) for p in PROTOCOLS}
    try:
        events: dict[str, list[str]] = {p: [] for p in PROTOCOLS}
        streams = {p: c.subscribe(lambda e, p=p: events[p].append(e.event_type)) for p, c in clients.items()}
        outcomes: dict[str, Any] = {}
        for p, d in streams.items():
            d.addBoth(lambda r, p=p: outcomes.__setitem__(p, r))
        await _until(lambda: all(events.values()) or bool(outcomes), "every stream's first event")
        assert not outcomes, outcomes
        assert all(e[0] == "gateway.server_time" for e in events.values()), events

        # A unary call in flight: headers and half the body are with the gateway.
        request = sign_request(key, session.device_session_id, "user.profile.get", b"", clock=default_reactor)
        body = request.SerializeToString()
        raw = _RawHttp()
        endpoint = endpoints.TCP4ClientEndpoint(default_reactor, "127.0.0.1", dev_gateway.port)
        await endpoints.connectProtocol(endpoint, raw)
        assert raw.transport is not None
        half = len(body) // 2
        raw.transport.write(
            b"POST /gateway.v1.Gateway/ExecuteCommand HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/proto\r\nConnect-Protocol-Version: 1\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:half]
        )
        await raw.continued

        # And a gRPC call over HTTP/2: HEADERS and half the message sent, then a PING whose ACK
        # proves the gateway has processed the frames before it.
        grpc_request = sign_request(
            key, session.device_session_id, "user.profile.get", b"", clock=default_reactor
        )
        message = encode_frame(grpc_request.SerializeToString())
        grpc = _RawH2()
        await endpoints.connectProtocol(endpoint, grpc)
        grpc.send(
            [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{dev_gateway.port}"),
             (":path", "/gateway.v1.Gateway/ExecuteCommand"), ("content-type", "application/grpc"),
             ("te", "trailers")],
            message[: len(message) // 2], end=False, ping=True,
        )  # fmt: skip
        await grpc.pinged

        os.kill(dev_gateway.process.pid, signal.SIGTERM)
        started = time.monotonic()

        await _until(lambda: len(outcomes) == len(PROTOCOLS), "every stream to end")
        for p, outcome in outcomes.items():
            assert isinstance(outcome, defer.Failure) and outcome.check(RpcCallError), (p, outcome)
            assert outcome.value.code == Code.UNAVAILABLE, (p, outcome.value)

        # HTTP/2: GOAWAY lets stream 1 finish; the rest of the message completes the call.
        assert await grpc.goaway.addTimeout(DEFAULT_DRAIN_S, default_reactor) >= 1
        grpc.send(None, message[len(message) // 2 :], end=True)
        await grpc.ended.addTimeout(DEFAULT_DRAIN_S, default_reactor)
        assert grpc.headers.get(":status") == "200" and grpc.headers.get("grpc-status") == "0", grpc.headers
        grpc_response = ExecuteCommandResponse()
        grpc_response.ParseFromString(grpc.data[5:])
        assert grpc_response.envelope.request_id == grpc_request.envelope.request_id
        assert grpc_response.envelope.result_code == "ok"

        raw.transport.write(body[half:])
        status, answer = _final_response(await raw.closed)
        assert status == 200, answer
        response = ExecuteCommandResponse()
        response.ParseFromString(answer)
        gateway_key = GatewayKey.load(dev_gateway.state_dir / "gateway.key")
        verified = verify_response(
            response, session.device_session_id, request.envelope.request_id, gateway_key.public_key
        )
        assert verified.ok, verified.result_code

        await _until(lambda: dev_gateway.process.poll() is not None, "the process to exit", DEFAULT_DRAIN_S)
        assert time.monotonic() - started < DEFAULT_DRAIN_S
        assert dev_gateway.process.returncode == 0, dev_gateway.text()
        log = dev_gateway.text()
        assert "3 event streams ended" in log and "gatewayd stopped" in log, log
    finally:
        for client in clients.values():
            await client.close()


# --- starts that must fail ------------------------------------------------------------------


def _run(args: list[str], cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWIST, "--log-format=text", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[server]\nlisten = "tcp:0"\nlisten_queue = 5\n', "server.listen_queue"),  # an unknown key
        ('[server]\nmax_message_bytes = "big"\n', "server.max_message_bytes"),
        ("[server\nlisten = \n", "bad.toml"),  # not TOML at all: the file is named
    ],
)
def test_bad_config_names_the_key_and_exits_non_zero(tmp_path: Path, toml: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = _run(["gatewayd", "--config", str(config)], tmp_path)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr


def test_production_without_signing_key_fails_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "prod.toml"
    config.write_text(f'[server]\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n')
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [TWIST, "--log-format=text", "gatewayd", "--config", str(config)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        # It must exit; a process whose reactor has run for 3 s without exiting never will.
        deadline = time.monotonic() + START_TIMEOUT_S
        running_since: float | None = None
        while process.poll() is None and time.monotonic() < deadline:
            if running_since is None and "Starting reactor" in log.read_text(errors="replace"):
                running_since = time.monotonic()
            if running_since is not None and time.monotonic() - running_since > 3.0:
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    text = log.read_text(errors="replace")
    assert process.returncode > 0, text
    assert "keys.signing_key" in text, text
