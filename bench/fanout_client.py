"""The fan-out client: opens N SubscribeEvents streams over gRPC h2c, publishes, times every delivery.

``python -m bench.fanout_client --port P --sessions S.json --connections C --streams S --gateway-pid PID``

1. pre-signs C*S SubscribeEventsRequests (unique request_ids, round-robin over the sessions);
2. reads the gateway's RSS, opens the streams and waits until each has received
   ``gateway.server_time``; reads the RSS again (per-stream memory = difference / N);
   (``--wave W``: W streams at a time, each wave answered before the next);
3. ``--singles`` times: sends one ``user.notes.create`` (first session) and waits until
   every stream has the event; latency per stream = arrival - send time;
4. a burst of ``--burst`` notes.create sent at once: deliveries/s = N*burst / time until all
   arrived.
Arrival time is taken when the client reads the bytes (before parsing them), but the client is one
Python process: with thousands of streams its own parsing delays later reads. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from nacl.signing import SigningKey

from bench._common import cpu_seconds, percentile, rss_kib
from bench.loadgen import sign_requests
from gatewayd._proto.gateway.v1.gateway_pb2 import (
    GatewayEvent,
    RequestEnvelope,
    SubscribeEventsRequest,
)
from gatewayd.signing import EMPTY_SHA256, request_signing_input

SUBSCRIBE = b"/gateway.v1.Gateway/SubscribeEvents"
EXECUTE = b"/gateway.v1.Gateway/ExecuteCommand"


def sign_subscriptions(sessions: list[dict[str, str]], n: int) -> list[bytes]:
    keys = [(s["device_session_id"], SigningKey(bytes.fromhex(s["seed_hex"]))) for s in sessions]
    prefix = os.urandom(6).hex()
    out = []
    for i in range(n):
        sid, key = keys[i % len(keys)]
        env = RequestEnvelope(protocol_version=1, device_session_id=sid, request_id=f"s-{prefix}-{i}",
                              timestamp_ms=int(time.time() * 1000), message_type="gateway.subscribe",
                              payload_hash=EMPTY_SHA256)
        sig = key.sign(request_signing_input(1, sid, env.request_id, env.timestamp_ms, env.message_type,
                                             EMPTY_SHA256)).signature
        out.append(SubscribeEventsRequest(envelope=env, signature=sig).SerializeToString())
    return out


class Stream:
    __slots__ = ("arrivals", "buf", "count", "ended", "first_type")

    def __init__(self) -> None:
        self.buf = b""
        self.count = 0
        self.arrivals: list[float] = []
        self.ended: str | None = None
        self.first_type = ""


class Conn(asyncio.Protocol):
    """One h2c connection: opens its streams once the server's SETTINGS arrived."""

    def __init__(self, port: int, bodies: list[bytes], streams: list[Stream], unary: dict[int, Any]) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            validate_inbound_headers=False))
        self.port, self.bodies, self.streams_out = port, bodies, streams
        self.by_id: dict[int, Stream] = {}
        self.unary = unary  # stream id -> future, for ExecuteCommand on this connection
        self.opened = False
        self.settings = asyncio.get_running_loop().create_future()

    def headers(self, path: bytes) -> list[tuple[bytes, bytes]]:
        return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                (b":authority", f"127.0.0.1:{self.port}".encode()), (b"content-type", b"application/grpc"),
                (b"te", b"trailers")]

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.h2.increment_flow_control_window(1 << 28)
        transport.write(self.h2.data_to_send())

    def open_streams(self, start: int = 0, stop: int | None = None) -> None:
        hdrs = self.headers(SUBSCRIBE)
        for body in self.bodies[start:stop]:
            sid = self.h2.get_next_available_stream_id()
            st = Stream()
            self.by_id[sid] = st
            self.streams_out.append(st)
            self.h2.send_headers(sid, hdrs)
            self.h2.send_data(sid, struct.pack(">BI", 0, len(body)) + body, end_stream=True)
        self.transport.write(self.h2.data_to_send())

    def execute(self, body: bytes) -> asyncio.Future[float]:
        sid = self.h2.get_next_available_stream_id()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.unary[sid] = [fut, b"", None]
        self.h2.send_headers(sid, self.headers(EXECUTE))
        self.h2.send_data(sid, struct.pack(">BI", 0, len(body)) + body, end_stream=True)
        self.transport.write(self.h2.data_to_send())
        return fut

    def data_received(self, data: bytes) -> None:
        self.received(data, time.perf_counter())

    def received(self, data: bytes, now: float) -> None:
        """Handle ``data`` as read at ``now`` (perf_counter; a recording subscriber replays later)."""
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                st = self.by_id.get(ev.stream_id)
                if st is None:
                    if ev.stream_id in self.unary:
                        self.unary[ev.stream_id][1] += ev.data
                    continue
                buf = st.buf + ev.data
                while len(buf) >= 5:
                    (length,) = struct.unpack_from(">I", buf, 1)
                    if len(buf) < 5 + length:
                        break
                    if st.count == 0:
                        st.first_type = GatewayEvent.FromString(buf[5:5 + length]).event_type
                    else:
                        st.arrivals.append(now)
                    st.count += 1
                    buf = buf[5 + length:]
                st.buf = buf
            elif isinstance(ev, h2.events.RemoteSettingsChanged) and not self.settings.done():
                self.settings.set_result(None)
            elif isinstance(ev, h2.events.TrailersReceived | h2.events.ResponseReceived):
                status = dict(ev.headers).get(b"grpc-status")
                if status is not None:
                    st = self.by_id.get(ev.stream_id)
                    if st is not None:
                        st.ended = f"grpc-status {status.decode()} {dict(ev.headers).get(b'grpc-message', b'')!r}"
                    elif ev.stream_id in self.unary:
                        self.unary[ev.stream_id][2] = status
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                u = self.unary.pop(ev.stream_id, None)
                if u is not None and not u[0].done():
                    u[0].set_result(now) if u[2] == b"0" else u[0].set_exception(RuntimeError(f"publish {u[2]}"))
                st = self.by_id.get(ev.stream_id)
                if st is not None and st.ended is None:
                    st.ended = "reset" if isinstance(ev, h2.events.StreamReset) else "ended"
        out = self.h2.data_to_send()
        if out:
            self.transport.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        for st in self.by_id.values():
            if st.ended is None:
                st.ended = "connection lost"


