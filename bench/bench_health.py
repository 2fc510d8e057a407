"""Benchmark 1: Health/Check unary with h2load, our server vs grpcio ``grpc.aio``.

Each server runs alone in its own process on core 0; h2load runs on core 1.
Rows: gRPC over h2c (ours and grpc.aio, same h2load settings), Connect unary
over HTTP/1.1 and over h2c (ours only: grpc.aio speaks no Connect, so the
reference for Connect is our own gRPC row). Every run is bounded by ``-n``
and a subprocess timeout.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench._common import (
    CLIENT_CORE,
    PYTHON,
    ROOT,
    SERVER_CORE,
    Spread,
    cpu_seconds,
    emit,
    exit_on_sigterm,
    free_port,
    percentile,
    start,
    wait_port,
)

PATH = "/grpc.health.v1.Health/Check"
GRPC_BODY = b"\x00\x00\x00\x00\x00"  # uncompressed flag + length 0: an empty HealthCheckRequest


def h2load(port: int, args: list[str], body: Path, requests: int, logfile: Path) -> dict[str, Any]:
    """Run h2load pinned to the client core; req/s, success count and latencies from its log file."""
    logfile.unlink(missing_ok=True)
    cmd = ["taskset", "-c", CLIENT_CORE, "h2load", "-n", str(requests), *args, "-d", str(body),
           f"--log-file={logfile}", f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    rps = succeeded = 0.0
    for line in out.splitlines():
        if line.startswith("finished in"):
            rps = float(line.split(",")[1].split()[0])
        if line.startswith("requests:"):
            succeeded = float(line.split(",")[3].split()[0])
    durations = []
    for line in logfile.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == "200":
            durations.append(int(parts[2]) / 1000.0)
    mean = sum(durations) / len(durations) if durations else float("nan")
    return {"rps": rps, "ok": succeeded, "mean_ms": mean,
            "p50_ms": percentile(durations, 50), "p99_ms": percentile(durations, 99)}


SCENARIOS: list[tuple[str, str, list[str], str]] = [
    # (row, server, h2load args, body kind)
    ("gRPC h2c", "ours", ["-c", "4", "-m", "16", "-H", "content-type: application/grpc", "-H", "te: trailers"],
     "grpc"),
    ("gRPC h2c", "grpc.aio", ["-c", "4", "-m", "16", "-H", "content-type: application/grpc", "-H", "te: trailers"],
     "grpc"),
    ("Connect h2c", "ours", ["-c", "4", "-m", "16", "-H", "content-type: application/json"], "json"),
    ("Connect HTTP/1.1", "ours", ["--h1", "-c", "16", "-m", "1", "-H", "content-type: application/json"], "json"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    bodies = {"grpc": work / "body.grpc", "json": work / "body.json"}
    bodies["grpc"].write_bytes(GRPC_BODY)
    bodies["json"].write_bytes(b"{}")
    servers = {
        "ours": [PYTHON, str(ROOT / "bench" / "health_ours.py")],
        "grpc.aio": [PYTHON, str(ROOT / "bench" / "health_grpcio.py")],
    }
    for server, argv in servers.items():
        port = free_port()
        proc = start(f"health-{server}", [*argv, str(port)], SERVER_CORE, work)
        try:
            wait_port(port, proc=proc.popen)
            for row, srv, h2args, body in SCENARIOS:
                if srv != server:
                    continue
                h2load(port, h2args, bodies[body], 1000, work / "warmup.log")  # warm-up, discarded
                stats = {k: Spread() for k in ("rps", "mean_ms", "p50_ms", "p99_ms", "cpu_us")}
                failed = 0.0
                for _ in range(args.repeats):
                    cpu0 = cpu_seconds(proc.pid)
                    r = h2load(port, h2args, bodies[body], args.requests, work / "run.log")
                    r["cpu_us"] = 1e6 * (cpu_seconds(proc.pid) - cpu0) / max(1.0, r["ok"])
                    failed += args.requests - r["ok"]
                    for k, s in stats.items():
                        s.add(r[k])
                emit({"bench": "health", "row": row, "server": server, "h2load": " ".join(h2args),
                      "requests": args.requests, "repeats": args.repeats, "failed": failed,
                      **{k: s.values for k, s in stats.items()},
                      "fmt": {k: s.fmt(0 if k in ("rps", "cpu_us") else 2) for k, s in stats.items()}}, args.out)
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
