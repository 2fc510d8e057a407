"""Sample a running process with py-spy and summarize where its time goes.

``Profiler(pid, out).start()`` ... ``.stop()`` records collapsed stacks (``py-spy record
--format raw``) and ``summarize(path)`` prints the top functions by self and by inclusive
samples. py-spy is a local tool (``.venv/bin/pip install py-spy``), not a project dependency;
without it ``start`` does nothing.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench._common import ROOT


def py_spy() -> str | None:
    local = ROOT / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = py_spy()
        if exe is None:
            return
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate",
                                      str(self.rate), "--duration", "300", "--nonblocking", "-o", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summarize(path: Path, top: int = 25) -> str:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{total} samples", "", "self%  function"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in self_c.most_common(top)]
    lines += ["", "incl%  function (frames under 90% only: the reactor loop is left out)"]
    lines += [f"{100 * c / total:5.1f}  {f}" for f, c in incl.most_common(400) if c < 0.9 * total][:top]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
