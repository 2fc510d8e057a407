"""One subscriber process of ``bench/bench_delivery.py``: opens SubscribeEvents streams, then records reads.

``python -m bench.fanout_subscriber --port P --sessions S.json --connections C --streams S [--wave W]``

1. pre-signs C*S subscriptions, opens them (``--wave`` at a time, each wave
   answered before the next) and waits until each has ``gateway.server_time``;
   prints ``{"ready": ...}`` on stdout;
2. then only records ``(perf_counter(), bytes)`` for every read (no HTTP/2
   parsing while events arrive, so the client's own parsing delays no read:
   a read's time is when the bytes left the kernel);
3. on a line ``stop`` on stdin (or ``--timeout``) it parses the recorded reads
   with h2, each message stamped with the time of the read that completed it,
   and prints ``{"arrivals": [[t, ...] per event], "missing": n, ...}``: per event
   (after ``gateway.server_time``), the arrival time at every live stream.

Every wait is bounded; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.fanout_client import Conn, Stream, add_stream_args, ended_counts, open_streams


class RecordingConn(Conn):
    """``Conn`` that, once ``recording`` is on, only stores each read with its time."""

    recording = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads: list[tuple[float, bytes]] = []

    def data_received(self, data: bytes) -> None:
        if self.recording:
            self.reads.append((time.perf_counter(), data))
        else:
            self.received(data, time.perf_counter())

    def replay(self) -> None:
        self.recording = False
        reads, self.reads = self.reads, []
        for at, data in reads:
            self.received(data, at)


async def read_stop_line(timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout_s)
    except TimeoutError:
        pass


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sessions = json.loads(Path(args.sessions).read_text())
    streams: list[Stream] = []
    t0 = time.perf_counter()
    conns = await open_streams(RecordingConn, args.port, sessions, args.connections, args.streams, args.wave,
                               args.timeout, streams)
    live = [s for s in streams if s.count >= 1 and s.ended is None]
    failed = ended_counts(streams)
    for conn in conns:
        conn.recording = True
    print(json.dumps({"ready": True, "opened": len(live), "open_s": time.perf_counter() - t0,
                      "open_failures": failed}), flush=True)
    await read_stop_line(args.timeout)
    for conn in conns:
        conn.replay()
    events = max((len(s.arrivals) for s in live), default=0)
    arrivals = [[s.arrivals[k] for s in live if len(s.arrivals) > k] for k in range(events)]
    ended_later = ended_counts(live)
    for conn in conns:
        conn.transport.close()
    return {"live": len(live), "arrivals": arrivals, "ended_after_open": ended_later,
            "first_types": sorted({s.first_type for s in streams})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_stream_args(parser, 300.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
