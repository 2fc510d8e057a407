"""Benchmark 1: Health/Check unary with h2load, our server vs grpcio ``grpc.aio``.

Each server runs alone in its own process on core 0; h2load runs on core 1.
Rows: gRPC over h2c (ours and grpc.aio, same h2load settings), Connect unary
over HTTP/1.1 and over h2c, JSON (``{}``) and binary (``application/proto``,
a HealthCheckRequest for ``gateway.v1.Gateway``), ours and ``connectrpc``
(the official Python Connect package, ASGI, served by Hypercorn:
``bench/health_connectrpc.py``). Every run is bounded by ``-n`` and a
subprocess timeout.

h2load cannot read the status of Hypercorn's HTTP/1.1 answers (``HTTP/1.1 200 ``
with an empty reason phrase: its parser never reports the status, so every
answer counts as "failed" with status 0). For that server over HTTP/1.1 an
answer with status 0 in h2load's log counts as answered; ``check_answers``
first proves with a real client that the server answers 200 + SERVING.
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
# HealthCheckRequest(service="gateway.v1.Gateway"): h2load cannot send an empty body (it mmaps the file).
PROTO_BODY = b"\n\x12gateway.v1.Gateway"


def check_answers(port: int) -> None:
    """One Connect call per encoding with urllib: HTTP 200 and SERVING, else raise."""
    import json
    import urllib.request

    from gatewayd._proto.grpc.health.v1 import health_pb2

    for ctype, body in (("application/json", b"{}"), ("application/proto", PROTO_BODY)):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", body, {"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            if ctype.endswith("json"):
                status = json.loads(raw)["status"]
            else:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                    health_pb2.HealthCheckResponse.FromString(raw).status)
            if r.status != 200 or status != "SERVING":
                raise SystemExit(f"port {port}: {ctype} answered {r.status} {raw!r}")


def h2load(port: int, args: list[str], body: Path, requests: int, logfile: Path,
           statuses: tuple[str, ...] = ("200",)) -> dict[str, Any]:
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
        if len(parts) == 3 and parts[1] in statuses:
            durations.append(int(parts[2]) / 1000.0)
    if statuses != ("200",):
        succeeded = len(durations)
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
    ("Connect HTTP/1.1 proto", "ours", ["--h1", "-c", "16", "-m", "1", "-H", "content-type: application/proto"],
     "proto"),
    ("Connect h2c proto", "ours", ["-c", "4", "-m", "16", "-H", "content-type: application/proto"], "proto"),
    ("Connect HTTP/1.1", "connectrpc", ["--h1", "-c", "16", "-m", "1", "-H", "content-type: application/json"],
     "json"),
    ("Connect HTTP/1.1 proto", "connectrpc", ["--h1", "-c", "16", "-m", "1", "-H", "content-type: application/proto"],
     "proto"),
    ("Connect h2c proto", "connectrpc", ["-c", "4", "-m", "16", "-H", "content-type: application/proto"], "proto"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=["ours", "grpc.aio", "connectrpc"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    bodies = {"grpc": work / "body.grpc", "json": work / "body.json", "proto": work / "body.proto"}
    bodies["grpc"].write_bytes(GRPC_BODY)
    bodies["json"].write_bytes(b"{}")
    bodies["proto"].write_bytes(PROTO_BODY)
    servers = {
        "ours": [PYTHON, str(ROOT / "bench" / "health_ours.py")],
        "grpc.aio": [PYTHON, str(ROOT / "bench" / "health_grpcio.py")],
        "connectrpc": [PYTHON, str(ROOT / "bench" / "health_connectrpc.py")],
    }
    for server, argv in servers.items():
        if server not in args.servers:
            continue
        port = free_port()
        proc = start(f"health-{server}", [*argv, str(port)], SERVER_CORE, work)
        try:
            wait_port(port, proc=proc.popen)
            if server != "grpc.aio":
                check_answers(port)
            for row, srv, h2args, body in SCENARIOS:
                if srv != server:
                    continue
                # See the module docstring: Hypercorn's HTTP/1.1 status line is invisible to h2load.
                statuses = ("200", "0") if server == "connectrpc" and "--h1" in h2args else ("200",)
                h2load(port, h2args, bodies[body], 1000, work / "warmup.log", statuses)  # warm-up, discarded
                stats = {k: Spread() for k in ("rps", "mean_ms", "p50_ms", "p99_ms", "cpu_us")}
                failed = 0.0
                for _ in range(args.repeats):
                    cpu0 = cpu_seconds(proc.pid)
                    r = h2load(port, h2args, bodies[body], args.requests, work / "run.log", statuses)
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