async def wait_until(predicate: Any, timeout_s: float, what: str) -> float:
    t0 = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(what)
        await asyncio.sleep(0.005)
    return time.perf_counter() - t0


async def open_streams(conn_class: type[Conn], port: int, sessions: list[dict[str, str]], connections: int,
                       per_conn: int, wave: int, timeout_s: float, streams: list[Stream]) -> list[Any]:
    """Connect ``connections`` times and open ``per_conn`` streams on each, ``wave`` at a time across
    connections (0: all at once), each wave answered before the next; ``streams`` fills up.

    Each wave is signed just before it is sent: opening 100,000 streams on a busy machine takes longer
    than the freshness window (300 s)."""
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(functools.partial(conn_class, port, [b""] * per_conn, streams, {}),
                                               "127.0.0.1", port)
        await asyncio.wait_for(conn.settings, 10)
        conns.append(conn)
    n = connections * per_conn
    plan = [(conn, i) for i in range(per_conn) for conn in conns]  # interleave connections
    for w in range(0, n, wave or n):
        batch = plan[w:w + (wave or n)]
        for (conn, i), body in zip(batch, sign_subscriptions(sessions, len(batch)), strict=True):
            conn.bodies[i] = body
            conn.open_streams(i, i + 1)
        target = min(n, w + (wave or n))
        try:
            await wait_until(lambda k=target: len(streams) >= k and all(s.count >= 1 or s.ended for s in streams),
                             timeout_s, "streams did not all open")
        except TimeoutError:
            break
    return conns


def ended_counts(streams: list[Stream]) -> dict[str, int]:
    """How many of ``streams`` ended, by how (times in the messages folded to ``N``)."""
    counts: dict[str, int] = {}
    for s in streams:
        if s.ended:
            how = re.sub(r"\d{6,}", "N", s.ended)
            counts[how] = counts.get(how, 0) + 1
    return counts


