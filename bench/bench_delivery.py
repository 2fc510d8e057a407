"""Benchmark 5: one event to N streams, measured inside the gateway and end to end (issue 13).

``python -m bench.bench_delivery --layout 10x1000 --events 20 --procs 2``

The gateway (production mode, memory stores, ``max_concurrent_streams`` raised
to the streams per connection) runs on core 0 under ``bench/twist_observe.py``,
the bench-only observer (see there). The dev backend and ``--procs``
``bench/fanout_subscriber.py`` processes (the connections split between them)
run on core 1. All streams belong to 10 sessions of one user.

Once every stream has ``gateway.server_time`` the orchestrator posts
``--events`` notes straight to the backend (``POST /api/v1/user/notes`` with the
user's headers, not through the gateway: the gateway's only work is the
fan-out), ``--gap`` seconds apart. Per event:

- gateway's own time (observer): arrival of the backend event -> last stream's
  bytes handed to the kernel (``gateway_ms``), -> first stream's (``first_ms``),
  and the longest reactor turn while it went out (``max_turn_ms``);
- end to end: the backend POST -> each stream's read in a subscriber process
  (the subscribers only record reads while events arrive, and parse afterwards);
- gateway CPU per delivery: over the whole event phase (``cpu_us_per_delivery``,
  idle time included) and during the fan-outs only (``fanout_cpu_us_per_delivery``:
  the observer's ``cpu_ms`` per event over the live streams, median of the events);
  RSS per open stream.

``--events 0`` only opens the streams and measures RSS (the 100,000-stream check:
``--layout 1000x100 --procs 4 --events 1``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import CLIENT_CORE, PYTHON, cpu_seconds, cpu_split, emit, exit_on_sigterm, percentile, rss_kib
from bench._stack import login, start_stack
from bench.gc_stats import snapshot
from bench.gc_stats import summarize as summarize_gc
from bench.profile import Profiler
from bench.profile import summarize as summarize_profile


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The next stdout line of ``proc`` before ``deadline`` (perf_counter), else TimeoutError."""
    assert proc.stdout is not None
    while time.perf_counter() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"subscriber {proc.pid} exited ({proc.poll()})")
            return line
    raise TimeoutError(f"subscriber {proc.pid} said nothing in time")


def publish(backend_port: int, session: dict[str, str], i: int) -> float:
    """POST one note straight to the backend; returns the perf_counter time just before sending."""
    conn = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=10)
    body = json.dumps({"text": f"delivery {i}"}).encode()
    headers = {"Content-Type": "application/json", "X-User-Id": session["user_id"],
               "X-Device-Session-Id": session["device_session_id"], "X-Request-Id": f"d-{os.getpid()}-{i}"}
    conn.connect()
    sent = time.perf_counter()
    conn.request("POST", "/api/v1/user/notes", body, headers)
    status = conn.getresponse().status
    conn.close()
    if status != 200:
        raise RuntimeError(f"backend answered {status} to a note")
    return sent


