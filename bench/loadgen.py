"""A small load generator for signed ExecuteCommand calls (h2load sends one body; we need N).

``python -m bench.loadgen --port P --sessions sessions.json --protocol grpc|connect-h2|connect-h1 ...``

It logs nothing in: ``sessions.json`` (written by the orchestrator) holds
``[{"device_session_id", "seed_hex"}]``. Before the clock starts it pre-signs
``--requests`` distinct requests (a fresh request_id and timestamp each, so the
replay store is exercised), round-robin over the sessions, and pre-encodes
them for the protocol. Then it keeps ``--streams`` calls in flight on each of
``--connections`` connections (HTTP/1.1: one call per connection at a time)
until every request is answered, and prints one JSON line: throughput,
latency percentiles and a count of each outcome (``ok`` is gRPC status 0 /
HTTP 200 with result_code "ok").

``--duration D --warmup W``: a timed run instead. No new call starts after
``W + D`` seconds (or when the pre-signed requests run out); only calls that
complete inside the window ``[W, W + D]`` count (throughput, latencies,
outcomes), and ``--cpu-pids`` are sampled at the window's edges, so
``cpu_us`` is each process's CPU per call answered in the window. The load
generator's own CPU share over the window is ``client_cpu`` (near 1.0: it is
the bottleneck, the comparison is void).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from bench._common import percentile
from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse, RequestEnvelope
from gatewayd.signing import request_signing_input, sha256

PATH = "/gateway.v1.Gateway/ExecuteCommand"


def sign_requests(sessions: list[dict[str, str]], n: int, message_type: str, payload: bytes) -> list[bytes]:
    """``n`` serialized ExecuteCommandRequests, each with a unique request_id and a fresh timestamp."""
    from nacl.signing import SigningKey

    keys = [(s["device_session_id"], SigningKey(bytes.fromhex(s["seed_hex"]))) for s in sessions]
    digest = sha256(payload)
    prefix = os.urandom(6).hex()
    out = []
    for i in range(n):
        session_id, key = keys[i % len(keys)]
        env = RequestEnvelope(protocol_version=1, device_session_id=session_id, request_id=f"b-{prefix}-{i}",
                              timestamp_ms=int(time.time() * 1000), message_type=message_type,
                              payload_hash=digest)
        sig = key.sign(request_signing_input(1, session_id, env.request_id, env.timestamp_ms,
                                             message_type, digest)).signature
        out.append(ExecuteCommandRequest(envelope=env, payload_bytes=payload, signature=sig).SerializeToString())
    return out


def result_code(body: bytes) -> str:
    try:
        return ExecuteCommandResponse.FromString(body).envelope.result_code or "empty"
    except Exception:
        return "undecodable"


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.outcomes: Counter[str] = Counter()
        self.calls: list[tuple[float, float, str]] = []  # (started, ended, outcome)

    def done(self, started: float, outcome: str) -> None:
        ended = time.perf_counter()
        self.latencies.append(ended - started)
        self.outcomes[outcome] += 1
        self.calls.append((started, ended, outcome))


def until(work: Iterator[bytes], deadline: float) -> Iterator[bytes]:
    """``work`` until ``deadline`` (perf_counter) has passed."""
    for body in work:
        if time.perf_counter() >= deadline:
            return
        yield body


class CpuWindow:
    """CPU seconds of some processes (and of this one) at the start and end of the timed window."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        # (perf_counter, own cpu, (user, system) cpu per pid)
        self.marks: list[tuple[float, float, list[tuple[float, float]]]] = []

    def mark(self) -> None:
        from bench._common import cpu_split

        self.marks.append((time.perf_counter(), sum(os.times()[:2]), [cpu_split(p) for p in self.pids]))


class H2Client(asyncio.Protocol):
    """One h2c connection keeping up to ``streams`` calls in flight from a shared iterator."""

    def __init__(self, port: int, protocol: str, work: Iterator[bytes], streams: int, stats: Stats,
                 finished: asyncio.Future[None]) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None,
                                                                          validate_outbound_headers=False,
                                                                          validate_inbound_headers=False))
        self.grpc = protocol == "grpc"
        ctype = b"application/grpc" if self.grpc else b"application/proto"
        self.headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()),
                        (b":authority", f"127.0.0.1:{port}".encode()), (b"content-type", ctype)]
        if self.grpc:
            self.headers.append((b"te", b"trailers"))
        self.work, self.streams, self.stats, self.finished = work, streams, stats, finished
        self.inflight: dict[int, list[Any]] = {}  # stream -> [started, status, body, grpc_status]
        self.exhausted = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.conn.increment_flow_control_window(1 << 28)
        self.fill()

    def fill(self) -> None:
        while not self.exhausted and len(self.inflight) < self.streams:
            body = next(self.work, None)
            if body is None:
                self.exhausted = True
                break
            sid = self.conn.get_next_available_stream_id()
            data = struct.pack(">BI", 0, len(body)) + body if self.grpc else body
            hdrs = self.headers if self.grpc else [*self.headers, (b"content-length", str(len(data)).encode())]
            self.conn.send_headers(sid, hdrs)
            self.conn.send_data(sid, data, end_stream=True)
            self.inflight[sid] = [time.perf_counter(), b"", b"", None]
        self.transport.write(self.conn.data_to_send())
        if self.exhausted and not self.inflight and not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                st = self.inflight[event.stream_id]
                for k, v in event.headers:
                    if k == b":status":
                        st[1] = v
                    elif k == b"grpc-status":
                        st[3] = v
            elif isinstance(event, h2.events.DataReceived):
                self.inflight[event.stream_id][2] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                for k, v in event.headers:
                    if k == b"grpc-status":
                        self.inflight[event.stream_id][3] = v
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                st = self.inflight.pop(event.stream_id)
                self.stats.done(st[0], self.outcome(st, isinstance(event, h2.events.StreamReset)))
        self.fill()

    def outcome(self, st: list[Any], reset: bool) -> str:
        if reset:
            return "reset"
        if self.grpc:
            if st[3] != b"0":
                return f"grpc-status-{(st[3] or b'?').decode()}"
            return result_code(st[2][5:])
        if st[1] != b"200":
            return f"http-{st[1].decode()}"
        return result_code(st[2])

    def connection_lost(self, exc: Exception | None) -> None:
        for st in self.inflight.values():
            self.stats.done(st[0], "connection-lost")
        self.inflight.clear()
        if not self.finished.done():
            self.finished.set_result(None)


