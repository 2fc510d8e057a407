"""In-process cost of opening a SubscribeEvents stream: the whole gateway path but the sockets.

``python -m bench.open_micro --layout 10x1000 [--no-crypto] [--profile]``

A ``Gateway`` is built as ``bench/pipeline_micro.py`` builds it (memory stores,
its session cache answering from memory, nothing listening), and its
``RpcApplication`` serves ``connections`` ``ServerConnectionCore``s on a
``TurnClock`` (bench/fanout_micro.py), each with an h2 client. Signed
``SubscribeEvents`` requests (``bench.fanout_client.sign_subscriptions``) are sent
``--wave`` at a time, one per connection in turn, as bench/fanout_subscriber.py
sends them; each wave's bytes go to the cores, then the clock is turned until
nothing is due (the turn budget's later turns, the writes). The figure is the
CPU time (``process_time``) of the cores' receives and the turns, per stream
opened, best and median of ``--repeats`` (each repeat a fresh gateway): the real
SubscribeEvents handler, pipeline (stages 1-6), hub registration and greeting
(signed once per millisecond of the real clock, as in the gateway), h2 and the
gRPC framing. Left out: epoll, ``recv``/``send``, the reactor loop, access log.
Every stream is checked to have had its greeting and to be registered.

``--no-crypto`` stubs the Ed25519 verify and sign out (the Python part only);
``--profile`` prints cProfile's top functions of one repeat. ``--count`` runs the
server's part of each step inside ``functools.reduce``, so that callgrind counts
only that (instructions per open, load-independent):

    valgrind --tool=callgrind --callgrind-out-file=/tmp/om.out --collect-atstart=no \\
        --toggle-collect=functools_reduce .venv/bin/python -m bench.open_micro \\
        --layout 10x200 --repeats 1 --no-crypto --count
    # then: grep summary /tmp/om.out, divided by the streams opened
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import pstats
import statistics
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from nacl.signing import SigningKey
from twisted.internet import defer

from bench.fanout_client import SUBSCRIBE, sign_subscriptions
from bench.fanout_micro import Sink, TurnClock, read_answers
from bench.pipeline_micro import bench_config, stub_crypto
from gatewayd.backend.rest import Session
from gatewayd.http2.core import ServerConnectionCore
from gatewayd.http2.limits import TurnBudget

HEADERS = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", SUBSCRIBE), (b":authority", b"127.0.0.1:1"),
           (b"content-type", b"application/grpc"), (b"te", b"trailers")]


COUNTED = False  # --count: the server's part runs inside functools.reduce (callgrind's toggle)


def _receive(core: ServerConnectionCore, data: bytes) -> ServerConnectionCore:
    core.receive(data)
    return core


def _turn(_: None, clock: TurnClock) -> None:
    clock.turn()


class _OpensPerMs:
    """A clock that advances one millisecond every ``n`` reads (the greeting reads it once per open):
    the greeting is signed once per ``n`` opens, as at ~3,000 opens a second."""

    def __init__(self, n: int) -> None:
        self._reads = 0
        self._n = n
        self._start = time.time()

    def seconds(self) -> float:
        self._reads += 1
        return self._start + self._reads // self._n / 1000


class Client:
    """An h2 client on one core, as bench/fanout_client.py's; counts DATA bytes per stream."""

    def __init__(self, core: ServerConnectionCore, sink: Sink) -> None:
        self.core, self.sink = core, sink
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            validate_inbound_headers=False))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.h2.increment_flow_control_window(1 << 28)
        self.data: dict[int, int] = {}
        self.ended: set[int] = set()
        self.server_cpu = 0.0
        self.profiler: cProfile.Profile | None = None  # on for the core's part only

    def open(self, body: bytes) -> None:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, HEADERS)
        self.h2.send_data(sid, struct.pack(">BI", 0, len(body)) + body, end_stream=True)
        self.data[sid] = 0

    def send(self) -> bool:
        up = self.h2.data_to_send()
        if up:
            profiler = self.profiler
            t0 = time.process_time()
            if profiler is not None:
                profiler.enable()
            if COUNTED:
                functools.reduce(_receive, [up], self.core)
            else:
                self.core.receive(up)
            if profiler is not None:
                profiler.disable()
            self.server_cpu += time.process_time() - t0
        return bool(up)

    def read(self) -> bool:
        down = self.sink.take()
        if down:
            read_answers(self.h2, down, self.data, self.ended)
        return bool(down)


