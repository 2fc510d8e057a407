"""Benchmark 3: SubscribeEvents fan-out in one gateway process (``--layout CONNSxSTREAMS``).

Gateway (production mode, memory stores, ``max_concurrent_streams`` raised to the
streams per connection) on core 0; the reference backend and ``bench/fanout_client.py``
on core 1. All streams belong to ``--sessions`` sessions of one user; the event is a
``user.notes.create`` by that user, which the backend pushes to every session.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from bench._common import CLIENT_CORE, PYTHON, emit, exit_on_sigterm
from bench._stack import login, start_stack
from bench.profile import Profiler, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layout", default="10x100", help="connections x streams per connection")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--wave", type=int, default=0, help="open streams this many at a time (0: all at once)")
    parser.add_argument("--backend-timeout", type=float, default=5.0, help="backend.timeout_s (default 5)")
    parser.add_argument("--profile", action="store_true", help="sample the gateway with py-spy during the run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    conns, streams = (int(x) for x in args.layout.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    stack = start_stack(work, "memory", max_streams=max(100, streams + 10), backend_timeout_s=args.backend_timeout)
    try:
        sessions = work / "sessions.json"
        sessions.write_text(json.dumps(login(stack.port, args.sessions)))
        assert stack.gateway is not None
        cmd = ["taskset", "-c", CLIENT_CORE, PYTHON, "-m", "bench.fanout_client", "--port", str(stack.port),
               "--sessions", str(sessions), "--connections", str(conns), "--streams", str(streams),
               "--gateway-pid", str(stack.gateway.pid), "--burst", str(args.burst), "--wave", str(args.wave)]
        prof = Profiler(stack.gateway.pid, work / "profile.txt")
        if args.profile:
            prof.start()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
        if args.profile:
            prof.stop()
            (work / "profile.summary").write_text(summarize(prof.out))
            print(f"profile: {work / 'profile.summary'}", flush=True)
        if done.returncode != 0:
            raise SystemExit(f"fanout client failed: {done.stderr[-2000:]}")
        emit({**json.loads(done.stdout.strip().splitlines()[-1]), "backend_timeout_s": args.backend_timeout}, args.out)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
