"""Child processes for the browser test, run without blocking the reactor.

``LineProcess`` keeps every output line and lets a test wait (bounded) for a
line that matches; it is killed if it outlives its timeout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from twisted.internet import defer, error, protocol, reactor

from gatewayd.testing.procs import child_env

__all__ = ["LineProcess", "child_env"]


class LineProcess(protocol.ProcessProtocol):
    """One child process; ``lines`` holds what it printed (stdout and stderr), in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._partial = {1: b"", 2: b""}
        self._waiters: list[tuple[re.Pattern[str], defer.Deferred[re.Match[str]]]] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exit_code: int | None = None

    @classmethod
    def spawn(cls, argv: Sequence[str], cwd: str, env: dict[str, str], timeout: float) -> LineProcess:
        proc = cls()
        reactor.spawnProcess(proc, argv[0], list(argv), env=env, path=cwd)
        killer = reactor.callLater(timeout, proc.signal, "KILL")

        def cancel(result: object) -> object:
            if killer.active():
                killer.cancel()
            return result

        proc.ended.addBoth(cancel)
        return proc

    def signal(self, name: str) -> None:
        if self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except error.ProcessExitedAlready:
                pass

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

    def processEnded(self, reason: object) -> None:
        value = getattr(reason, "value", None)
        self.exit_code = getattr(value, "exitCode", None)
        for _, d in self._waiters:
            if not d.called:
                d.errback(AssertionError("process ended first; output:\n" + "\n".join(self.lines[-40:])))
        self._waiters.clear()
        self.ended.callback(self.exit_code)
