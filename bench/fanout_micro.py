"""Fan-out cost per delivery in one process, without sockets: the hub, gRPC calls and HTTP/2 cores.

``python -m bench.fanout_micro --layout 10x1000 --events 20 [--profile]``

Builds ``connections`` ``ServerConnectionCore``s (the gateway's own, on a ``Clock``)
and, on each, ``streams`` real server-streaming gRPC calls opened by an h2 client
with windows as large as bench/fanout_client.py's, every call registered with one
``Hub`` (production batch). Each event is then published and the clock turned
(delayed calls due now, as reactor turns run them) until the fan-out has gone out;
the CPU time of that (``time.process_time``) over the deliveries is the figure,
along with slices and the bytes written per turn. The client parses what was
written only after the timed part, to check every stream got every event once.
This leaves out the socket sends and the reactor (bench/bench_delivery.py has
them); it is quiet enough for A/B comparisons on a loaded machine, and
``--profile`` prints cProfile's top functions for the timed part.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet import defer
from twisted.internet.task import Clock

from gatewayd._proto.gateway.v1.gateway_pb2 import GatewayEvent, SubscribeEventsRequest
from gatewayd.config import ServerConfig
from gatewayd.http2.core import ServerConnectionCore
from gatewayd.push.hub import Hub
from gatewayd.rpc.call import Call, Encoded, ServerStream
from gatewayd.rpc.framing import encode_frame
from gatewayd.rpc.methods import Method, MethodTable
from gatewayd.transport.server import build_factory

PATH = "/bench.Fanout/Subscribe"
USER = "usr_bench"


class TurnClock(Clock):
    """A Clock whose ``turn`` runs only the calls due when it started, as one reactor turn does.

    Calls are not kept sorted (``Clock`` sorts them all on every ``callLater``, which
    would dominate with a thousand connections); ``turn`` picks the due ones.
    """

    def _sortCalls(self) -> None:
        pass

    def turn(self) -> int:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
        for call in due:
            call.called = 1
            call.func(*call.args, **call.kw)
        return len(due)

    def due(self) -> bool:
        return any(call.getTime() <= self.seconds() for call in self.calls)


class Sink:
    """A core's ``ConnectionIO`` that keeps what is written, and counts the writes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.writes += 1

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Client:
    """An h2 client on one core, with bench/fanout_client.py's windows; counts DATA per stream."""

    def __init__(self, core: ServerConnectionCore, sink: Sink) -> None:
        self.core, self.sink = core, sink
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.h2.increment_flow_control_window(1 << 28)
        self.data: dict[int, int] = {}
        self.server_cpu = 0.0  # CPU time in the core's receive (process_time)

    def open(self, n: int) -> None:
        body = encode_frame(SubscribeEventsRequest().SerializeToString())
        for _ in range(n):
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()),
                                       (b":authority", b"bench"), (b"content-type", b"application/grpc"),
                                       (b"te", b"trailers")])
            self.h2.send_data(sid, body, end_stream=True)
            self.data[sid] = 0

    def exchange(self) -> None:
        """Bytes both ways until neither side has more."""
        while True:
            up = self.h2.data_to_send()
            if up:
                t0 = time.process_time()
                self.core.receive(up)
                self.server_cpu += time.process_time() - t0
            down = self.sink.take()
            if down:
                read_answers(self.h2, down, self.data)
            if not up and not down:
                return


def read_answers(conn: h2.connection.H2Connection, down: bytes, data: dict[int, int],
                 ended: set[int] | None = None) -> None:
    """Feed the server's bytes to the client connection: DATA counted per stream (and acknowledged),
    ended or reset streams added to ``ended``."""
    for ev in conn.receive_data(down):
        if isinstance(ev, h2.events.DataReceived):
            data[ev.stream_id] += len(ev.data)
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif ended is not None and isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
            ended.add(ev.stream_id)


