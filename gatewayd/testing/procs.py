"""Child processes for tests, run on the reactor without blocking it, each with a bound.

``child_env`` is the environment without proxy settings (children talk to 127.0.0.1
directly); ``ChildProcess`` is a ``ProcessProtocol`` that is killed if it outlives its
timeout and whose ``ended`` fires with its exit code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure


def child_env(**extra: str) -> dict[str, str]:
    """The environment minus proxy settings (any case), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.update(extra)
    return env


class ChildProcess(protocol.ProcessProtocol):
    """One child process; ``ended`` fires with its exit code (-1 when a signal ended it).

    Subclasses collect output and override ``process_ended`` to fail whatever still
    waits on output that can no longer come.
    """

    def __init__(self) -> None:
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.exit_code: int | None = None

    def spawn(self, argv: Sequence[str], cwd: str, timeout: float, env: dict[str, str] | None = None,
              reactor: Any = None) -> None:
        """Start ``argv`` in ``cwd``; it is killed if still running after ``timeout`` seconds."""
        if reactor is None:
            from twisted.internet import reactor
        reactor.spawnProcess(self, argv[0], list(argv), env=child_env() if env is None else env, path=cwd)
        killer = reactor.callLater(timeout, self.signal, "KILL")

        def cancel_killer(result: object) -> object:
            if killer.active():
                killer.cancel()
            return result

        self.ended.addBoth(cancel_killer)

    def signal(self, name: str) -> None:
        """Send signal ``name`` ("TERM", "KILL"...) unless the process has exited."""
        if self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except error.ProcessExitedAlready:
                pass

    def process_ended(self) -> None:
        """Called once the exit code is known, before ``ended`` fires."""

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.exit_code = -1 if code is None else code
        self.process_ended()
        self.ended.callback(self.exit_code)


__all__ = ["ChildProcess", "child_env"]
