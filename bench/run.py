"""Run every benchmark and print one markdown table: ``python -m bench.run [--quick] [--only NAME ...]``.

Each benchmark appends JSON lines to ``--out`` (default ``bench/results/<timestamp>.jsonl``);
``python -m bench.run --table FILE`` re-renders a table from such a file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench._common import PYTHON, ROOT, SERVER_CORE, Spread, machine, run_bounded

BENCHES = ["health", "reference", "execute", "stages", "fanout", "delivery"]
ISSUE_13 = ["health", "reference", "delivery"]  # ``--issue13``: the side-by-side targets of issue 13


def commands(quick: bool, out: Path) -> dict[str, list[list[str]]]:
    o = ["--out", str(out)]
    n = "3000" if quick else "10000"
    e = "500" if quick else "2000"
    reps = "2" if quick else "3"
    return {
        "health": [[PYTHON, "-m", "bench.bench_health", "--requests", n, "--repeats", reps, *o]],
        "reference": [[PYTHON, "-m", "bench.bench_reference", *(["--duration", "3", "--warmup", "1", "--repeats", "1"]
                                                                if quick else []), *o]],
        "execute": [[PYTHON, "-m", "bench.bench_execute", "--requests", e, "--repeats", reps, *o]],
        "stages": [["taskset", "-c", SERVER_CORE, PYTHON, "-m", "bench.bench_stages", *extra, *o]
                   for extra in ([], ["--concurrency", "16"], ["--redis"], ["--redis", "--concurrency", "16"])],
        # Waves of 500: opening 10,000 subscriptions at once overloads the gateway (see README).
        "fanout": [[PYTHON, "-m", "bench.bench_fanout", "--layout", layout, "--wave", "500", *o]
                   for layout in (["10x100", "100x10", "10x1000", "1000x10"] if not quick else
                                  ["10x100", "100x10"])],
        # One event to N streams seen from inside the gateway; the last line is the 100,000-stream RSS check.
        "delivery": ([[PYTHON, "-m", "bench.bench_delivery", "--layout", "10x100", "--events", "5", *o]] if quick else
                     [[PYTHON, "-m", "bench.bench_delivery", "--layout", layout, "--events", "20", *o]
                      for layout in ("10x1000", "1000x10")]
                     + [[PYTHON, "-m", "bench.bench_delivery", "--layout", "1000x100", "--procs", "4", "--events", "3",
                         "--gap", "5", "--wave", "1000", "--timeout", "600", *o]]),
    }


def spread(values: list[float], digits: int = 0) -> str:
    s = Spread()
    for v in values:
        s.add(v)
    return s.fmt(digits)


def render_reference(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### ExecuteCommand: gatewayd vs the grpc.aio + aiohttp reference (`bench_reference.py`)", "",
           "| arrangement | setting | server | ok/s | p50 ms | p99 ms | max ms | max/p50 | server CPU µs/call "
           "| backend CPU µs/call | server run-queue wait | loadgen CPU | listen overflows | new TIME_WAIT to backend "
           "| outcomes |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        outcomes: dict[str, int] = {}
        for o in r["outcomes"]:
            for k, v in o.items():
                outcomes[k] = outcomes.get(k, 0) + v
        out.append(f"| {r['arrangement']} | {r['setting']} | {r['server']} | {spread(r['ok_rps'])} | "
                   f"{spread(r['p50_ms'], 1)} | {spread(r['p99_ms'], 1)} | {spread(r['max_ms'], 1)} | "
                   f"{spread(r['max_over_p50'], 1)} | {spread(r['server_cpu_us'])} | {spread(r['backend_cpu_us'])} | "
                   f"{spread(r.get('server_runq', [0]), 2)} | "
                   f"{spread(r['client_cpu'], 2)} | {sum(r['listen_overflows'])} | "
                   f"{spread(r.get('backend_time_wait', [0]))} | {outcomes} |")
    out += ["", "Ratios (medians; gatewayd / reference for ok/s, reference / gatewayd for CPU per call):", ""]
    by = {(r["arrangement"], r["setting"], r["server"]): r for r in rows}
    for (arr, setting, server), r in by.items():
        if server != "gatewayd":
            continue
        ref = by.get((arr, setting, "reference"))
        if ref is not None:
            out.append(f"- {arr} {setting}: **{median(r['ok_rps']) / median(ref['ok_rps']):.2f}x** ok/s, "
                       f"**{median(ref['server_cpu_us']) / median(r['server_cpu_us']):.2f}x** CPU per call; "
                       f"slowest/median gatewayd {median(r['max_over_p50']):.1f}x, "
                       f"reference {median(ref['max_over_p50']):.1f}x")
        else:
            grpc = by.get((arr, "grpc-64", "gatewayd"))
            if grpc is not None:
                out.append(f"- {arr} {setting} (gatewayd only): {median(r['ok_rps']) / median(grpc['ok_rps']):.2f}x "
                           "gatewayd's gRPC-64 ok/s")
    out.append("")
    return out


def render_delivery(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### One event to N streams (`bench_delivery.py`; gateway core 0 under the observer; backend and "
           "subscriber processes core 1)", "",
           "| conns x streams | N | procs | events | gateway ms p50 / p99 | first stream ms p50 / p99 | "
           "max reactor turn ms p50 / max | end to end ms p50 / p99 / max | CPU µs/delivery | CPU µs/open | "
           "RSS KiB/stream | RSS MiB after | missing / open failures |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        g, f, t, e = r["gateway_ms"], r["first_ms"], r["max_turn_ms"], r["e2e_ms"]
        fails = sum(sum(x.values()) for x in r["open_failures"])
        out.append(f"| {r['connections']} x {r['streams']} | {r['n']} | {r['procs']} | {r['events']} | "
                   f"{g['p50']:.1f} / {g['p99']:.1f} | {f['p50']:.1f} / {f['p99']:.1f} | "
                   f"{t['p50']:.1f} / {t['max']:.1f} | {e['p50']:.1f} / {e['p99']:.1f} / {e['max']:.1f} | "
                   f"{r['cpu_us_per_delivery']:.1f} | {r['cpu_us_per_open']:.0f} | {r['rss_kib_per_stream']:.2f} | "
                   f"{r['rss_after_kib'] / 1024:.0f} | {r['missing']} / {fails} |")
    out.append("")
    return out


def render_health_ratios(rows: list[dict[str, Any]]) -> list[str]:
    def cpu(row: str, server: str) -> float | None:
        for r in rows:
            if r["row"] == row and r["server"] == server and r.get("cpu_us"):
                return median(r["cpu_us"])
        return None

    out = []
    for row, ref in (("gRPC h2c", "grpc.aio"), ("Connect HTTP/1.1 proto", "connectrpc"),
                     ("Connect HTTP/1.1", "connectrpc"), ("Connect h2c proto", "connectrpc")):
        ours, theirs = cpu(row, "ours"), cpu(row, ref)
        if ours and theirs:
            out.append(f"- {row}: ours {ours:.0f} µs vs {ref} {theirs:.0f} µs CPU per call: **{theirs / ours:.2f}x**")
    return [*out, ""] if out else []


def render(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: list[str] = []
    health = [r for r in rows if r["bench"] == "health"]
    if health:
        out += ["### Health/Check unary (h2load; server on core 0, h2load on core 1)", "",
                "| protocol | server | h2load | req/s | mean ms | p50 ms | p99 ms | server CPU µs/req | failed |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in health:
            f = r["fmt"]
            out.append(f"| {r['row']} | {r['server']} | `{r['h2load'].split(' -H')[0]}` | {f['rps']} | "
                       f"{f['mean_ms']} | {f['p50_ms']} | {f['p99_ms']} | {f.get('cpu_us', '-')} | "
                       f"{int(r['failed'])} |")
        out.append("")
        out += render_health_ratios(health)
    reference = [r for r in rows if r["bench"] == "reference"]
    if reference:
        out += render_reference(reference)
    delivery = [r for r in rows if r["bench"] == "delivery"]
    if delivery:
        out += render_delivery(delivery)
    execute = [r for r in rows if r["bench"] == "execute"]
    if execute:
        out += ["### ExecuteCommand, whole pipeline + backend (gateway core 0; backend, redis, loadgen core 1)", "",
                "| protocol | stores | conns x streams | req/s | mean ms | p50 ms | p99 ms | gateway CPU µs/req "
                "| backend CPU µs/req | outcomes |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in execute:
            f = r["fmt"]
            nd = " (TCP_NODELAY)" if r.get("nodelay") else ""
            out.append(f"| {r['protocol']}{nd} | {r['stores']} | {r['connections']} x {r['streams']} | {f['rps']} | "
                       f"{f['mean_ms']} | {f['p50_ms']} | {f['p99_ms']} | {f.get('cpu_us', '-')} | "
                       f"{f.get('backend_cpu_us', '-')} | {r['outcomes']} |")
        out.append("")
    stages = [r for r in rows if r["bench"] == "stages"]
    if stages:
        names = ["envelope", "session", "payload_hash", "signature", "freshness", "replay", "rate_limit", "route"]
        out += ["### Per-stage cost, in-process (mean µs per request, `Pipeline(on_stage=...)`)", "",
                "| stores | concurrency | " + " | ".join(names) + " | sum | wall req/s |",
                "| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |"]
        for r in stages:
            cells = " | ".join(f"{r['mean_us'].get(n, float('nan')):.0f}" for n in names)
            out.append(f"| {r['stores']} | {r['concurrency']} | {cells} | {r['total_mean_us']:.0f} | "
                       f"{r['wall_rps']:.0f} |")
        out.append("")
    fanout = [r for r in rows if r["bench"] == "fanout"]
    if fanout:
        out += ["### SubscribeEvents fan-out (one gateway process on core 0; clients + backend on core 1)", "",
                "| conns x streams | N streams | open s | RSS KiB/stream | publish→delivery p50 ms | p99 ms | "
                "max ms | deliveries/s (burst) | events/s | CPU µs/open | CPU µs/delivery | missing |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in fanout:
            out.append(f"| {r['connections']} x {r['streams']} | {r['n']} | {r['open_s']:.1f} | "
                       f"{r['rss_kib_per_stream']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                       f"{r['deliveries_per_s']:.0f} | {r['events_per_s']:.1f} | {r.get('cpu_us_per_open', 0):.0f} | "
                       f"{r.get('cpu_us_per_delivery', 0):.1f} | {r['missing']} |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=BENCHES)
    parser.add_argument("--issue13", action="store_true", help=f"only {' '.join(ISSUE_13)} (issue 13's targets)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, help="only render a table from this results file")
    args = parser.parse_args()
    if args.table:
        print(render(args.table))
        return
    out = args.out or ROOT / "bench" / "results" / time.strftime("%Y%m%d-%H%M%S.jsonl", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = machine()
    print(f"machine: {info}", flush=True)
    cmds = commands(args.quick, out)
    for name in ISSUE_13 if args.issue13 else args.only:
        for cmd in cmds[name]:
            print(f"$ {' '.join(cmd)}", flush=True)
            status = run_bounded(cmd, 1800)
            if status:
                print(f"exit status {status}", flush=True)
    print(f"\nresults: {out}\n")
    print(render(out))


if __name__ == "__main__":
    main()
