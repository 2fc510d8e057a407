"""In-process cost of one ExecuteCommand between the decoded gRPC frame and the encoded answer.

A ``Gateway`` is built (nothing listens, the reactor never runs) with memory
stores, its session cache answering from memory, and one pooled backend
connection on a fake transport. Each call goes through ``RpcApplication.handler_for``,
``ServerCall.body_received/body_complete`` (decode, pipeline, stages, the backend
request written to the fake transport), then the canned backend answer is fed to
``BackendConnection.dataReceived`` (parse, route stage, signer, encode, the gRPC
answer written to a fake exchange). No sockets, no HTTP/2, no access log.

``--no-crypto`` replaces the Ed25519 verify and sign with constant-time stubs, so
the numbers are the Python part only (what this harness is for). Prints the best
of ``--repeats`` runs in microseconds per call. ``--profile`` prints cProfile's
top functions by self time instead.

    .venv/bin/python -m bench.pipeline_micro --calls 20000 --repeats 5 --no-crypto

Instructions per call (load-independent), counting only the calls of one batch:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/pm.out --collect-atstart=no \\
        --toggle-collect=functools_reduce .venv/bin/python -m bench.pipeline_micro \\
        --calls 2000 --repeats 1 --no-crypto --count
    # then: grep summary /tmp/pm.out, divided by --calls
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from twisted.internet import defer

from bench.loadgen import sign_requests
from gatewayd.backend.connection import BackendConnection
from gatewayd.backend.rest import Session
from gatewayd.config import Budget, Config, LimitsConfig

BIG = Budget(rate=1e9, burst=1_000_000_000)
PATH = "/gateway.v1.Gateway/ExecuteCommand"
BODY = b'{"user_id":"u-1","email":"bench@example.com","display_name":"Bench"}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: TwistedWeb/24.11.0\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class FakeTransport:
    """Enough of a TCP transport for BackendConnection (writes are dropped)."""

    disconnecting = False
    connected = True

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def abortConnection(self) -> None:
        raise AssertionError("backend connection aborted")

    def loseConnection(self) -> None:
        pass


class FakeExchange:
    """One HTTP/2 gRPC request and what was answered on it."""

    method = "POST"
    path = PATH
    http2 = True
    peer = "127.0.0.1:40000"
    buffered_bytes = 0

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.status = 0
        self.trailers: Any = None

    def send_headers(self, status: int, headers: Any, end_stream: bool = False) -> None:
        self.status = status

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        pass

    def send_trailers(self, trailers: Any) -> None:
        self.trailers = trailers

    def reset(self) -> None:
        pass

    def on_drain(self, callback: Any) -> None:
        pass


def stub_crypto() -> None:
    """Replace the Ed25519 verify and sign with constants (``--no-crypto``: the Python part only)."""
    import gatewayd.pipeline.signature as signature_module
    from gatewayd.signing import GatewayKey

    signature_module.verify = lambda public_key, message, signature: True  # type: ignore[assignment]
    GatewayKey.sign = lambda self, message: b"\x00" * 64  # type: ignore[method-assign]


def bench_config(work: Path) -> Config:
    """Dev mode in ``work``, memory stores, a backend nobody listens on, budgets out of the way."""
    return Config().replace(
        dev={"enabled": True, "state_dir": str(work)},
        stores={"kind": "memory"},
        backend={"base_url": "http://127.0.0.1:9"},
        limits=LimitsConfig(ip=BIG, session=BIG, user=BIG, message_type=BIG),
    )


def build(work: Path, no_crypto: bool) -> tuple[Any, BackendConnection, list[bytes], dict[str, str]]:
    from twisted.internet import reactor

    from gatewayd.service import Gateway

    if no_crypto:
        stub_crypto()
    gateway = Gateway(bench_config(work), reactor)
    gateway.rpc.on_finish = None  # the access log is another helper's
    sessions = []
    known: dict[str, Session] = {}
    for i in range(8):
        key = SigningKey.generate()
        sid = f"ds-{i:04d}-bench"
        known[sid] = Session(sid, f"u-{i}", bytes(key.verify_key), "active")
        sessions.append({"device_session_id": sid, "seed_hex": bytes(key).hex()})
    gateway.sessions._lookup = lambda sid, call=None: defer.succeed(known.get(sid))
    pool = gateway.backend.pool
    connection = pool._factory.buildProtocol(None)
    connection.makeConnection(FakeTransport())  # type: ignore[arg-type]
    pool._open.add(connection)
    pool._idle.append(connection)
    headers = {"content-type": "application/grpc", "te": "trailers", "user-agent": "grpc-python/1.0",
               ":authority": "127.0.0.1"}
    return gateway, connection, sessions, headers


def frames(sessions: list[dict[str, str]], n: int) -> list[bytes]:
    bodies = sign_requests(sessions, n, "user.profile.get", b"")
    return [struct.pack(">BI", 0, len(b)) + b for b in bodies]


def run(gateway: Any, connection: BackendConnection, headers: dict[str, str], batch: list[bytes]) -> float:
    app = gateway.rpc
    handler_for = app.handler_for
    received = connection.dataReceived
    flush = connection.flush  # the end of the reactor turn, which writes the backend request
    start = time.perf_counter()
    for frame in batch:
        exchange = FakeExchange(headers)
        handler: Any = handler_for(exchange)
        handler.body_received(frame)
        handler.body_complete()
        flush()
        received(ANSWER)
    elapsed = time.perf_counter() - start
    if exchange.trailers is None or (b"grpc-status", b"0") not in exchange.trailers:
        raise SystemExit(f"last call did not succeed: {exchange.status} {exchange.trailers}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-crypto", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--count", action="store_true", help="run one batch inside functools.reduce (callgrind)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pipeline-micro-"))
    gateway, connection, sessions, headers = build(work, args.no_crypto)
    batches = [frames(sessions, args.calls) for _ in range(args.repeats + 1)]
    run(gateway, connection, headers, batches[0])  # warm-up
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for batch in batches[1:]:
            run(gateway, connection, headers, batch)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
        return
    if args.count:
        # Under ``valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce``
        # only what runs inside reduce() is counted: the calls of one batch, nothing else.
        batch = batches[1]
        functools.reduce(lambda _, b: run(gateway, connection, headers, b), [batch], 0.0)
        print(json.dumps({"bench": "pipeline_micro", "calls": len(batch), "counted": True}))
        return
    times = [run(gateway, connection, headers, batch) for batch in batches[1:]]
    per_call = sorted(1e6 * t / args.calls for t in times)
    print(json.dumps({"bench": "pipeline_micro", "calls": args.calls, "no_crypto": args.no_crypto,
                      "best_us": round(per_call[0], 2), "median_us": round(per_call[len(per_call) // 2], 2),
                      "all_us": [round(x, 2) for x in per_call]}))


if __name__ == "__main__":
    main()