def add_stream_args(parser: argparse.ArgumentParser, timeout_s: float) -> None:
    """The options both fan-out clients take: where, who, how many, how fast to open."""
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", required=True)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--wave", type=int, default=0, help="open streams this many at a time (0: all at once)")
    parser.add_argument("--timeout", type=float, default=timeout_s)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sessions = json.loads(Path(args.sessions).read_text())
    n = args.connections * args.streams
    loop = asyncio.get_running_loop()
    rss_before = rss_kib(args.gateway_pid)
    cpu_open = cpu_seconds(args.gateway_pid)
    streams: list[Stream] = []
    conns = []
    unary: dict[int, Any] = {}
    t0 = time.perf_counter()
    conns = await open_streams(Conn, args.port, sessions, args.connections, args.streams, args.wave, args.timeout,
                               streams)
    open_s = time.perf_counter() - t0
    cpu_open = cpu_seconds(args.gateway_pid) - cpu_open
    opened = sum(1 for s in streams if s.count >= 1 and s.ended is None)
    failed = ended_counts(streams)
    await asyncio.sleep(1.0)  # let the gateway finish its bookkeeping before sampling memory
    rss_after = rss_kib(args.gateway_pid)
    _, pub = await loop.create_connection(lambda: Conn(args.port, [], [], unary), "127.0.0.1", args.port)
    await asyncio.wait_for(pub.settings, 10)
    notes = sign_requests(sessions[:1], args.singles + args.burst, "user.notes.create", b'{"text":"fan-out"}')
    live = [s for s in streams if s.count >= 1 and s.ended is None]
    publishes: list[asyncio.Future[float]] = []
    client_cpu0 = sum(os.times()[:2])
    latencies: list[float] = []
    missing = 0
    expected = 0
    for i in range(args.singles):
        expected += 1
        sent = time.perf_counter()
        publishes.append(pub.execute(notes[i]))
        try:
            await wait_until(lambda e=expected: all(len(s.arrivals) >= e for s in live), args.timeout,
                             "single event not delivered everywhere")
        except TimeoutError:
            pass
        for s in live:
            if len(s.arrivals) >= expected:
                latencies.append((s.arrivals[expected - 1] - sent) * 1000)
            else:
                missing += 1
        await asyncio.sleep(0.2)
    cpu_burst = cpu_seconds(args.gateway_pid)
    sent = time.perf_counter()
    for body in notes[args.singles:]:
        publishes.append(pub.execute(body))
    expected += args.burst
    try:
        burst_s = await wait_until(lambda: all(len(s.arrivals) >= expected for s in live), args.timeout,
                                   "burst not delivered everywhere")
    except TimeoutError:
        burst_s = time.perf_counter() - sent
    cpu_burst = cpu_seconds(args.gateway_pid) - cpu_burst
    delivered = sum(min(len(s.arrivals), expected) - (expected - args.burst) for s in live)
    missing += args.burst * len(live) - delivered
    client_cpu = sum(os.times()[:2]) - client_cpu0
    await asyncio.wait(publishes, timeout=10)
    publish_outcomes: dict[str, int] = {}
    for f in publishes:
        key = "pending" if not f.done() else "ok" if f.exception() is None else str(f.exception())
        publish_outcomes[key] = publish_outcomes.get(key, 0) + 1
    ended_later = ended_counts(live)
    for conn in [*conns, pub]:
        conn.transport.close()
    return {"bench": "fanout", "connections": args.connections, "streams": args.streams, "n": n,
            "opened": opened, "open_failures": failed, "open_s": open_s,
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "rss_kib_per_stream": (rss_after - rss_before) / max(1, opened),
            "singles": args.singles, "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=float("nan")), "burst": args.burst, "burst_s": burst_s,
            "deliveries_per_s": delivered / burst_s if burst_s else 0.0, "events_per_s": args.burst / burst_s,
            "missing": missing, "publish_outcomes": publish_outcomes, "ended_after_open": ended_later,
            "client_cpu_s_publish_phase": client_cpu, "wave": args.wave,
            "cpu_us_per_open": 1e6 * cpu_open / max(1, opened),
            "cpu_us_per_delivery": 1e6 * cpu_burst / max(1, delivered),
            "first_types": sorted({s.first_type for s in streams})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_stream_args(parser, 90.0)
    parser.add_argument("--gateway-pid", type=int, required=True)
    parser.add_argument("--singles", type=int, default=3)
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