def build(work: Path, no_crypto: bool) -> Any:
    from twisted.internet import reactor

    from gatewayd.service import Gateway

    if no_crypto:
        stub_crypto()
    config = bench_config(work).replace(
        server={"max_concurrent_streams": 100_000, "idle_timeout_s": 0, "keepalive_interval_s": 0})
    return Gateway(config, reactor)


def sessions_for(gateway: Any) -> list[dict[str, str]]:
    """10 sessions of one user, known to the gateway's session cache's lookup."""
    known: dict[str, Session] = {}
    sessions = []
    for i in range(10):
        key = SigningKey.generate()
        sid = f"ds-{i:04d}-bench"
        known[sid] = Session(sid, "u-bench", bytes(key.verify_key), "active")
        sessions.append({"device_session_id": sid, "seed_hex": bytes(key).hex()})
    gateway.sessions._lookup = lambda sid, call=None: defer.succeed(known.get(sid))
    return sessions


def run(conns: int, streams: int, wave: int, no_crypto: bool, profiler: cProfile.Profile | None) -> float:
    """CPU µs per stream opened (cores' receives and the clock's turns)."""
    gateway = build(Path(tempfile.mkdtemp(prefix="open-micro-")), no_crypto)
    gateway.rpc.on_finish = None
    if COUNTED:  # counted under valgrind (~50x slower): the greeting's clock as fast as in the gateway
        gateway.subscribe.clock = _OpensPerMs(3)
    bodies = sign_subscriptions(sessions_for(gateway), conns * streams)
    clock = TurnClock()
    limits = gateway.factory.limits
    budget = TurnBudget(clock, limits.streams_per_turn)
    clients = []
    for _ in range(conns):
        sink = Sink()
        core = ServerConnectionCore(gateway.rpc, clock, limits, lambda s: None, sink, budget)  # type: ignore[arg-type]
        core.start("127.0.0.1")
        client = Client(core, sink)
        while client.send() | client.read():
            pass
        clients.append(client)
        client.profiler = profiler
    plan = [client for _ in range(streams) for client in clients]
    turns_cpu = 0.0
    for w in range(0, len(plan), wave):
        for i, client in enumerate(plan[w:w + wave]):
            client.open(bodies[w + i])
        while True:
            moved = False
            for client in clients:
                moved |= client.send()
            for client in clients:
                moved |= client.read()
            if clock.due():
                t = time.process_time()
                if profiler is not None:
                    profiler.enable()
                if COUNTED:
                    functools.reduce(_turn, [clock], None)
                else:
                    clock.turn()
                if profiler is not None:
                    profiler.disable()
                turns_cpu += time.process_time() - t
            elif not moved:
                break
    n = conns * streams
    assert len(gateway.hub) == n, f"{len(gateway.hub)} of {n} registered"
    greeted = [size for client in clients for size in client.data.values()]
    assert min(greeted) > 0 and not any(client.ended for client in clients), "every stream greeted, none ended"
    return 1e6 * (turns_cpu + sum(client.server_cpu for client in clients)) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", default="10x1000", help="connections x streams per connection")
    parser.add_argument("--wave", type=int, default=500, help="streams opened at a time, one per connection in turn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-crypto", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--count", action="store_true", help="the server's part inside functools.reduce (callgrind)")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--sort", default="tottime", help="cProfile order: tottime, cumulative")
    args = parser.parse_args()
    conns, streams = (int(x) for x in args.layout.lower().split("x"))
    global COUNTED
    COUNTED = args.count
    if args.profile:
        profiler = cProfile.Profile()
        run(conns, streams, args.wave, args.no_crypto, profiler)
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
        return
    per_open = sorted(run(conns, streams, args.wave, args.no_crypto, None) for _ in range(args.repeats))
    print(json.dumps({"bench": "open_micro", "layout": f"{conns}x{streams}", "no_crypto": args.no_crypto,
                      "best_us": round(per_open[0], 1), "median_us": round(statistics.median(per_open), 1),
                      "all_us": [round(x, 1) for x in per_open]}))


if __name__ == "__main__":
    main()
