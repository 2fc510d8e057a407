"""In one process: the HTTP/1.1 transport's cost per Connect unary call, without the pipeline.

A real listener (``build_factory``, default config, TCP on 127.0.0.1) serving
``grpc.health.v1.Health/Check`` (answered at once), and ``--connections``
keep-alive Twisted clients in the same reactor, one call each in flight, each
sending the next request when the answer is in. Every request arrives whole in
one read, so the gateway reads and answers it directly (``http1_direct``).
Prints the process's CPU per call (client and server: the client's share is the
same in every version, so A/B differences are the gateway's); ``--profile``
adds cProfile's top functions by own time (which slows everything ~3x).

    PYTHONPATH=. .venv/bin/python -m bench.http1_micro --connections 16 --calls 20000

A/B: run it with ``PYTHONPATH`` at each worktree in turn, several rounds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
from typing import Any

from twisted.internet import protocol, reactor

from gatewayd.config import Config
from gatewayd.health import HealthService
from gatewayd.rpc.methods import MethodTable
from gatewayd.transport.server import build_factory


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    r: Any = reactor
    methods = MethodTable()
    for method in HealthService([""]).methods():
        methods.add(method)
    factory, _ = build_factory(methods, r, Config().server)
    port = r.listenTCP(0, factory, interface="127.0.0.1").getHost().port
    request = (b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
               b"Content-Type: application/proto\r\nContent-Length: 0\r\n\r\n" % port)
    state = {"left": args.calls, "done": 0, "open": args.connections}

    class Client(protocol.Protocol):
        buffer = b""

        def connectionMade(self) -> None:
            self.send()

        def send(self) -> None:
            if state["left"] <= 0:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            state["left"] -= 1
            self.transport.write(request)  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                at = self.buffer.find(b"\r\nContent-Length: ", 0, end) + 18
                total = end + 4 + int(self.buffer[at:self.buffer.find(b"\r\n", at)])
                if len(self.buffer) < total:
                    return
                if not self.buffer.startswith(b"HTTP/1.1 200 "):
                    raise RuntimeError(self.buffer[:200])
                self.buffer = self.buffer[total:]
                state["done"] += 1
                self.send()

        def connectionLost(self, reason: Any = None) -> None:
            state["open"] -= 1
            if state["open"] == 0:
                r.stop()

    def start() -> None:
        client_factory = protocol.ClientFactory()
        client_factory.protocol = Client
        for _ in range(args.connections):
            r.connectTCP("127.0.0.1", port, client_factory)

    r.callWhenRunning(start)
    profiler = cProfile.Profile() if args.profile else None
    cpu0 = _cpu_s()
    if profiler is not None:
        profiler.enable()
    r.run()
    if profiler is not None:
        profiler.disable()
    calls = max(1, state["done"])
    print(f"calls {state['done']} connections {args.connections} "
          f"cpu_us_per_call {(_cpu_s() - cpu0) / calls * 1e6:.1f} (client and server)")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