def summarize(sent: list[float], observed: list[dict[str, Any]], arrivals: list[list[list[float]]],
              live: int) -> dict[str, Any]:
    """Per-event and per-delivery numbers from the send times, the observer's lines and the subscribers'
    arrivals (per process, per event, per stream)."""
    e2e: list[float] = []
    last_per_event: list[float] = []
    missing = 0
    for k, t_sent in enumerate(sent):
        got = [t for per_proc in arrivals for t in (per_proc[k] if k < len(per_proc) else [])]
        missing += live - len(got)
        e2e.extend((t - t_sent) * 1000 for t in got)
        if got:
            last_per_event.append((max(got) - t_sent) * 1000)
    events = [o for o in observed if o["kind"] == "client_event"]
    gateway = [o["gateway_ms"] for o in events if o["gateway_ms"] is not None]
    first = [o["first_ms"] for o in events if o["first_ms"] is not None]
    turns = [o["max_turn_ms"] for o in events]
    fanout_cpu = [o["cpu_ms"] * 1000 / live for o in events if o.get("cpu_ms") is not None and live]
    transit = [(o["arrival"] - s) * 1000 for o, s in zip(events, sent, strict=False)]

    def dist(values: list[float]) -> dict[str, float]:
        return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values, default=0.0)}

    return {"observed_events": len(events), "gateway_ms": dist(gateway), "first_ms": dist(first),
            "max_turn_ms": dist(turns), "backend_to_gateway_ms": dist(transit), "e2e_ms": dist(e2e),
            "e2e_last_ms": dist(last_per_event), "deliveries": len(e2e), "missing": missing,
            "fanout_cpu_us_per_delivery": statistics.median(fanout_cpu) if fanout_cpu else None,
            "writes_per_event": statistics.median([o["writes"] for o in events]) if events else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", default="10x1000", help="connections x streams per connection")
    parser.add_argument("--procs", type=int, default=2, help="subscriber processes (connections split)")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between events")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait after the last event (default: 1 + 1 per 10,000 streams)")
    parser.add_argument("--wave", type=int, default=500, help="streams opened at a time per process")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on opening and on the event phase")
    parser.add_argument("--gc-stats", action="store_true",
                        help="record the gateway's GC collections and pauses (bench/gc_stats.py; costs a little CPU)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy on the gateway while the streams open (summary in the work folder)")
    parser.add_argument("--fanout-batch", type=int, default=0,
                        help="the gateway's server.fanout_batch (GATEWAYD_SERVER_FANOUT_BATCH; 0: its default)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    conns, streams = (int(x) for x in args.layout.lower().split("x"))
    if conns % args.procs:
        raise SystemExit("--procs must divide the connection count")
    work = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    observe = work / "observer.jsonl"
    gc_file = work / "gc.json"
    env = {"BENCH_OBSERVE": str(observe), "BENCH_OBSERVE_WINDOW_S": "1.0"}
    if args.gc_stats:
        env["BENCH_GC_STATS"] = str(gc_file)
    if args.fanout_batch:
        env["GATEWAYD_SERVER_FANOUT_BATCH"] = str(args.fanout_batch)
    stack = start_stack(work, "memory", max_streams=max(100, streams + 10), wrapper="twist_observe.py", env=env)
    subs: list[subprocess.Popen[str]] = []
    gc_stats: dict[str, Any] | None = None
    gc_before: dict[str, Any] | None = None
    try:
        assert stack.gateway is not None
        gw = stack.gateway.pid
        sessions = login(stack.port, args.sessions)
        (work / "sessions.json").write_text(json.dumps(sessions))
        rss_before = rss_kib(gw)
        gc_before = snapshot(gw, gc_file) if args.gc_stats else None
        prof = Profiler(gw, work / "profile-open.txt")
        if args.profile:
            prof.start()
            time.sleep(1.0)  # py-spy attaching
        opening = time.perf_counter()
        cpu0 = cpu_seconds(gw)
        sys0 = cpu_split(gw)[1]
        deadline = time.perf_counter() + args.timeout
        for _ in range(args.procs):
            subs.append(subprocess.Popen(
                ["taskset", "-c", CLIENT_CORE, PYTHON, "-m", "bench.fanout_subscriber", "--port", str(stack.port),
                 "--sessions", str(work / "sessions.json"), "--connections", str(conns // args.procs),
                 "--streams", str(streams), "--wave", str(args.wave), "--timeout", str(args.timeout)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent))
        ready = [json.loads(read_line(p, deadline)) for p in subs]
        open_cpu = cpu_seconds(gw) - cpu0
        open_sys = cpu_split(gw)[1] - sys0
        if args.profile:
            prof.stop()
            (work / "profile-open.summary").write_text(summarize_profile(prof.out))
            print(f"profile: {work / 'profile-open.summary'}", flush=True)
        opened = sum(r["opened"] for r in ready)
        time.sleep(1.0)  # let the gateway settle before sampling memory
        rss_after = rss_kib(gw)
        sent = []
        cpu1 = cpu_seconds(gw)
        for i in range(args.events):
            sent.append(publish(stack.backend_http, sessions[0], i))
            time.sleep(args.gap)
        # The subscribers cannot tell when the last event is in (they only record): wait for it.
        time.sleep(args.settle or 1.0 + conns * streams / 10_000)
        publish_cpu = cpu_seconds(gw) - cpu1
        publish_end = time.perf_counter()
        gc_stats = snapshot(gw, gc_file) if args.gc_stats else None
        results = []
        for p in subs:
            assert p.stdin is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in subs:
            results.append(json.loads(read_line(p, time.perf_counter() + args.timeout)))
            p.wait(30)
        time.sleep(0.5)
    finally:
        for p in subs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
        stack.stop()
    observed = [json.loads(line) for line in observe.read_text().splitlines()] if observe.exists() else []
    live = sum(r["live"] for r in results)
    summary = summarize(sent, observed, [r["arrivals"] for r in results], live)
    if gc_stats is not None:
        summary["gc_open"] = summarize_gc(gc_stats, opening, sent[0] if sent else publish_end)
        summary["gc_events"] = summarize_gc(gc_stats, sent[0] if sent else publish_end, publish_end)
        if gc_before is not None:
            summary["gc_tracked_per_stream"] = (gc_stats["tracked"] - gc_before["tracked"]) / max(1, opened)
            before = dict(gc_before["types"])
            summary["gc_types_per_stream"] = {t: round((n - before.get(t, 0)) / max(1, opened), 2)
                                              for t, n in gc_stats["types"] if n - before.get(t, 0) >= opened // 10}
    emit({"bench": "delivery", "connections": conns, "streams": streams, "n": conns * streams, "procs": args.procs,
          "events": args.events, "gap_s": args.gap, "fanout_batch": args.fanout_batch or None,
          "opened": opened, "live": live,
          "open_failures": [r["open_failures"] for r in ready], "open_s": max(r["open_s"] for r in ready),
          "cpu_us_per_open": 1e6 * open_cpu / max(1, opened),
          "cpu_us_per_open_sys": 1e6 * open_sys / max(1, opened),  # of which the kernel's
          "cpu_us_per_delivery": 1e6 * publish_cpu / max(1, live * args.events),
          "rss_before_kib": rss_before, "rss_after_kib": rss_after,
          "rss_kib_per_stream": (rss_after - rss_before) / max(1, opened),
          "ended_after_open": [r["ended_after_open"] for r in results], **summary}, args.out)


if __name__ == "__main__":
    main()
