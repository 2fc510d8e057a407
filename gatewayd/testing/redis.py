"""A private redis-server for tests.

Never the shared Redis at 6379: each server runs ``redis-server`` from PATH
on a free loopback port, in a temporary directory, without persistence
(``--save "" --appendonly no``). ``stop()`` and ``start()`` simulate an outage
and a recovery on the same port; ``pause()`` and ``resume()`` (SIGSTOP and
SIGCONT) simulate a server that accepts connections but never answers.

``with RedisServer() as server:`` starts one and removes it afterwards.
``redis_stores(url)`` builds the gateway's Redis stores against it; ``ready(...)`` waits
(bounded) until they answer PING.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from gatewayd.config import StoresConfig
from gatewayd.stores import build_stores
from gatewayd.stores.redis import RedisStores
from gatewayd.testing.wait import until

#: Upper bound for a server to start answering PING or to exit.
_START_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.005


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; its port stays the same across ``stop()`` / ``start()``."""

    def __init__(self, executable: str = "redis-server", extra_args: Sequence[str] = ()) -> None:
        found = shutil.which(executable)
        if found is None:
            raise RuntimeError(f"{executable} not found on PATH")
        self._executable = found
        self._dir = tempfile.mkdtemp(prefix="gatewayd-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self.extra_args = list(extra_args)
        self.port = free_port()

    @property
    def folder(self) -> str:
        """The server's own temporary directory (its log, its files)."""
        return self._dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server; returns once it answers PING (raises after a bound)."""
        if self.running:
            return
        for attempt in range(3):
            if attempt:
                self.port = free_port()  # someone took ours between probing and binding
            if self._spawn():
                return
        raise RuntimeError(f"redis-server did not start; see {self._dir}/redis.log")

    def arguments(self) -> list[str]:
        """The command line after the executable; ``extra_args`` come last."""
        return [
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--logfile", os.path.join(self._dir, "redis.log"),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def _spawn(self) -> bool:
        args = [self._executable, *self.arguments()]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if _answers_ping(self.port):
                self._process = process
                return True
            time.sleep(_POLL_INTERVAL_S)
        process.kill()
        process.wait()
        raise RuntimeError(f"redis-server did not answer PING within {_START_TIMEOUT_S}s")

    def stop(self) -> None:
        """Stop the server (SIGKILL: connections drop at once, nothing is saved)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()  # SIGKILL ends a paused server too
        process.wait()

    def pause(self) -> None:
        """Freeze the server: connections stay open and nothing is answered."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause()``."""
        assert self._process is not None, "not running"
        self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_stores(url: str, prefix: str = "t:", timeout_s: float = 0.5, reactor: Any = None) -> RedisStores:
    """The gateway's Redis stores on ``url``, keys under ``prefix``, each command bounded by ``timeout_s``."""
    if reactor is None:
        from twisted.internet import reactor
    stores = build_stores(StoresConfig(kind="redis", redis_url=url, key_prefix=prefix, timeout_s=timeout_s), reactor)
    assert isinstance(stores, RedisStores)
    return stores


async def ready(*all_stores: RedisStores) -> None:
    """Wait (bounded) until every one of ``all_stores`` answers PING."""
    for stores in all_stores:
        await until(stores.ping, "Redis to answer PING")
