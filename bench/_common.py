"""Shared helpers for the benchmarks: pinned processes, free ports, RSS, percentiles.

Everything here talks only to 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TWIST = str(ROOT / ".venv" / "bin" / "twist")
SERVER_CORE = "0"
CLIENT_CORE = "1"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop the processes we started."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_bounded(cmd: Sequence[str], timeout_s: float, cwd: Path = ROOT) -> int:
    """Run ``cmd``; past ``timeout_s`` send SIGTERM (so it cleans up), then SIGKILL. Returns its status."""
    proc = subprocess.Popen(list(cmd), cwd=cwd)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll until 127.0.0.1:port accepts a connection (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class Proc:
    """A child process pinned to one core, stopped by its own pid (never by name)."""

    name: str
    popen: subprocess.Popen[Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def start(name: str, argv: Sequence[str], core: str, logdir: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ``argv`` pinned with ``taskset -c core``; stdout+stderr go to ``logdir/name.log``."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    popen = subprocess.Popen(
        ["taskset", "-c", core, *argv], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env, cwd=ROOT
    )
    return Proc(name, popen, log)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User+system CPU time ``pid`` (all its threads) has used so far, in seconds.

    On a shared machine this is the robust number: req/s depends on what else runs,
    CPU per request much less.
    """
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time ``pid`` (all its threads) has used so far, in seconds: the system part is
    the kernel's work on its behalf (system calls, and on loopback the peer's TCP receive path too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (``TcpExtListenOverflows``;
    machine-wide: other processes' listeners count too)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("ListenOverflows", 0))


def runqueue_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a CPU (``schedstat``'s run delay,
    summed over threads). Over a run, its growth divided by the wall time says how much the process was
    held back by the other processes on its core rather than waiting for I/O."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def time_wait_to(port: int) -> int:
    """Sockets in TIME_WAIT toward 127.0.0.1:``port`` (``/proc/net/tcp``): connections closed by the side
    that dialled, e.g. a client pool that opens a connection per call."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "06" and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Spread:
    """Repeated measurements of one number: median and min..max."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(v)

    def fmt(self, digits: int = 0) -> str:
        if not self.values:
            return "-"
        med = statistics.median(self.values)
        if len(self.values) == 1:
            return f"{med:.{digits}f}"
        return f"{med:.{digits}f} ({min(self.values):.{digits}f}..{max(self.values):.{digits}f})"


def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": Path("/proc/loadavg").read_text().split()[0],
    }


def code_version() -> str:
    """HEAD's short hash, with ``+dirty`` when gatewayd/ has uncommitted edits (the tree is shared)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gatewayd", "twisted"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def gateway_code() -> str:
    """The last commit that touched the measured code (gatewayd/, twisted/): bench-only commits do not move it."""
    try:
        return subprocess.run(["git", "log", "-1", "--format=%h", "--", "gatewayd", "twisted"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def emit(result: dict[str, Any], path: Path | None) -> None:
    """Print one JSON result line (and append it to ``path``)."""
    # The machine is shared: every result carries the 1-minute load average and the time it was taken.
    result = {"loadavg": Path("/proc/loadavg").read_text().split()[0],
              "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "code": code_version(),
              "gateway_code": gateway_code(), **result}
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if path is not None:
        with path.open("a") as f:
            f.write(line + "\n")
