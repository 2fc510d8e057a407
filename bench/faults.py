"""Faults under load, with a ledger (issue 10): ``python -m bench.faults faults`` and ``... soak``.

Not CI. Loopback only; every wait is bounded; it stops (by pid) what it starts.

The world (``World``): ``redis-server``; ``bench/ledger_backend.py`` (the
reference backend recording every note it executed, with switchable faults,
in front of its push port and, for ``faults``, of Redis); two production-mode
gateways (``twist gatewayd --config``) on one ``reuseport:`` port sharing the
Redis and one signing key; ``bench/faults_client.py`` driving
``user.notes.create`` at a steady rate and keeping SubscribeEvents streams
open (a few per regular user, and 600 for one "fan-out" user).

``faults``: one fault at a time (see ``FAULTS``), each after a clean baseline,
held a few seconds, then lifted; afterwards the records are checked
(``check``) and the time to recover is measured per fault (``recovery``).

``soak``: measures the capacity (``bench.loadgen``, notes.create, closed
loop), then offers 70 % of it for ``--minutes`` with streams open, sampling
every process's RSS and the load average every 10 s.

Results: ``bench/results/faults-<UTC>.json`` / ``soak-<UTC>.json`` and a
markdown summary on stdout (copied into docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import time
import urllib.request
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import (
    CLIENT_CORE,
    PYTHON,
    ROOT,
    SERVER_CORE,
    TWIST,
    Proc,
    code_version,
    exit_on_sigterm,
    free_port,
    machine,
    rss_kib,
    start,
    wait_port,
)
from bench._stack import BIG
from bench._stack import login as stack_login
from gatewayd.http2.h2adapter import ServerH2Connection
from gatewayd.signing import GatewayKey

RESULTS = ROOT / "bench" / "results"
# Every budget far above the offered load (as bench/_stack.py does): the stages run, nothing is refused.
UNLIMITED = "\n".join(["[limits]", *(f"{name} = {BIG}" for name in ("ip", "session", "user", "message_type")),
                       "[public]", *(f"{name} = {BIG}" for name in ("login_ip", "send_email", "confirm_challenge"))])
FANOUT_STREAMS = 600  # > server.fanout_batch (500): every fan-out to them takes several reactor turns


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the world ------------------------------------------------------------------------------------


@dataclass
class World:
    work: Path
    redis_port: int = 0
    redis_proxy_port: int = 0
    http: int = 0
    push: int = 0
    control: int = 0
    redis_control: int = 0
    port: int = 0
    metrics_ports: list[int] = field(default_factory=list)
    redis: Proc | None = None
    backend: Proc | None = None
    gateways: list[Proc | None] = field(default_factory=lambda: [None, None])
    restarts: int = 0
    procs: list[Proc] = field(default_factory=list)
    twist: list[str] = field(default_factory=lambda: [TWIST])

    # -- processes --

    def start_redis(self) -> None:
        self.redis = start(f"redis-{len(self.procs)}", [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.work)], CLIENT_CORE, self.work)
        self.procs.append(self.redis)
        wait_port(self.redis_port, proc=self.redis.popen)

    def start_gateway(self, i: int) -> Proc:
        name = f"gw{i}" + (f"-restart{self.restarts}" if self.gateways[i] is not None else "")
        proc = start(name, [*self.twist, "--log-format=text", "gatewayd", "--config",
                            str(self.work / f"gw{i}.toml")], SERVER_CORE, self.work)
        self.procs.append(proc)
        self.gateways[i] = proc
        return proc

    def wait_gateway(self, proc: Proc, timeout_s: float = 30.0) -> float:
        """Until its log says its push call is subscribed (listening, key, backend reachable); the time it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}")
            text = proc.log.read_text(errors="replace")
            if "gatewayd listening on" in text and "push consumer subscribed" in text:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"{proc.name} not subscribed after {timeout_s}s; see {proc.log}")

    def metric(self, name: str) -> list[float]:
        """``name`` (a counter or gauge without labels) on each gateway; 0 for one that does not answer."""
        values = []
        for port in self.metrics_ports:
            value = 0.0
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                text = ""  # that gateway is restarting
            for line in text.splitlines():
                if line.startswith(name + " ") or line.startswith(name + "_total "):
                    value = float(line.split()[-1])
            values.append(value)
        return values

    def delivered(self) -> int:
        """Events written to streams, summed over both gateways (``gatewayd_push_events_delivered``)."""
        return int(sum(self.metric("gatewayd_push_events_delivered")))

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.control}/state", timeout=10) as r:
            state: dict[str, Any] = json.loads(r.read())
            return state

    def slow_redis(self, delay_s: float) -> dict[str, Any]:
        return self.fault(_url=f"http://127.0.0.1:{self.redis_control}/", delay_s=delay_s)

    def fault(self, _url: str = "", **change: Any) -> dict[str, Any]:
        request = urllib.request.Request(_url or f"http://127.0.0.1:{self.control}/fault",
                                         json.dumps(change).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as r:
            state: dict[str, Any] = json.loads(r.read())
            return state

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def gateway_config(world: World, i: int, key: Path, redis_port: int, backend_timeout_s: float) -> None:
    (world.work / f"gw{i}.toml").write_text(f"""
[server]
listen = "reuseport:{world.port}:interface=127.0.0.1"
metrics_listen = "tcp:{world.metrics_ports[i]}:interface=127.0.0.1"
drain_timeout_s = 5.0
[backend]
base_url = "http://127.0.0.1:{world.http}"
push_endpoint = "tcp:host=127.0.0.1:port={world.push}"
gateway_id = "gw{i}"
timeout_s = {backend_timeout_s}
push_backoff_initial_s = 0.2
push_backoff_max_s = 2.0
[keys]
signing_key = "{key}"
[stores]
kind = "redis"
redis_url = "redis://127.0.0.1:{redis_port}/0"
key_prefix = "faults:"
timeout_s = 1.0
{UNLIMITED}
""")


def start_world(work: Path, redis_proxy: bool, backend_timeout_s: float = 2.0, h2_closed_streams: int = 0,
                tracemalloc: bool = False) -> World:
    world = World(work)
    if h2_closed_streams:
        world.twist = [PYTHON, str(ROOT / "bench" / "twist_h2closed.py"), str(h2_closed_streams)]
    if tracemalloc:
        # Both gateways append to one file; each section names the time it was taken.
        world.twist = [PYTHON, str(ROOT / "bench" / "twist_tracemalloc.py"), str(work / "tracemalloc.txt")]
    work.mkdir(parents=True, exist_ok=True)
    world.redis_port, world.http, world.push, world.control, world.port = (free_port() for _ in range(5))
    world.metrics_ports = [free_port(), free_port()]
    try:
        world.start_redis()
        args = [PYTHON, "-m", "bench.ledger_backend", "--http", str(world.http), "--push", str(world.push),
                "--control", str(world.control), "--ledger", str(work / "ledger.jsonl")]
        gateway_redis = world.redis_port
        if redis_proxy:
            world.redis_proxy_port = gateway_redis = free_port()
            world.redis_control = free_port()
            proxy = start("redis-proxy", [
                PYTHON, "-m", "bench.faults_proxy", "--listen", str(world.redis_proxy_port),
                "--target", str(world.redis_port), "--control", str(world.redis_control)], CLIENT_CORE, work)
            world.procs.append(proxy)
            wait_port(world.redis_control, proc=proxy.popen)
        world.backend = start("backend", args, CLIENT_CORE, work)
        world.procs.append(world.backend)
        wait_port(world.control, proc=world.backend.popen)
        key = work / "gateway.key"
        GatewayKey.generate().save(key)
        for i in range(2):
            gateway_config(world, i, key, gateway_redis, backend_timeout_s)
        for i in range(2):
            world.start_gateway(i)
        for proc in world.gateways:
            assert proc is not None
            world.wait_gateway(proc, timeout_s=120.0 if tracemalloc else 30.0)
    except BaseException:
        world.stop()
        raise
    return world


def login(port: int, email: str, n: int) -> list[dict[str, str]]:
    """``n`` device sessions of one user over the public API (dev code 000000)."""
    return stack_login(port, n, email=email)


def prepare_sessions(world: World, users: int, fanout: bool) -> tuple[Path, str]:
    """Regular users (2 sessions each, one stream per session, all making calls) and the fan-out user."""
    regular = [s for u in range(users) for s in login(world.port, f"faults{u}@example.com", 2)]
    streams: list[dict[str, Any]] = [{"session": s, "count": 1, "kind": "regular"} for s in regular]
    fanout_user = ""
    if fanout:
        big = login(world.port, "fanout@example.com", 4)
        fanout_user = big[0]["user_id"]
        streams += [{"session": s, "count": FANOUT_STREAMS // len(big), "kind": "fanout"} for s in big]
    path = world.work / "sessions.json"
    path.write_text(json.dumps({"calls": regular, "streams": streams}))
    (world.work / "loadgen-sessions.json").write_text(json.dumps(regular))
    return path, fanout_user


def start_client(world: World, sessions: Path, rate: float, duration_s: float, light: bool,
                 name: str = "client", kinds: str = "regular", core: str = CLIENT_CORE) -> Proc:
    """A ``faults_client`` process recording into ``work/name``; ``kinds``: its stream groups."""
    keys = world.work / "keys.json"
    from bench.faults_client import fetch_keys

    fetch_keys(world.port, keys)
    args = [PYTHON, "-m", "bench.faults_client", "--port", str(world.port), "--sessions", str(sessions),
            "--keys", str(keys), "--rate", str(rate), "--duration", str(duration_s),
            "--out", str(world.work / name), "--kinds", kinds]
    if light:
        args.append("--light")
    proc = start(name, args, core, world.work)
    world.procs.append(proc)
    return proc


def wait_line(proc: Proc, text: str, timeout_s: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if text in proc.log.read_text(errors="replace"):
            return
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}")
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name}: no {text!r} after {timeout_s}s; see {proc.log}")


def finish_client(proc: Proc, timeout_s: float = 60.0) -> dict[str, Any]:
    proc.stop(timeout_s)
    summary = proc.log.parent / proc.name / "summary.json"
    if not summary.exists():
        raise RuntimeError(f"the client wrote no summary; see {proc.log}")
    result: dict[str, Any] = json.loads(summary.read_text())
    return result


# --- the faults -----------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    what: str
    inject: Callable[[World, dict[str, Any]], object]
    lift: Callable[[World, dict[str, Any]], object]
    hold_s: float = 5.0
    # Measured from the moment the fault is lifted, or (instant faults) from when it was injected.
    measure_from: str = "lift"


def _redis_down(world: World, info: dict[str, Any]) -> None:
    assert world.redis is not None
    world.redis.stop()


def _redis_up(world: World, info: dict[str, Any]) -> None:
    world.start_redis()


def _gateway_sigterm(world: World, info: dict[str, Any]) -> None:
    proc = world.gateways[0]
    assert proc is not None
    t0 = time.monotonic()
    proc.stop(timeout_s=30)
    info["exit_s"] = round(time.monotonic() - t0, 3)
    info["exit_code"] = proc.popen.returncode


def _gateway_back(world: World, info: dict[str, Any]) -> None:
    world.restarts += 1
    info["restart_s"] = round(world.wait_gateway(world.start_gateway(0)), 3)


BURST_NOTES = 200


def _fanout_cut(world: World, info: dict[str, Any], user_id: str) -> None:
    """A burst of notes to the fan-out user's streams; the push stream cut once the gateways' delivered
    counters show the fan-out under way (10 % of it done); then the counters until they settle.

    Deliveries counted after the cut prove it landed while the gateways were still fanning out."""
    expected = BURST_NOTES * FANOUT_STREAMS
    before = world.delivered()
    world.fault(burst={"user_id": user_id, "notes": BURST_NOTES})
    t_burst = time.time()
    deadline = t_burst + 10
    at_cut = before
    polls = []
    while time.time() < deadline:
        at_cut = world.delivered()
        polls.append((round(time.time() - t_burst, 3), at_cut - before))
        if at_cut - before >= expected // 10:
            break
        time.sleep(0.02)
    info["polls"] = polls[-10:]
    world.fault(push="cut")
    t_cut = time.time()
    samples = [(t_cut, at_cut)]
    while time.time() < t_cut + 15:
        time.sleep(0.2)
        samples.append((time.time(), world.delivered()))
        if len(samples) >= 3 and samples[-1][1] == samples[-3][1]:
            break  # settled: nothing more arrives while the push stream is cut
    final = samples[-1][1]
    settled_at = min(t for t, d in samples if d == final)
    info.update(burst_deliveries=expected, delivered_at_cut=at_cut - before, delivered_after_cut=final - at_cut,
                fanout_continued_s=round(max(0.0, settled_at - t_cut), 2))


def faults(fanout_user: str) -> list[Fault]:
    return [
        Fault("redis restarted", "redis-server stopped (SIGTERM), started again on its port 3 s later",
              _redis_down, _redis_up, hold_s=3.0),
        Fault("redis slowed", "250 ms added each way between the gateways and Redis (TCP proxy)",
              lambda w, i: w.slow_redis(0.25), lambda w, i: w.slow_redis(0.0)),
        Fault("backend 5xx", "every backend route: half 503 before executing, half executed then 500",
              lambda w, i: i.update(w.fault(backend="5xx")), lambda w, i: w.fault(backend="none")),
        Fault("backend slow", "every backend route executed at once, answered 0.5-3 s later "
              "(gateway backend.timeout_s = 2)",
              lambda w, i: i.update(w.fault(backend="slow", slow_min_s=0.5, slow_max_s=3.0)),
              lambda w, i: w.fault(backend="none")),
        Fault("backend resets", "every backend connection: half aborted before executing, half executed "
              "then aborted", lambda w, i: i.update(w.fault(backend="reset")),
              lambda w, i: w.fault(backend="none")),
        Fault("push cut mid fan-out", f"{BURST_NOTES} events to the {FANOUT_STREAMS} streams of one user; the push "
              "connection cut once 10 % of those deliveries were done; restored 0.5 s after the fan-out settled",
              lambda w, i: _fanout_cut(w, i, fanout_user),
              lambda w, i: w.fault(push="restore"), hold_s=0.5),
        Fault("gateway SIGTERM", "one of the two gateways on the reuseport port stopped with SIGTERM "
              "and started again", _gateway_sigterm, _gateway_back, hold_s=0.0, measure_from="inject"),
    ]


def new_work(kind: str) -> tuple[str, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    work = Path(f"/tmp/bench-{kind}-{stamp}")
    log(f"work folder {work}")
    return stamp, work


def run_faults(args: argparse.Namespace) -> None:
    stamp, work = new_work("faults")
    world = start_world(work, redis_proxy=True)
    timeline: list[dict[str, Any]] = []
    try:
        sessions, fanout_user = prepare_sessions(world, args.users, fanout=True)
        plan = [f for f in faults(fanout_user) if not args.only or f.name in args.only]
        # The clients run until stopped; the duration only bounds them should this script die.
        total = 3 * (args.warmup_s + sum(args.baseline_s + f.hold_s + args.observe_s + 15 for f in plan)) + 300
        client = start_client(world, sessions, args.rate, total, light=False)
        # The fan-out streams in a process of their own: reading 120,000 events must not delay the records
        # of the calls and regular streams (when events resume is measured there).
        fanout = start_client(world, sessions, 0, total, light=False, name="fanout", kinds="fanout", core="0,1")
        wait_line(client, "ready", 120)
        wait_line(fanout, "ready", 120)
        log(f"clients ready: {args.rate} calls/s, streams open; warm-up {args.warmup_s}s")
        time.sleep(args.warmup_s)
        for fault in plan:
            time.sleep(args.baseline_s)
            info: dict[str, Any] = {"name": fault.name, "what": fault.what, "hold_s": fault.hold_s}
            log(f"inject: {fault.name}")
            info["t_inject"] = time.time()
            fault.inject(world, info)
            time.sleep(fault.hold_s)
            log(f"lift: {fault.name}")
            info["t_lift"] = time.time()
            fault.lift(world, info)
            info["t_lifted"] = time.time()
            info["t_ref"] = info["t_lift"] if fault.measure_from == "lift" else info["t_inject"]
            timeline.append(info)
            time.sleep(args.observe_s)
            info["t_observed"] = time.time()
        log("stopping the clients")
        summary = finish_client(client)
        fanout_summary = finish_client(fanout)
    finally:
        world.stop()
    report = analyse(work, summary, fanout_summary, timeline)
    report.update(machine=machine(), code=code_version(), rate=args.rate, users=args.users, work=str(work),
                  command=" ".join(["python -m bench.faults faults", *args.argv]))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"faults-{stamp}.json"
    out.write_text(json.dumps(report, indent=1))
    print(render_faults(report))
    log(f"results in {out}")


# --- analysis -------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ledger_counts(work: Path) -> Counter[str]:
    return Counter(entry["rid"] for entry in read_jsonl(work / "ledger.jsonl"))


def check(work: Path, summary: dict[str, Any], calls: list[Any] | None) -> dict[str, Any]:
    """The ledger against the client's records."""
    executed = ledger_counts(work)
    duplicates = {rid: n for rid, n in executed.items() if n > 1}
    client_dir = work / "client"
    ok_rids = set((client_dir / "ok_rids.txt").read_text().split())
    event_rids = {r for r in (client_dir / "event_rids.txt").read_text().split() if not r.startswith("burst-")}
    ok_not_executed = sorted(ok_rids - executed.keys())
    events_not_executed = sorted(event_rids - executed.keys())
    result: dict[str, Any] = {
        "executed": len(executed), "executed_twice": len(duplicates), "duplicate_examples": list(duplicates)[:5],
        "ok_not_executed": len(ok_not_executed), "events_not_executed": len(events_not_executed),
        "unclear_outcomes": summary["unclear"], "stream_violations": {
            k: v for k, v in summary["violations"].items() if k != "reorder_across_streams"},
        "reorder_across_streams": summary["violations"].get("reorder_across_streams", 0),
    }
    if calls is not None:
        executed_by_outcome: Counter[str] = Counter()
        for rid, _t0, _t1, outcome in calls:
            if outcome != "ok" and rid in executed:
                executed_by_outcome[outcome] += 1
        result["executed_but_not_ok"] = dict(executed_by_outcome)
    result["passed"] = (not duplicates and not ok_not_executed and not events_not_executed
                        and summary["unclear"] == 0 and not result["stream_violations"])
    return result


def calls_recovery(calls: list[Any], t_ref: float, window_s: float = 2.0) -> float | None:
    """Seconds from ``t_ref`` to the first call after which every call started within ``window_s`` is ``ok``.

    ``calls`` sorted by start time; None if that never happens before the records end.
    """
    i = bisect_left([c[1] for c in calls], t_ref)
    while i < len(calls):
        t = calls[i][1]
        j = i
        while j < len(calls) and calls[j][1] < t + window_s and calls[j][3] == "ok":
            j += 1
        if j == len(calls):
            return None  # the records end inside the window
        if calls[j][1] >= t + window_s:
            return t - t_ref
        i = j + 1  # calls[j] failed: start after it
    return None


def streams_recovery(streams: list[Any], slots: int, t_from: float, t_ref: float, t_until: float) -> float | None:
    """Seconds from ``t_ref`` until every slot is open again after the last stream end in [t_from, t_until].

    0.0 when no stream ended then; None when they were not all open again by the end of the records.
    """
    last_end = max((t for _s, t, what, _c in streams if what == "end" and t_from <= t <= t_until), default=None)
    if last_end is None:
        return 0.0
    open_slots: set[int] = set()
    for slot, t, what, _code in streams:
        if what == "open":
            open_slots.add(slot)
        else:
            open_slots.discard(slot)
        if t >= last_end and len(open_slots) == slots:
            return max(0.0, t - t_ref)
    return None


def events_resume(events: list[Any], t_ref: float) -> float | None:
    """Seconds from ``t_ref`` until a regular stream received a note the backend published after ``t_ref``."""
    after = [t_recv for t_recv, ts_ms in events if ts_ms >= t_ref * 1000]
    return min(after) - t_ref if after else None


def analyse(work: Path, summary: dict[str, Any], fanout: dict[str, Any],
            timeline: list[dict[str, Any]]) -> dict[str, Any]:
    client_dir = work / "client"
    calls = sorted(read_jsonl(client_dir / "calls.jsonl"), key=lambda c: c[1])
    # Both clients' streams, the fan-out client's slots numbered after the regular ones.
    streams = sorted(read_jsonl(client_dir / "streams.jsonl") + [
        [slot + summary["slots"], *rest] for slot, *rest in read_jsonl(work / "fanout" / "streams.jsonl")],
        key=lambda s: s[1])
    slots = summary["slots"] + fanout["slots"]
    merged = {**summary, "violations": dict(Counter(summary["violations"]) + Counter(fanout["violations"]))}
    events = read_jsonl(client_dir / "events.jsonl")
    executed = ledger_counts(work)
    rows = []
    for info in timeline:
        t_inject, t_ref, t_until = info["t_inject"], info["t_ref"], info["t_observed"]
        rec = calls_recovery(calls, t_ref)
        end = t_ref + (rec or 0.0) + 2.0
        during = [c for c in calls if t_inject - 0.5 <= c[1] <= end]
        outcomes = Counter(c[3] for c in during)
        row = {
            **{k: v for k, v in info.items() if not k.startswith("t_")},
            "calls_recovery_s": None if rec is None else round(rec, 2),
            "streams_recovery_s": _round(streams_recovery(streams, slots, t_inject, t_ref, t_until)),
            "events_resume_s": _round(events_resume(events, t_ref)),
            "calls_in_window": len(during), "outcomes": dict(outcomes),
            "not_ok_executed": sum(1 for c in during if c[3] != "ok" and c[0] in executed),
            "stream_ends": dict(Counter(code for _s, t, what, code in streams
                                        if what == "end" and t_inject - 0.5 <= t <= end)),
        }
        rows.append(row)
    notes = fanout["notes_per_slot"]
    return {"check": check(work, merged, calls), "faults": rows, "client": {
        k: summary[k] for k in ("sent", "outcomes", "stream_ends", "events", "streams_opened", "connect_failures")},
        "fanout_client": {k: fanout[k] for k in ("stream_ends", "events", "streams_opened", "connect_failures")},
        "fanout_notes_per_stream": [min(notes), max(notes)] if notes else None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def render_faults(report: dict[str, Any]) -> str:
    c = report["check"]
    lines = [
        f"Faults run: {report['rate']} calls/s, {report['client']['sent']} calls, "
        f"{report['client']['streams_opened'] + report['fanout_client']['streams_opened']} streams opened, "
        f"load average {report['machine']['loadavg']}",
        "",
        "| fault | what | calls recover (s) | streams recover (s) | events resume (s) | "
        "calls in window: outcomes | executed, not ok | stream ends |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["faults"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items(), key=lambda kv: -kv[1]))
        ends = ", ".join(f"{k} {v}" for k, v in sorted(r["stream_ends"].items())) or "none"
        extra = ""
        if "restart_s" in r:
            extra = f" (exit {r['exit_s']} s, code {r['exit_code']}; back in {r['restart_s']} s)"
        if "delivered_after_cut" in r:
            extra = (f" (of {r['burst_deliveries']}: {r['delivered_at_cut']} deliveries before the cut, "
                     f"{r['delivered_after_cut']} after it, for {r['fanout_continued_s']} s)")
        lines.append(f"| {r['name']} | {r['what']}{extra} | {r['calls_recovery_s']} | {r['streams_recovery_s']} | "
                     f"{r['events_resume_s']} | "
                     f"{outcomes} | {r['not_ok_executed']} | {ends} |")
    lines += ["", f"Ledger: {c['executed']} notes executed, {c['executed_twice']} request_ids executed twice, "
              f"{c['ok_not_executed']} `ok` answers not in the ledger, {c['events_not_executed']} events for "
              f"unexecuted requests; unclear outcomes {c['unclear_outcomes']}; stream violations "
              f"{c['stream_violations'] or 'none'} (reordered across a slot's reopened streams: "
              f"{c['reorder_across_streams']}); passed: {c['passed']}",
              f"Fan-out streams: notes received per stream {report['fanout_notes_per_stream']}"]
    return "\n".join(lines)


# --- the soak -------------------------------------------------------------------------------------


def measure_capacity(world: World, seconds: float) -> dict[str, Any]:
    """Closed-loop notes.create through both gateways (bench.loadgen): answered ok per second."""
    estimate = 400
    requests = int(estimate * seconds)
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CORE, PYTHON, "-m", "bench.loadgen", "--port", str(world.port),
         "--sessions", str(world.work / "loadgen-sessions.json"), "--protocol", "grpc", "--requests", str(requests),
         "--connections", "4", "--streams", "16", "--message-type", "user.notes.create",
         "--payload", '{"text":"capacity"}', "--timeout", str(seconds * 6)],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds * 8)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    ok = result["outcomes"].get("ok", 0)
    result["ok_rps"] = ok / result["elapsed_s"]
    return result


def run_soak(args: argparse.Namespace) -> None:
    stamp, work = new_work("soak")
    world = start_world(work, redis_proxy=False, h2_closed_streams=args.h2_closed_streams,
                        tracemalloc=args.tracemalloc)
    samples: list[dict[str, Any]] = []
    connections: list[float] = []
    try:
        sessions, _ = prepare_sessions(world, args.users, fanout=False)
        capacity = measure_capacity(world, args.capacity_s)
        rate = round(args.fraction * capacity["ok_rps"], 1)
        log(f"capacity {capacity['ok_rps']:.0f} ok/s (loadgen outcomes {capacity['outcomes']}); soak at {rate}/s")
        duration = args.minutes * 60
        client = start_client(world, sessions, rate, duration, light=True)
        wait_line(client, "ready", 120)
        t0 = time.monotonic()
        names = {"gw0": world.gateways[0], "gw1": world.gateways[1], "backend": world.backend, "redis": world.redis}
        baseline_taken = False
        while time.monotonic() - t0 < duration + 5 and client.popen.poll() is None:
            if args.tracemalloc and not baseline_taken and time.monotonic() - t0 >= 120:
                baseline_taken = True
                snapshot(world)
            sample: dict[str, Any] = {"t": round(time.monotonic() - t0, 1),
                                      "loadavg": float(Path("/proc/loadavg").read_text().split()[0])}
            for name, proc in names.items():
                if proc is not None and proc.popen.poll() is None:
                    sample[name] = rss_kib(proc.pid)
            if client.popen.poll() is None:
                # reuseport spreads connections by hash: say where the client's are (read while it runs).
                connections = world.metric("gatewayd_connections_open")
            samples.append(sample)
            with (work / "rss.jsonl").open("a") as f:
                f.write(json.dumps(sample) + "\n")
            time.sleep(10)
        if args.tracemalloc:
            snapshot(world)
        summary = finish_client(client)
    finally:
        world.stop()
    report = {"capacity": capacity, "rate": rate, "fraction": args.fraction, "minutes": args.minutes,
              "h2_closed_streams": args.h2_closed_streams or f"gatewayd's ({ServerH2Connection.MAX_CLOSED_STREAMS})",
              "connections_per_gateway": connections,
              "rss": rss_verdict(samples), "loadavg": _spread([s["loadavg"] for s in samples]),
              "check": check(work, summary, None), "client": {k: summary[k] for k in (
                  "sent", "outcomes", "stream_ends", "events", "streams_opened", "connect_failures")},
              "machine": machine(), "code": code_version(), "work": str(work),
              "command": " ".join(["python -m bench.faults soak", *args.argv])}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{stamp}.json"
    out.write_text(json.dumps(report, indent=1))
    print(render_soak(report))
    log(f"results in {out}")


def snapshot(world: World) -> None:
    """SIGUSR2 to each gateway (``bench/twist_tracemalloc.py``): a baseline first, then the growth since."""
    import signal

    for proc in world.gateways:
        if proc is not None and proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGUSR2)
            time.sleep(5)  # a snapshot of a large heap takes a while; one at a time


def rss_verdict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per gateway: mean RSS in minutes 2-4 (after warm-up) against the last 2 minutes; flat if within 5 %."""
    verdict: dict[str, Any] = {}
    end = samples[-1]["t"] if samples else 0
    for name in ("gw0", "gw1", "backend", "redis"):
        early = [s[name] for s in samples if 120 <= s["t"] < 240 and name in s]
        late = [s[name] for s in samples if s["t"] >= end - 120 and name in s]
        if not early or not late:
            continue
        a, b = statistics.mean(early), statistics.mean(late)
        verdict[name] = {"early_kib": round(a), "late_kib": round(b), "growth_pct": round(100 * (b - a) / a, 2),
                         "max_kib": max(s[name] for s in samples if name in s),
                         "flat_within_5pct": abs(b - a) / a <= 0.05}
    return verdict


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def render_soak(report: dict[str, Any]) -> str:
    c = report["check"]
    lines = [f"Soak: {report['minutes']} min at {report['rate']} calls/s = {report['fraction']:.0%} of "
             f"{report['capacity']['ok_rps']:.0f} ok/s measured; h2 closed streams kept per connection: "
             f"{report['h2_closed_streams']}; load average {report['loadavg']}; client "
             f"connections per gateway at the end {report['connections_per_gateway']}", "",
             "| process | RSS min 2-4 (KiB) | RSS last 2 min (KiB) | growth | max | flat within 5 % |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, v in report["rss"].items():
        lines.append(f"| {name} | {v['early_kib']} | {v['late_kib']} | {v['growth_pct']} % | {v['max_kib']} | "
                     f"{v['flat_within_5pct']} |")
    outcomes = report["client"]["outcomes"]
    lines += ["", f"Calls {report['client']['sent']}: {outcomes}; stream ends {report['client']['stream_ends']}; "
              f"ledger: executed {c['executed']}, twice {c['executed_twice']}, ok not executed "
              f"{c['ok_not_executed']}; unclear {c['unclear_outcomes']}; stream violations "
              f"{c['stream_violations'] or 'none'}; passed {c['passed']}"]
    return "\n".join(lines)


def main() -> None:
    import sys

    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("faults", help="one fault at a time under load; checks and time to recover")
    f.add_argument("--rate", type=float, default=100.0, help="notes.create calls per second")
    f.add_argument("--users", type=int, default=8, help="regular users (2 sessions, 2 streams each)")
    f.add_argument("--warmup-s", type=float, default=8.0)
    f.add_argument("--baseline-s", type=float, default=5.0)
    f.add_argument("--observe-s", type=float, default=15.0)
    f.add_argument("--only", nargs="*", help="fault names to run (default: all)")
    s = sub.add_parser("soak", help="70 %% of measured capacity for --minutes; RSS flat within 5 %%")
    s.add_argument("--minutes", type=float, default=30.0)
    s.add_argument("--fraction", type=float, default=0.7)
    s.add_argument("--users", type=int, default=8)
    s.add_argument("--capacity-s", type=float, default=15.0, help="length of the capacity measurement")
    s.add_argument("--tracemalloc", action="store_true",
                   help="diagnostic: gateways under tracemalloc; growth by source line in tracemalloc.txt")
    s.add_argument("--h2-closed-streams", type=int, default=0,
                   help="diagnostic: run the gateways with h2 remembering at most N closed streams per connection")
    args = parser.parse_args()
    args.argv = sys.argv[2:]
    if not math.isfinite(getattr(args, "rate", 1.0)):
        raise SystemExit("--rate must be finite")
    (run_faults if args.mode == "faults" else run_soak)(args)


if __name__ == "__main__":
    main()
