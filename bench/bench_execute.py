"""Benchmark 2: ExecuteCommand through the whole pipeline and the backend, per protocol and store kind.

Gateway (production mode, ``twist gatewayd --config``) pinned to core 0; the
reference backend (``twist gatewayd-devbackend --no-debug``), Redis and
``bench/loadgen.py`` pinned to core 1. Every request is distinct (own
request_id, fresh timestamp), so replay protection does real work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench._common import CLIENT_CORE, PYTHON, Spread, cpu_seconds, emit, exit_on_sigterm
from bench._stack import login, start_stack
from bench.gc_stats import snapshot
from bench.gc_stats import summarize as summarize_gc
from bench.profile import Profiler, summarize

PROTOCOLS = {
    # protocol -> (connections, streams per connection)
    "grpc": (4, 16),
    "connect-h2": (4, 16),
    "connect-h1": (16, 1),
}


def loadgen(port: int, sessions: Path, protocol: str, requests: int, message_type: str,
            payload: str, shape: tuple[int, int] | None = None) -> dict[str, Any]:
    conns, streams = shape or PROTOCOLS[protocol]
    cmd = ["taskset", "-c", CLIENT_CORE, PYTHON, "-m", "bench.loadgen", "--port", str(port), "--sessions",
           str(sessions), "--protocol", protocol, "--requests", str(requests), "--connections", str(conns),
           "--streams", str(streams), "--message-type", message_type, "--payload", payload, "--timeout", "150"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=200, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stores", nargs="+", default=["memory", "redis"])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    parser.add_argument("--message-type", default="user.profile.get")
    parser.add_argument("--payload", default="")
    parser.add_argument("--shape", default="", help="CONNSxSTREAMS for every protocol instead of the defaults")
    parser.add_argument("--nodelay", action="store_true", help="diagnostic: TCP_NODELAY in both Twisted processes")
    parser.add_argument("--profile", action="store_true",
                        help="one extra run per protocol under py-spy; summary in the work folder, not timed")
    parser.add_argument("--gc-stats", action="store_true",
                        help="record the gateway's GC collections and pauses (bench/gc_stats.py; costs a little CPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    shape: tuple[int, int] | None = None
    if args.shape:
        c, m = args.shape.lower().split("x")
        shape = (int(c), int(m))
    for stores in args.stores:
        work = Path(tempfile.mkdtemp(prefix=f"bench-exec-{stores}-"))
        gc_file = work / "gc.json"
        stack = start_stack(work, stores, nodelay=args.nodelay, **(
            {"wrapper": "twist_observe.py", "env": {"BENCH_GC_STATS": str(gc_file)}} if args.gc_stats else {}))
        try:
            sessions = work / "sessions.json"
            sessions.write_text(json.dumps(login(stack.port, 8)))
            gw = stack.gateway
            backend = next(p for p in stack.procs if p.name == "devbackend")
            assert gw is not None
            for protocol in args.protocols:
                loadgen(stack.port, sessions, protocol, 300, args.message_type, args.payload, shape)  # warm-up
                stats = {k: Spread() for k in ("rps", "mean_ms", "p50_ms", "p99_ms", "cpu_us", "backend_cpu_us")}
                outcomes: dict[str, int] = {}
                for _ in range(args.repeats):
                    cpu0, bcpu0 = cpu_seconds(gw.pid), cpu_seconds(backend.pid)
                    r = loadgen(stack.port, sessions, protocol, args.requests, args.message_type, args.payload, shape)
                    r["cpu_us"] = 1e6 * (cpu_seconds(gw.pid) - cpu0) / max(1, r["answered"])
                    r["backend_cpu_us"] = 1e6 * (cpu_seconds(backend.pid) - bcpu0) / max(1, r["answered"])
                    for k, s in stats.items():
                        s.add(r[k])
                    for k, v in r["outcomes"].items():
                        outcomes[k] = outcomes.get(k, 0) + v
                if args.profile:
                    assert stack.gateway is not None
                    prof = Profiler(stack.gateway.pid, work / f"profile-{protocol}.txt")
                    prof.start()
                    loadgen(stack.port, sessions, protocol, args.requests, args.message_type, args.payload, shape)
                    prof.stop()
                    (work / f"profile-{protocol}.summary").write_text(summarize(prof.out))
                    print(f"profile: {work / f'profile-{protocol}.summary'}", flush=True)
                conns, streams = shape or PROTOCOLS[protocol]
                emit({"bench": "execute", "stores": stores, "protocol": protocol, "nodelay": args.nodelay,
                      "connections": conns, "streams": streams, "requests": args.requests,
                      "repeats": args.repeats, "message_type": args.message_type, "outcomes": outcomes,
                      **{k: s.values for k, s in stats.items()},
                      "fmt": {k: s.fmt(0 if k in ("rps", "cpu_us", "backend_cpu_us") else 1)
                              for k, s in stats.items()}}, args.out)
            if args.gc_stats:
                gc_stats = snapshot(gw.pid, gc_file)
                if gc_stats is not None:
                    print(f"gc ({stores}, whole run incl. warm-up): {json.dumps(summarize_gc(gc_stats))}", flush=True)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
