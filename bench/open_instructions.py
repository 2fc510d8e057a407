"""Instructions the gateway executes per SubscribeEvents stream opened, counted by callgrind.

The opening counterpart of ``bench_instructions.py`` (same wrapper, same reasons:
an instruction count does not follow the machine's load). The gateway runs under
valgrind; ``bench/fanout_subscriber.py`` opens ``--layout`` streams (connections x
streams, 10 sessions of one user, ``--wave`` at a time as bench_delivery does) twice
as a warm-up (the second instrumented) and closes them; the counters are zeroed,
the measured set is opened, and the counters are dumped once every stream has its
``gateway.server_time``. Prints one JSON line: instructions per open, and the part
spent in libsodium's ``crypto_sign_open`` / ``crypto_sign`` (the Ed25519 verify,
and the greeting's sign). A run takes ~2-4 minutes.

    .venv/bin/python -m bench.open_instructions --layout 10x200
    .venv/bin/python -m bench.open_instructions --layout 200x10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import bench._stack as stack_module
from bench._common import CLIENT_CORE, PYTHON, emit, exit_on_sigterm
from bench.bench_delivery import read_line
from bench.bench_instructions import _STARTUP_S, _inclusive, read_dump


def _open(port: int, sessions: Path, conns: int, streams: int, wave: int,
          timeout_s: float) -> tuple[int, subprocess.Popen[str]]:
    """Open ``conns`` x ``streams`` streams in one subscriber process and wait for every greeting;
    returns how many opened and the process (``_close`` ends it)."""
    proc = subprocess.Popen(
        ["taskset", "-c", CLIENT_CORE, PYTHON, "-m", "bench.fanout_subscriber", "--port", str(port),
         "--sessions", str(sessions), "--connections", str(conns), "--streams", str(streams),
         "--wave", str(wave), "--timeout", str(timeout_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        ready = json.loads(read_line(proc, time.perf_counter() + timeout_s))
        return int(ready["opened"]), proc
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise


def _close(proc: subprocess.Popen[str], timeout_s: float) -> None:
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    read_line(proc, time.perf_counter() + timeout_s)
    proc.wait(30)
    time.sleep(2.0)  # the gateway (slow under valgrind) sees the connections go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layout", default="10x200", help="connections x streams per connection")
    parser.add_argument("--wave", type=int, default=500, help="streams opened at a time")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    conns, streams = (int(x) for x in args.layout.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-openinstr-"))
    out = work / "callgrind.out"
    wait_port, wait_ready = stack_module.wait_port, stack_module.wait_ready
    stack_module.wait_port = lambda port, timeout_s=0.0, proc=None: wait_port(port, _STARTUP_S, proc)
    stack_module.wait_ready = lambda port, timeout_s=0.0: wait_ready(port, _STARTUP_S)
    # Counted, not timed: the gateway may run on either core (core 0 is the timed benchmarks').
    stack_module.SERVER_CORE = "0,1"
    stack = stack_module.start_stack(work, "memory", max_streams=max(100, streams + 10), wrapper="twist_callgrind.py",
                                     env={"GATEWAYD_CALLGRIND_OUT": str(out)})
    try:
        sessions = work / "sessions.json"
        sessions.write_text(json.dumps(stack_module.login(stack.port, 10)))
        assert stack.gateway is not None
        pid = str(stack.gateway.pid)
        warm = max(1, min(conns, 10))
        _, proc = _open(stack.port, sessions, warm, 20, args.wave, args.timeout)  # warm-up, not instrumented
        _close(proc, args.timeout)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        _, proc = _open(stack.port, sessions, warm, 20, args.wave, args.timeout)  # warm-up, instrumented
        _close(proc, args.timeout)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        opened, proc = _open(stack.port, sessions, conns, streams, args.wave, args.timeout)
        subprocess.run(["callgrind_control", "-d", "measured", pid], check=True, capture_output=True)
        _close(proc, args.timeout)
    finally:
        stack.stop()
    dump, total, annotated = read_dump(work)
    n = max(1, opened)
    verify = _inclusive(annotated, "crypto_sign_open")
    sign = _inclusive(annotated, "crypto_sign")
    emit({"bench": "open_instructions", "layout": f"{conns}x{streams}", "opened": opened,
          "instructions_per_open": round(total / n), "verify_instructions_per_open": round(verify / n),
          "sign_instructions_per_open": round(sign / n),
          "other_instructions_per_open": round((total - verify - sign) / n), "dump": str(dump)}, args.out)


if __name__ == "__main__":
    main()
