"""Run every benchmark and print one markdown table: ``python -m bench.run [--quick] [--only NAME ...]``.

Each benchmark appends JSON lines to ``--out`` (default ``bench/results/<timestamp>.jsonl``);
``python -m bench.run --table FILE`` re-renders a table from such a file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench._common import PYTHON, ROOT, SERVER_CORE, machine, run_bounded

BENCHES = ["health", "execute", "stages", "fanout"]


def commands(quick: bool, out: Path) -> dict[str, list[list[str]]]:
    o = ["--out", str(out)]
    n = "3000" if quick else "10000"
    e = "500" if quick else "2000"
    reps = "2" if quick else "3"
    return {
        "health": [[PYTHON, "-m", "bench.bench_health", "--requests", n, "--repeats", reps, *o]],
        "execute": [[PYTHON, "-m", "bench.bench_execute", "--requests", e, "--repeats", reps, *o]],
        "stages": [["taskset", "-c", SERVER_CORE, PYTHON, "-m", "bench.bench_stages", *extra, *o]
                   for extra in ([], ["--concurrency", "16"], ["--redis"], ["--redis", "--concurrency", "16"])],
        # Waves of 500: opening 10,000 subscriptions at once overloads the gateway (see README).
        "fanout": [[PYTHON, "-m", "bench.bench_fanout", "--layout", layout, "--wave", "500", *o]
                   for layout in (["10x100", "100x10", "10x1000", "1000x10"] if not quick else
                                  ["10x100", "100x10"])],
    }


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
    for name in args.only:
        for cmd in cmds[name]:
            print(f"$ {' '.join(cmd)}", flush=True)
            status = run_bounded(cmd, 1800)
            if status:
                print(f"exit status {status}", flush=True)
    print(f"\nresults: {out}\n")
    print(render(out))


if __name__ == "__main__":
    main()