class H1Client(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one Connect unary call at a time."""

    def __init__(self, port: int, work: Iterator[bytes], stats: Stats, finished: asyncio.Future[None]) -> None:
        self.head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Content-Type: application/proto\r\nContent-Length: ").encode()
        self.work, self.stats, self.finished = work, stats, finished
        self.buf = b""
        self.started = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        body = next(self.work, None)
        if body is None:
            self.transport.close()
            return
        self.started = time.perf_counter()
        self.transport.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            status = head[0].split()[1]
            fields = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:])}
            if "content-length" not in fields:
                raise RuntimeError(f"unsupported response framing: {fields}")
            total = end + 4 + int(fields["content-length"])
            if len(self.buf) < total:
                return
            body, self.buf = self.buf[end + 4:total], self.buf[total:]
            self.stats.done(self.started, result_code(body) if status == "200" else f"http-{status}")
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sessions = json.loads(Path(args.sessions).read_text())
    bodies = sign_requests(sessions, args.requests, args.message_type, args.payload.encode())
    work: Iterator[bytes] = iter(bodies)
    stats = Stats()
    loop = asyncio.get_running_loop()
    futures = []
    t0 = time.perf_counter()
    window = CpuWindow(args.cpu_pids)
    if args.duration:
        work = until(work, t0 + args.warmup + args.duration)
        loop.call_later(args.warmup, window.mark)
        loop.call_later(args.warmup + args.duration, window.mark)
    for _ in range(args.connections):
        fut: asyncio.Future[None] = loop.create_future()
        futures.append(fut)
        if args.protocol == "connect-h1":
            factory: Any = lambda f=fut: H1Client(args.port, work, stats, f)  # noqa: E731
        else:
            factory = lambda f=fut: H2Client(args.port, args.protocol, work, args.streams, stats, f)  # noqa: E731
        await loop.create_connection(factory, "127.0.0.1", args.port)
    await asyncio.wait_for(asyncio.gather(*futures), args.timeout)
    if args.duration:
        return timed_result(args, stats, window)
    elapsed = time.perf_counter() - t0
    lat = [x * 1000 for x in stats.latencies]
    return {"protocol": args.protocol, "requests": args.requests, "answered": len(lat),
            "connections": args.connections, "streams": args.streams, "elapsed_s": elapsed,
            "rps": len(lat) / elapsed, "mean_ms": sum(lat) / max(1, len(lat)),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=0.0),
            "first_ms": lat[0] if lat else 0.0, "outcomes": dict(stats.outcomes)}


def timed_result(args: argparse.Namespace, stats: Stats, window: CpuWindow) -> dict[str, Any]:
    """Throughput, latencies and CPU per call of the calls that completed inside the window."""
    if len(window.marks) < 2:
        raise RuntimeError("the run ended before its window: raise --requests")
    (w0, own0, cpu0), (w1, own1, cpu1) = window.marks[:2]
    inside = [(s, e, o) for s, e, o in stats.calls if w0 <= e <= w1]
    lat = [(e - s) * 1000 for s, e, _ in inside]
    outcomes = Counter(o for _, _, o in inside)
    seconds = w1 - w0
    p50 = percentile(lat, 50)
    return {"protocol": args.protocol, "requests": args.requests, "answered": len(lat),
            "connections": args.connections, "streams": args.streams, "window_s": seconds,
            "rps": len(lat) / seconds, "ok_rps": outcomes.get("ok", 0) / seconds,
            "mean_ms": sum(lat) / max(1, len(lat)), "p50_ms": p50, "p99_ms": percentile(lat, 99),
            "max_ms": max(lat, default=0.0), "max_over_p50": max(lat, default=0.0) / p50 if lat else 0.0,
            "cpu_us": [1e6 * (sum(b) - sum(a)) / max(1, len(lat)) for a, b in zip(cpu0, cpu1, strict=True)],
            "sys_us": [1e6 * (b[1] - a[1]) / max(1, len(lat)) for a, b in zip(cpu0, cpu1, strict=True)],
            "client_cpu": (own1 - own0) / seconds, "outcomes": dict(outcomes),
            "outcomes_all": dict(stats.outcomes), "unused_requests": args.requests - len(stats.calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", required=True)
    parser.add_argument("--protocol", choices=["grpc", "connect-h2", "connect-h1"], default="grpc")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--message-type", default="user.profile.get")
    parser.add_argument("--payload", default="")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--duration", type=float, default=0.0, help="timed run: seconds measured after --warmup")
    parser.add_argument("--warmup", type=float, default=0.0, help="timed run: seconds before the window")
    parser.add_argument("--cpu-pids", type=int, nargs="*", default=[], help="timed run: processes to charge")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
