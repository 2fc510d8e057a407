"""Benchmark 4: ExecuteCommand, gatewayd against the grpc.aio + aiohttp reference (issue 13), ratio per setting.

``python -m bench.bench_reference [--duration 10 --warmup 3 --repeats 3] [--arrangements shared split]``

Two stacks run side by side, each server with its own ``bench/ref_backend.py``
(aiohttp) so only the server differs: gatewayd (``twist gatewayd --config``,
memory stores, budgets raised to 1,000,000/s) and ``bench/ref_pipeline.py``.
Sessions are logged in at each backend. A sanity step first checks, on both
servers, that a valid call answers ``ok`` with a response signature that
verifies against the gateway key, that the same call again is ALREADY_EXISTS
and that a bad signature is UNAUTHENTICATED.

Arrangements: ``shared`` (issue 13's main one): each server and its backend on
core 0, ``bench/loadgen.py`` alone on core 1; ``split``: servers on core 0,
backends and the load generator on core 1. Settings: gRPC at 64 and 128 calls
in flight (4 connections x 16 / x 32 streams) on both servers; Connect unary
over h2c (4 x 16) and over HTTP/1.1 (64 connections) on gatewayd only
(absolute rate; the reference speaks no Connect), each repeat of a Connect
setting beside gatewayd gRPC-64 runs of its own (server
``gatewayd-grpc-64-beside`` in ``--out``; A B B A, so two pairs per repeat, each side
first once), whose rate its target is. Each
(setting, server) runs ``--repeats`` times, the sides alternating and their
order flipping every repeat, each run a timed window (``--duration`` after
``--warmup``) of distinct pre-signed requests. One ratio line per setting is
printed and every run is appended to ``--out``; CPU per call is charged in
full and also split out: ``*_sys_us`` is the kernel's part.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import (
    CLIENT_CORE,
    PYTHON,
    SERVER_CORE,
    Proc,
    emit,
    exit_on_sigterm,
    free_port,
    listen_overflows,
    runqueue_seconds,
    start,
    time_wait_to,
    wait_port,
)
from bench._stack import Stack, login, start_backend, start_stack
from bench.profile import Profiler, summarize
from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse
from gatewayd.signing import GatewayKey, response_signing_input, verify

ARRANGEMENTS = {"shared": SERVER_CORE, "split": CLIENT_CORE}  # arrangement -> the backends' core


@dataclass(frozen=True)
class Setting:
    name: str
    protocol: str
    connections: int
    streams: int
    reference: bool  # does the reference run it too?

    @property
    def in_flight(self) -> int:
        return self.connections * self.streams


GRPC64 = Setting("grpc-64", "grpc", 4, 16, True)
BESIDE = "gatewayd-grpc-64-beside"  # the gRPC-64 runs a Connect setting is compared with
SETTINGS = [
    GRPC64,
    Setting("grpc-128", "grpc", 4, 32, True),
    Setting("connect-h2c-64", "connect-h2", 4, 16, False),
    Setting("connect-h1-64", "connect-h1", 64, 1, False),
]


@dataclass
class Server:
    """One side of the comparison: its port, its process (charged CPU) and its backend."""

    name: str
    port: int
    proc: Proc
    backend: Proc
    backend_port: int
    sessions: Path
    stack: Stack | None = None
    procs: tuple[Proc, ...] = ()

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        for p in reversed(self.procs):
            p.stop()


def start_gatewayd(work: Path, backend_core: str) -> Server:
    stack = start_stack(work, "memory", max_streams=100, backend="ref", backend_core=backend_core)
    try:
        assert stack.gateway is not None and stack.backend is not None
        sessions = work / "sessions.json"
        sessions.write_text(json.dumps(login(stack.backend_http, 8)))
        return Server("gatewayd", stack.port, stack.gateway, stack.backend, stack.backend_http, sessions,
                      stack=stack)
    except BaseException:
        stack.stop()
        raise


def start_reference(work: Path, backend_core: str, key: Path) -> Server:
    work.mkdir(parents=True, exist_ok=True)
    backend, http, _push = start_backend(work, "ref", backend_core)
    procs = [backend]
    try:
        port = free_port()
        server = start("reference", [PYTHON, "-m", "bench.ref_pipeline", "--port", str(port), "--backend",
                                     f"http://127.0.0.1:{http}", "--key", str(key)], SERVER_CORE, work)
        procs.append(server)
        wait_port(port, proc=server.popen)
        sessions = work / "sessions.json"
        sessions.write_text(json.dumps(login(http, 8)))
        return Server("reference", port, server, backend, http, sessions, procs=tuple(procs))
    except BaseException:
        for p in reversed(procs):
            p.stop()
        raise


def sanity(server: Server, key: GatewayKey) -> dict[str, str]:
    """Valid call -> ok with a verifying signature; the same again -> ALREADY_EXISTS; bad signature ->
    UNAUTHENTICATED. Raises when a server answers otherwise."""
    import grpc

    from bench.loadgen import sign_requests

    session = json.loads(server.sessions.read_text())[0]
    body = sign_requests([session], 1, "user.profile.get", b"")[0]
    tampered = ExecuteCommandRequest.FromString(body)
    tampered.signature = bytes(64)
    found: dict[str, str] = {}
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.unary_unary("/gateway.v1.Gateway/ExecuteCommand",
                                   request_serializer=lambda b: b,
                                   response_deserializer=ExecuteCommandResponse.FromString)
        resp = call(body, timeout=10)
        env = resp.envelope
        signed = response_signing_input(env.protocol_version, session["device_session_id"], env.request_id,
                                        env.timestamp_ms, env.result_code, env.payload_hash, env.key_id)
        if env.result_code != "ok" or env.key_id != key.key_id or not verify(key.public_key, signed, resp.signature):
            raise SystemExit(f"{server.name}: bad answer {resp}")
        found["valid"] = "ok, signature verifies"
        for what, request in (("replayed", body), ("bad signature", tampered.SerializeToString())):
            try:
                call(request, timeout=10)
                found[what] = "OK"
            except grpc.RpcError as e:
                found[what] = e.code().name
    expected = {"valid": "ok, signature verifies", "replayed": "ALREADY_EXISTS", "bad signature": "UNAUTHENTICATED"}
    if found != expected:
        raise SystemExit(f"{server.name}: sanity check failed: {found}")
    return found


def loadgen(server: Server, setting: Setting, duration: float, warmup: float, requests: int) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CORE, PYTHON, "-m", "bench.loadgen", "--port", str(server.port),
           "--sessions", str(server.sessions), "--protocol", setting.protocol, "--requests", str(requests),
           "--connections", str(setting.connections), "--streams", str(setting.streams),
           "--duration", str(duration), "--warmup", str(warmup), "--timeout", str(warmup + duration + 60),
           "--cpu-pids", str(server.proc.pid), str(server.backend.pid)]
    overflows, time_wait = listen_overflows(), time_wait_to(server.backend_port)
    waited, t0 = runqueue_seconds(server.proc.pid), time.monotonic()
    switches = context_switches(server.proc.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=warmup + duration + 180)
    if out.returncode != 0:
        raise SystemExit(f"loadgen failed against {server.name}: {out.stderr[-2000:]}")
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    r["server_cpu_us"], r["backend_cpu_us"] = r.pop("cpu_us")
    r["server_sys_us"], r["backend_sys_us"] = r.pop("sys_us")
    r["listen_overflows"] = listen_overflows() - overflows
    # Fraction of the run the server's threads sat runnable without a CPU (the neighbours' share).
    r["server_runq"] = (runqueue_seconds(server.proc.pid) - waited) / (time.monotonic() - t0)
    r["backend_time_wait"] = time_wait_to(server.backend_port) - time_wait  # throwaway backend connections
    # Context switches per answered call: voluntary ones are waits for I/O (one per reactor turn that found
    # nothing to do), involuntary ones preemptions by the backend sharing the core. Fewer of either means
    # more calls handled per wake-up.
    calls = max(1, sum(r["outcomes"].values()))
    after = context_switches(server.proc.pid)
    r["server_vcsw_per_call"] = (after[0] - switches[0]) / calls
    r["server_ivcsw_per_call"] = (after[1] - switches[1]) / calls
    return r


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of ``pid``'s threads so far (``/proc/PID/task/*/status``)."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return voluntary, involuntary


KEYS = ("ok_rps", "p50_ms", "p99_ms", "max_ms", "max_over_p50", "server_cpu_us", "server_sys_us", "backend_cpu_us",
        "backend_sys_us", "client_cpu",
        "listen_overflows", "backend_time_wait", "server_runq", "server_vcsw_per_call", "server_ivcsw_per_call")


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def paired(gw: list[dict[str, Any]], ref: list[dict[str, Any]]) -> str:
    """The CPU-per-call ratio of each repeat's back-to-back pair (the two sides run one after the other, so a
    pair shares the machine's state of those seconds), and their median: steadier than the ratio of the
    medians when the machine's speed changes between repeats."""
    ratios = [r["server_cpu_us"] / g["server_cpu_us"] for g, r in zip(gw, ref, strict=True)]
    return f"{' '.join(f'{x:.2f}' for x in ratios)}, median {statistics.median(ratios):.2f}x"


