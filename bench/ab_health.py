"""Paired A/B of Health/Check CPU per request between two checkouts of the gateway.

``python -m bench.ab_health A_DIR B_DIR --rounds 8 --rows "gRPC h2c" "Connect h2c proto"``

Both servers (``bench/health_ours.py`` of each checkout, run with that checkout's code
first on ``PYTHONPATH``) are up at once on the server core; h2load runs of 10,000 requests
alternate between them (A, B, then B, A, ...), so both see the same neighbours on a shared
machine. Prints one JSON line per row: CPU µs per request of every run, and the medians.
A checkout needs no venv of its own: this project's venv runs both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench._common import PYTHON, SERVER_CORE, cpu_seconds, exit_on_sigterm, free_port, start, wait_port
from bench.bench_health import GRPC_BODY, PROTO_BODY, SCENARIOS, h2load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--rows", nargs="+", default=["gRPC h2c"])
    args = parser.parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-ab-health-"))
    bodies = {"grpc": work / "body.grpc", "json": work / "body.json", "proto": work / "body.proto"}
    bodies["grpc"].write_bytes(GRPC_BODY)
    bodies["json"].write_bytes(b"{}")
    bodies["proto"].write_bytes(PROTO_BODY)
    servers = {}
    try:
        for name, root in (("a", args.a.resolve()), ("b", args.b.resolve())):
            port = free_port()
            proc = start(f"health-{name}", [PYTHON, str(root / "bench" / "health_ours.py"), str(port)], SERVER_CORE,
                         work, env={"PYTHONPATH": str(root)})
            servers[name] = (proc, port)
            wait_port(port, proc=proc.popen)
        for row, server, h2args, body in SCENARIOS:
            if server != "ours" or row not in args.rows:
                continue
            cpu: dict[str, list[float]] = {"a": [], "b": []}
            for _proc, port in servers.values():
                h2load(port, h2args, bodies[body], 1000, work / "warmup.log")
            for i in range(args.rounds):
                for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
                    proc, port = servers[name]
                    before = cpu_seconds(proc.pid)
                    r = h2load(port, h2args, bodies[body], args.requests, work / "run.log")
                    cpu[name].append(round(1e6 * (cpu_seconds(proc.pid) - before) / max(1.0, r["ok"]), 1))
            load = Path("/proc/loadavg").read_text().split()[0]
            print(json.dumps({"row": row, "loadavg": load, "a": cpu["a"], "b": cpu["b"],
                              "median_a": statistics.median(cpu["a"]), "median_b": statistics.median(cpu["b"]),
                              "b_lower_in": sum(b < a for a, b in zip(cpu["a"], cpu["b"], strict=True))}), flush=True)
    finally:
        for proc, _port in servers.values():
            proc.stop()


if __name__ == "__main__":
    main()
