"""Paired A/B of ExecuteCommand between two checkouts of the gateway, whole stack with its backend.

``python -m bench.ab_execute A_DIR B_DIR --rounds 4 --protocols grpc connect-h1``

Each round starts, for each checkout in turn (A, B, then B, A, ...: a steady drift of the
machine's speed favours neither), a fresh stack (``bench/_stack.py``: memory stores, budgets
raised) whose gateway runs that checkout's code (``PYTHONPATH``; this project's venv runs
both), and drives it with ``bench/loadgen.py`` for a timed window per protocol (gRPC and
Connect h2c 4 x 16 in flight, Connect HTTP/1.1 64 connections x 1). ``--backend ref``
(``bench/ref_backend.py``, aiohttp, on the server core beside the gateway: bench_reference's
main arrangement) or ``dev`` (the project's backend, on the client core: bench_execute's).
Prints a line per run and, at the end, the medians per (checkout, protocol): ok/s, the
gateway's and the backend's CPU per call, each with its kernel part; every run is appended
to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench._common import CLIENT_CORE, PYTHON, SERVER_CORE, emit, exit_on_sigterm
from bench._stack import login, start_stack

SHAPES = {"grpc": (4, 16), "connect-h2": (4, 16), "connect-h1": (64, 1)}


def one_run(port: int, sessions: Path, protocol: str, pids: tuple[int, int], duration: float,
            warmup: float) -> dict[str, Any]:
    conns, streams = SHAPES[protocol]
    cmd = ["taskset", "-c", CLIENT_CORE, PYTHON, "-m", "bench.loadgen", "--port", str(port), "--sessions",
           str(sessions), "--protocol", protocol, "--requests", str(int(5000 * (duration + warmup))),
           "--connections", str(conns), "--streams", str(streams), "--duration", str(duration), "--warmup",
           str(warmup), "--timeout", str(duration + warmup + 60), "--cpu-pids", *map(str, pids)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + warmup + 180)
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return {"ok_rps": r["ok_rps"], "p99_ms": r["p99_ms"], "gateway_cpu_us": r["cpu_us"][0],
            "gateway_sys_us": r["sys_us"][0], "backend_cpu_us": r["cpu_us"][1], "backend_sys_us": r["sys_us"][1],
            "outcomes": r["outcomes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--protocols", nargs="+", choices=list(SHAPES), default=["grpc", "connect-h1"])
    parser.add_argument("--backend", choices=["ref", "dev"], default="ref")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    trees = {"a": args.a.resolve(), "b": args.b.resolve()}
    backend_core = SERVER_CORE if args.backend == "ref" else CLIENT_CORE
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_ in range(args.rounds):
        for name in ("a", "b") if round_ % 2 == 0 else ("b", "a"):
            work = Path(tempfile.mkdtemp(prefix=f"bench-ab-exec-{name}-"))
            stack = start_stack(work, "memory", backend=args.backend, backend_core=backend_core,
                                env={"PYTHONPATH": str(trees[name])})
            try:
                assert stack.gateway is not None and stack.backend is not None
                sessions = work / "sessions.json"
                sessions.write_text(json.dumps(login(stack.backend_http, 8)))
                for protocol in args.protocols:
                    r = one_run(stack.port, sessions, protocol, (stack.gateway.pid, stack.backend.pid),
                                args.duration, args.warmup)
                    runs.setdefault((name, protocol), []).append(r)
                    emit({"bench": "ab_execute", "tree": name, "path": str(trees[name]), "protocol": protocol,
                          "backend": args.backend, "round": round_, **r}, args.out)
            finally:
                stack.stop()
    print("\ntree protocol: median ok/s, gateway µs/call (kernel), backend µs/call (kernel), p99 ms")
    for (name, protocol), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "outcomes"}
        print(f"{name} {protocol:11} {m['ok_rps']:.0f} ok/s, gateway {m['gateway_cpu_us']:.0f} "
              f"({m['gateway_sys_us']:.0f}), backend {m['backend_cpu_us']:.0f} ({m['backend_sys_us']:.0f}), "
              f"p99 {m['p99_ms']:.1f}  [{trees[name]}]")


if __name__ == "__main__":
    main()
