"""A real ``twist gatewayd --dev`` process for hostile clients, and what the tests watch it with.

- ``GatewayProcess``: the process (started once per test module), its port, its
  resident memory (``rss_bytes`` from /proc/PID/status) and the server side of
  any TCP connection to it (``server_socket_state`` from /proc/net/tcp*).
- ``HealthProber``: a well-behaved client on its own HTTP/2 connection that
  asks Health/Check back to back while an attack runs; afterwards it says how
  many calls it made and how slow the slowest was.
- ``attack``: a context for one attack: RSS before, the prober throughout,
  and on exit the assertions every hostile test shares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.rpc.framing import encode_frame, split_grpc_web_body
from gatewayd.testing.devprocess import DevGatewayProcess, start_dev_process
from gatewayd.testing.harness import CHECK, check_request
from gatewayd.testing.raw_h2 import RawH2Client
from gatewayd.testing.raw_http1 import RawHttp1, http1_request, parse_http1_response

#: How much the gateway's resident memory may grow during one attack. Generous on purpose
#: (allocator noise, caches warming up); each attack sends well over this much, so a
#: gateway that buffered what it was sent, or what it decoded, would exceed it.
RSS_GROWTH_BOUND = 48 * 1024 * 1024
#: The well-behaved client's slowest Health/Check during an attack (a loaded CI machine).
SLOWEST_CHECK_S = 3.0

# /proc/net/tcp states (include/net/tcp_states.h).
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


@dataclass
class GatewayProcess:
    """A ``twist gatewayd --dev`` child (gatewayd.testing.devprocess) and what hostile tests read of it."""

    dev: DevGatewayProcess

    @property
    def port(self) -> int:
        return self.dev.port

    @property
    def url(self) -> str:
        return self.dev.url

    def text(self) -> str:
        return self.dev.text()

    def rss_bytes(self) -> int:
        """Resident memory now (VmRSS)."""
        for line in Path(f"/proc/{self.dev.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def server_socket_state(self, client_port: int) -> str | None:
        """The state of the gateway's end of the connection from ``client_port``, or None once it is gone."""
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], int(fields[3], 16)
                if int(local.rsplit(":", 1)[1], 16) == self.port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    return TCP_STATES.get(state, str(state))
        return None

    def assert_alive(self) -> None:
        process = self.dev.process
        assert process.poll() is None, f"the gateway exited ({process.returncode}):\n{self.text()[-3000:]}"


def run_gateway(directory: Path, config: str) -> Iterator[GatewayProcess]:
    """``twist gatewayd --dev --config`` with ``config`` (TOML), ready when yielded; stopped afterwards."""
    dev = start_dev_process(directory, config)
    try:
        yield GatewayProcess(dev)
    finally:
        dev.stop()


async def h2_client(port: int, **kwargs: Any) -> RawH2Client:
    """A raw HTTP/2 connection (``RawH2Client`` keyword arguments), its preface and SETTINGS sent."""
    client = RawH2Client(**kwargs)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


async def http1_client(port: int) -> RawHttp1:
    client = RawHttp1()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


def close(client: Any) -> None:
    if client.transport is not None and not client.closed:
        client.transport.abortConnection()


async def check_once(client: RawH2Client, timeout: float = SLOWEST_CHECK_S) -> None:
    """One Health/Check on ``client``, answered SERVING within ``timeout``."""
    sid = client.open_stream(CHECK, body=encode_frame(check_request()))
    await client.wait(lambda: client.responses[sid].done or client.closed, f"Check on stream {sid}", timeout)
    response = client.responses[sid]
    assert response.grpc_status() == 0, response
    [(_, payload)] = response.messages()
    assert health_pb2.HealthCheckResponse.FromString(payload).status == health_pb2.HealthCheckResponse.SERVING
    del client.responses[sid]
    client.frames.clear()


