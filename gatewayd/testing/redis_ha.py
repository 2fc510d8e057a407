"""Redis high availability for tests: a primary, a replica and Sentinel processes on free loopback ports.

``SentinelCluster`` starts a primary, one replica of it and two sentinels
(``redis-server CONF --sentinel``, so no separate package) that monitor the
primary as ``mymaster`` with quorum 1, a ``down_after_ms`` failure
detection (500 ms by default) and a short ``failover_timeout_ms``. ``ready()``
waits (bounded) until the replica is in sync and each sentinel knows the
replica and the other sentinel, so that killing the primary leads to a
failover. ``command(port, ...)`` is a blocking one-shot Redis command for
test assertions.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from gatewayd.testing.redis import RedisServer, free_port

#: Bound for the cluster to become ready, and for a failover to finish.
READY_TIMEOUT_S = 30.0


def _encode(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def reply(self) -> Any:
        line = self._file.readline()
        if not line:
            raise ConnectionError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._file.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ValueError(f"unexpected reply {line!r}")


def command(port: int, *args: Any, host: str = "127.0.0.1", timeout: float = 2.0) -> Any:
    """Run one command on ``host:port`` and return its decoded reply (an error reply raises RuntimeError)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode(*args))
        return _Reader(sock).reply()


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` as a dict."""
    text = command(port, "INFO", section)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


class SentinelServer(RedisServer):
    """A sentinel (``redis-server CONF --sentinel``) monitoring ``127.0.0.1:primary_port`` as ``service``."""

    def __init__(self, primary_port: int, service: str = "mymaster", *, quorum: int = 1,
                 down_after_ms: int = 500, failover_timeout_ms: int = 2000) -> None:
        super().__init__()
        self.service = service
        self._monitor = (
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def arguments(self) -> list[str]:
        # Sentinel rewrites its config file (what it learns of replicas and other sentinels).
        conf = os.path.join(self.folder, "sentinel.conf")
        if not os.path.exists(conf):
            with open(conf, "w") as f:
                f.write(self._monitor)
        return [
            conf, "--sentinel",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.folder,
            "--logfile", os.path.join(self.folder, "redis.log"),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def primary(self) -> tuple[str, int] | None:
        """What this sentinel answers for the primary's address now."""
        reply = command(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return None if reply is None else (reply[0], int(reply[1]))

    def knows_replica_and_peers(self, replica_port: int, peers: int) -> bool:
        replicas = command(self.port, "SENTINEL", "REPLICAS", self.service)
        states = [dict(zip(r[::2], r[1::2], strict=True)) for r in replicas]
        replica_ok = any(
            int(s["port"]) == replica_port and "s_down" not in s["flags"] and "disconnected" not in s["flags"]
            for s in states
        )
        return replica_ok and len(command(self.port, "SENTINEL", "SENTINELS", self.service)) >= peers


def wait_for(predicate: Any, what: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``predicate`` (blocking; for fixtures before the reactor has work) until true, with a bound."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, RuntimeError, KeyError, ValueError) as e:  # a server still starting
            last = e
        time.sleep(0.02)
    raise AssertionError(f"still not true after {timeout} s: {what} (last error: {last})")


class SentinelCluster:
    """A primary, its replica and two sentinels, all on free loopback ports."""

    def __init__(self, service: str = "mymaster", *, down_after_ms: int = 500, failover_timeout_ms: int = 2000
                 ) -> None:
        self.service = service
        self.primary = RedisServer()
        self.replica: RedisServer | None = None
        self.sentinels: list[SentinelServer] = []
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms

    def start(self) -> None:
        self.primary.start()
        self.replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.replica.start()
        for _ in range(2):
            sentinel = SentinelServer(self.primary.port, self.service, down_after_ms=self._down_after_ms,
                                      failover_timeout_ms=self._failover_timeout_ms)
            self.sentinels.append(sentinel)
            sentinel.start()

    def ready(self) -> None:
        """Wait (bounded) until a failover could happen: replica in sync, sentinels informed."""
        assert self.replica is not None
        replica = self.replica
        wait_for(lambda: info(replica.port, "replication").get("master_link_status") == "up",
                 "the replica to sync with the primary")
        for sentinel in self.sentinels:
            wait_for(lambda s=sentinel: s.knows_replica_and_peers(replica.port, len(self.sentinels) - 1),
                     f"sentinel {sentinel.port} to know the replica and the other sentinel")

    def replica_in_sync(self) -> bool:
        """Whether the replica has applied everything the primary has written so far."""
        assert self.replica is not None
        written = int(info(self.primary.port, "replication")["master_repl_offset"])
        return int(info(self.replica.port, "replication")["slave_repl_offset"]) >= written

    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def close(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            if server is not None:
                server.close()

    def __enter__(self) -> SentinelCluster:
        try:
            self.start()
            self.ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["READY_TIMEOUT_S", "SentinelCluster", "SentinelServer", "command", "free_port", "info", "wait_for"]
