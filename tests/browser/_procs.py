"""Child processes for the browser test, run without blocking the reactor.

``LineProcess`` is a ``ChildProcess`` that keeps every output line and lets a test wait
(bounded) for a line that matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from twisted.internet import defer, reactor

from gatewayd.testing.procs import ChildProcess, child_env

__all__ = ["LineProcess", "child_env"]


class LineProcess(ChildProcess):
    """One child process; ``lines`` holds what it printed (stdout and stderr), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._partial = {1: b"", 2: b""}
        self._waiters: list[tuple[re.Pattern[str], defer.Deferred[re.Match[str]]]] = []

    @classmethod
    def start(cls, argv: Sequence[str], cwd: str, env: dict[str, str], timeout: float) -> LineProcess:
        """Spawn ``argv``; it is killed if still running after ``timeout`` seconds."""
        proc = cls()
        proc.spawn(argv, cwd, timeout, env)
        return proc

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd not in self._partial:
            return
        *complete, self._partial[fd] = (self._partial[fd] + data).split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if fd == 1:
                self.stdout_lines.append(line)
            for pattern, d in list(self._waiters):
                match = pattern.search(line)
                if match and not d.called:
                    self._waiters.remove((pattern, d))
                    d.callback(match)

    def wait_for(self, pattern: str, timeout: float) -> defer.Deferred[re.Match[str]]:
        """Fire with the first match of ``pattern`` in a line printed so far or later."""
        compiled = re.compile(pattern)
        for line in self.lines:
            match = compiled.search(line)
            if match:
                return defer.succeed(match)
        d: defer.Deferred[re.Match[str]] = defer.Deferred()
        self._waiters.append((compiled, d))
        return d.addTimeout(timeout, reactor)

    def process_ended(self) -> None:
        for _, d in self._waiters:
            if not d.called:
                d.errback(AssertionError("process ended first; output:\n" + "\n".join(self.lines[-40:])))
        self._waiters.clear()