async def check_once_http1(port: int, timeout: float = SLOWEST_CHECK_S) -> None:
    """One gRPC-Web Health/Check over HTTP/1.1 on a new connection, answered SERVING within ``timeout``."""
    client = await http1_client(port)
    assert client.transport is not None
    client.transport.write(http1_request("POST", CHECK, encode_frame(check_request()),
                                         [("content-type", "application/grpc-web+proto")]))
    await client.wait(lambda: client.closed, "the HTTP/1.1 Check", timeout)
    response = parse_http1_response(client.received)
    messages, trailers = split_grpc_web_body(response.body, 1 << 20)
    assert response.status == 200 and trailers.get("grpc-status") == "0", response
    assert health_pb2.HealthCheckResponse.FromString(messages[0]).status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class HealthProber:
    """Health/Check back to back until ``stop()``, over HTTP/2 on one connection of its own or
    (``http1``) gRPC-Web over HTTP/1.1, a new connection per call; every call must succeed."""

    port: int
    http1: bool = False
    calls: int = 0
    slowest_s: float = 0.0
    failure: BaseException | None = None
    _client: RawH2Client | None = None
    _running: bool = False
    _done: defer.Deferred[None] = field(default_factory=defer.Deferred)

    async def start(self) -> None:
        if not self.http1:
            self._client = await h2_client(self.port)
        await self._check()  # answered before the attack begins
        self._running = True
        defer.ensureDeferred(self._loop()).chainDeferred(self._done)

    async def _check(self) -> None:
        if self._client is None:
            await check_once_http1(self.port)
        else:
            await check_once(self._client)

    async def _loop(self) -> None:
        try:
            while self._running:
                start = reactor.seconds()
                await self._check()
                self.slowest_s = max(self.slowest_s, reactor.seconds() - start)
                self.calls += 1
                await task.deferLater(reactor, 0.01, lambda: None)  # a client, not a flood
        except BaseException as e:
            self.failure = e

    async def stop(self) -> None:
        """Stop, then assert the client was served throughout: before, during (at least one call,
        none failed or slow) and after the attack."""
        self._running = False
        await self._done
        assert self.failure is None, f"the well-behaved client failed after {self.calls} calls: {self.failure!r}"
        assert self.calls >= 1, "the well-behaved client made no call during the attack"
        await self._check()  # and on the same connection after it
        if self._client is not None:
            close(self._client)
        assert self.slowest_s < SLOWEST_CHECK_S, self.slowest_s


@dataclass
class Attack:
    """What one attack measured: the gateway's RSS before it and at its peak so far."""

    gateway: GatewayProcess
    prober: HealthProber
    rss_before: int
    rss_peak: int = 0

    def sample(self) -> int:
        """Sample RSS now (call during the attack too, so the peak is seen)."""
        rss = self.gateway.rss_bytes()
        self.rss_peak = max(self.rss_peak, rss)
        return rss

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


@asynccontextmanager
async def attack(gateway: GatewayProcess, rss_bound: int = RSS_GROWTH_BOUND, *,
                 http1: bool = False) -> AsyncIterator[Attack]:
    """One attack: a prober (HTTP/2, or ``http1``) runs throughout; on a clean exit the gateway is
    alive, the prober was served, and RSS grew by less than ``rss_bound``."""
    gateway.assert_alive()
    prober = HealthProber(gateway.port, http1)
    await prober.start()
    state = Attack(gateway, prober, gateway.rss_bytes())
    try:
        yield state
    except BaseException:
        await defer.ensureDeferred(_quietly(prober.stop()))
        raise
    state.sample()
    await prober.stop()
    gateway.assert_alive()
    assert state.growth < rss_bound, f"RSS grew by {state.growth / 2**20:.1f} MiB (bound {rss_bound / 2**20:.0f} MiB)"


async def _quietly(coro: Any) -> None:
    try:
        await coro
    except BaseException:
        pass


async def sample_until(state: Attack, predicate: Any, what: str, timeout: float = 10.0) -> None:
    """Wait until ``predicate()``, sampling RSS as we go (bounded)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        state.sample()
        if reactor.seconds() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {what}")
        await task.deferLater(reactor, 0.02, lambda: None)