def build(conns: int, streams: int, batch: int, wave: int = 0) -> tuple[TurnClock, Hub, list[Client], dict[str, float]]:
    """The cores, their clients and the hub with every stream open; with the CPU time of the
    connections' set-up (per connection, the client's side included) and the server's part of the
    opening (per stream: the cores' receives and the turns run).

    Streams open ``wave`` at a time across the connections, one per connection in turn (as
    bench/fanout_client.py's waves do; 0: all at once), each wave's requests handed to the cores
    in one go, as one reactor turn's reads, then the clock turned until nothing is due."""
    clock = TurnClock()
    hub = Hub(clock, fanout_batch=batch)
    greeting = Encoded(GatewayEvent(event_type="gateway.server_time", event_id="st_1"))

    def subscribe(call: Call, request: Any, stream: ServerStream) -> defer.Deferred[None]:
        sub = hub.register(USER, f"ds_{len(hub) % 10}", stream)
        stream.send(greeting)  # as SubscribeEvents does: the response headers go out here
        return defer.Deferred(lambda _: hub.unregister(sub))

    table = MethodTable()
    table.add(Method(PATH, SubscribeEventsRequest, GatewayEvent, stream=subscribe))
    config = ServerConfig(max_concurrent_streams=streams + 10, idle_timeout_s=0, keepalive_interval_s=0)
    factory, app = build_factory(table, clock, config)
    clients = []
    t0 = time.process_time()
    for _ in range(conns):
        sink = Sink()
        core = ServerConnectionCore(app, clock, factory.limits, lambda s: None, sink,  # type: ignore[arg-type,return-value]
                                    factory.turn_budget)
        core.start("127.0.0.1")
        client = Client(core, sink)
        client.exchange()
        clients.append(client)
    t1 = time.process_time()
    turns_cpu = 0.0
    plan = [client for _ in range(streams) for client in clients]
    step = wave or len(plan)
    for w in range(0, len(plan), step):
        for client in plan[w:w + step]:
            client.open(1)
        while True:
            for client in clients:
                client.exchange()
            if not clock.due():
                break
            t = time.process_time()
            clock.turn()
            turns_cpu += time.process_time() - t
    assert len(hub) == conns * streams, len(hub)
    server = turns_cpu + sum(client.server_cpu for client in clients)
    return clock, hub, clients, {"cpu_us_per_connection": 1e6 * (t1 - t0) / conns,
                                 "cpu_us_per_open": 1e6 * server / (conns * streams)}


def run(conns: int, streams: int, events: int, batch: int, profile: bool, wave: int = 0) -> dict[str, Any]:
    clock, hub, clients, opening = build(conns, streams, batch, wave)
    for client in clients:
        client.exchange()
        client.sink.writes = 0
    before = {sid: n for client in clients for sid, n in client.data.items()}
    cpu: list[float] = []
    turns: list[int] = []
    profiler = cProfile.Profile() if profile else None
    for i in range(events):
        event = Encoded(GatewayEvent(event_type="user.note.created", event_id=f"evt_{i:06d}",
                                     payload_bytes=b'{"text":"delivery %d"}' % i, timestamp_ms=1, signature=b"s" * 64))
        t0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        hub.publish(USER, "", event)
        n = 1
        while clock.due():
            clock.turn()
            n += 1
        if profiler is not None:
            profiler.disable()
        cpu.append(time.process_time() - t0)
        turns.append(n)
        for client in clients:
            client.exchange()
    writes = sum(client.sink.writes for client in clients)
    got = [n - before[sid] for client in clients for sid, n in client.data.items()]
    assert len(set(got)) == 1 and got[0] > 0, "every stream gets the same bytes"
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    n = conns * streams
    return {"layout": f"{conns}x{streams}", "events": events, **opening, "cpu_us_per_delivery": {
        "median": 1e6 * statistics.median(cpu) / n, "min": 1e6 * min(cpu) / n, "max": 1e6 * max(cpu) / n},
        "turns_per_event": statistics.median(turns), "writes_per_event": writes / events,
        "bytes_per_stream_per_event": got[0] / events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", default="10x1000", help="connections x streams per connection")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500, help="the hub's fanout_batch")
    parser.add_argument("--wave", type=int, default=500,
                        help="streams opened at a time, one per connection in turn (0: all at once)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    conns, streams = (int(x) for x in args.layout.lower().split("x"))
    print(run(conns, streams, args.events, args.batch, args.profile, args.wave))


if __name__ == "__main__":
    main()