def ratio_line(arrangement: str, setting: Setting, gw: list[dict[str, Any]], ref: list[dict[str, Any]],
               beside: list[dict[str, Any]]) -> str:
    def side(runs: list[dict[str, Any]]) -> str:
        return (f"{median(runs, 'ok_rps'):.0f} ok/s, p50 {median(runs, 'p50_ms'):.1f} / p99 "
                f"{median(runs, 'p99_ms'):.1f} / max {median(runs, 'max_ms'):.1f} ms (max/p50 "
                f"{median(runs, 'max_over_p50'):.1f}x), {median(runs, 'server_cpu_us'):.0f} µs CPU/call "
                f"({median(runs, 'server_sys_us'):.0f} in the kernel), "
                f"{median(runs, 'server_vcsw_per_call'):.2f}/{median(runs, 'server_ivcsw_per_call'):.2f} "
                "waits/preemptions per call"
                + (f", listen overflows {sum(r['listen_overflows'] for r in runs)}"
                   if any(r["listen_overflows"] for r in runs) else ""))

    line = f"[{arrangement}] {setting.name}: gatewayd {side(gw)}"
    if ref:
        line += (f" | reference {side(ref)} | ratio {median(gw, 'ok_rps') / median(ref, 'ok_rps'):.2f}x ok/s, "
                 f"{median(ref, 'server_cpu_us') / median(gw, 'server_cpu_us'):.2f}x CPU/call"
                 f" (repeat by repeat: {paired(gw, ref)})")
    elif beside:
        rates = [c["ok_rps"] / g["ok_rps"] for c, g in zip(gw, beside, strict=True)]
        line += (f" | gatewayd gRPC-64 beside it {side(beside)} | rate vs gRPC-64 repeat by repeat: "
                 f"{' '.join(f'{x:.2f}' for x in rates)}, median {statistics.median(rates):.2f}x")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arrangements", nargs="+", choices=list(ARRANGEMENTS), default=list(ARRANGEMENTS))
    parser.add_argument("--settings", nargs="+", choices=[s.name for s in SETTINGS], default=[s.name for s in SETTINGS])
    parser.add_argument("--max-rate", type=float, default=4000.0,
                        help="requests pre-signed per run = this x (warmup + duration)")
    parser.add_argument("--profile", action="store_true",
                        help="after the runs, one more run per (setting, server) under py-spy (not timed; summary "
                             "next to the logs)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    requests = int(args.max_rate * (args.warmup + args.duration))
    lines = []
    for arrangement in args.arrangements:
        work = Path(tempfile.mkdtemp(prefix=f"bench-ref-{arrangement}-"))
        servers: list[Server] = []
        try:
            servers.append(start_gatewayd(work / "gatewayd", ARRANGEMENTS[arrangement]))
            key_file = work / "gatewayd" / "gateway.key"
            servers.append(start_reference(work / "reference", ARRANGEMENTS[arrangement], key_file))
            key = GatewayKey.load(key_file)
            checks = {s.name: sanity(s, key) for s in servers}
            print(f"[{arrangement}] sanity: {checks}", flush=True)
            for setting in (s for s in SETTINGS if s.name in args.settings):
                # Each side is (name, server, setting). A Connect setting (no reference) runs beside a
                # gatewayd gRPC-64 run of its own in every repeat: its target is gRPC's rate, and the
                # machine's speed moves too much between settings to compare with gRPC-64's runs.
                sides = [(s.name, s, setting) for s in servers if s.name == "gatewayd" or setting.reference]
                if not setting.reference:
                    sides.append((BESIDE, servers[0], GRPC64))
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in sides}
                for repeat in range(args.repeats):
                    # Alternate, so a change in the machine's load hits both sides; the order flips
                    # every repeat, so a steady drift does not favour the side that runs first. A
                    # Connect setting runs A B B A each repeat (two adjacent pairs, each side first
                    # once): with an odd number of flipped repeats one side would go first more often.
                    order = sides[::-1] if repeat % 2 else sides
                    if not setting.reference:
                        order = order + order[::-1]
                    for name, server, run_setting in order:
                        r = loadgen(server, run_setting, args.duration, args.warmup, requests)
                        if r["unused_requests"] == 0:
                            print(f"warning: {name} used every pre-signed request: raise --max-rate", flush=True)
                        runs[name].append(r)
                if args.profile:
                    for name, server, run_setting in sides:
                        out = work / f"profile-{setting.name}-{name}.txt"
                        prof = Profiler(server.proc.pid, out)
                        prof.start()
                        loadgen(server, run_setting, args.duration, args.warmup, requests)
                        prof.stop()
                        out.with_suffix(".summary").write_text(summarize(out))
                        print(f"profile: {out.with_suffix('.summary')}", flush=True)
                for name, rs in runs.items():
                    emit({"bench": "reference", "arrangement": arrangement, "setting": setting.name,
                          "server": name, "protocol": setting.protocol, "connections": setting.connections,
                          "streams": setting.streams, "in_flight": setting.in_flight, "duration_s": args.duration,
                          "warmup_s": args.warmup, "repeats": args.repeats,
                          "outcomes": [r["outcomes"] for r in rs], "sanity": checks.get(name),
                          **{k: [r[k] for r in rs] for k in KEYS}}, args.out)
                line = ratio_line(arrangement, setting, runs["gatewayd"], runs.get("reference", []),
                                  runs.get(BESIDE, []))
                lines.append(line)
                print(line, flush=True)
        finally:
            for server in reversed(servers):
                server.stop()
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
