"""Several hosts on one machine: Linux network namespaces joined by a private LAN, for tests.

``NetnsLab()`` makes a namespace ``lan`` holding a bridge, and one namespace
per ``host(name)``, each with its own loopback and one interface on the LAN
with an address of ours (``10.251.N.H/24``, ``N`` picked so that no route of
the machine already uses it). The test's own namespace joins the LAN as
``10.251.N.1``, so tests talk to every host directly. Nothing is routed out:
there is no gateway and no NAT, so traffic never leaves the machine.

``run(host, argv, log)`` starts a process inside a host (``ip netns exec``).
``close()`` (also on ``with`` exit) kills those processes by their pid and
deletes every namespace and link it made, whatever failed before.

``unavailable()`` says why namespaces cannot be made here (no ``ip``, not
root, no CAP_NET_ADMIN...), for ``pytest.skip``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.testing.procs import child_env

_IP_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 15.0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (tried for real)."""
    if shutil.which("ip") is None:
        return "iproute2 is not installed (no `ip`; scripts/test-setup.sh installs it)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); not root here"
    probe = f"gwdprobe{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        link = _ip("-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        if link.returncode != 0:
            return f"cannot create a veth pair: {link.stderr.strip()}"
    finally:
        _ip("netns", "del", probe)
    return None


def _free_subnet() -> int:
    """A third octet N such that nothing on this machine uses 10.251.N.0/24."""
    used = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
    start = os.getpid() % 250
    for i in range(250):
        n = (start + i) % 250 + 1
        if f"10.251.{n}." not in used:
            return n
    raise RuntimeError("no free 10.251.N.0/24 subnet")


@dataclass
class Host:
    """One namespace on the LAN."""

    name: str
    namespace: str
    address: str


@dataclass
class NetnsLab:
    """Namespaces on a private LAN; every one of them and their processes go in ``close()``."""

    prefix: str = field(default_factory=lambda: f"gwd{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _root_link: str = ""

    def __post_init__(self) -> None:
        self.subnet = _free_subnet()
        try:
            self._make_lan()
        except BaseException:
            self.close()
            raise

    def _make_lan(self) -> None:
        self.lan = self._namespace("lan")
        _must("-n", self.lan, "link", "add", "br0", "type", "bridge")
        _must("-n", self.lan, "link", "set", "br0", "up")
        # The test's own namespace joins the LAN as .1.
        self._root_link = self.prefix
        _must("link", "add", self._root_link, "type", "veth", "peer", "name", "root", "netns", self.lan)
        self._plug("root")
        _must("addr", "add", f"{self.address(1)}/24", "dev", self._root_link)
        _must("link", "set", self._root_link, "up")

    @property
    def root_address(self) -> str:
        """The address of the test's own namespace on the LAN."""
        return self.address(1)

    def address(self, h: int) -> str:
        return f"10.251.{self.subnet}.{h}"

    def _namespace(self, name: str) -> str:
        namespace = f"{self.prefix}-{name}"
        _must("netns", "add", namespace)
        self._namespaces.append(namespace)
        _must("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def _plug(self, lan_side: str) -> None:
        _must("-n", self.lan, "link", "set", lan_side, "master", "br0")
        _must("-n", self.lan, "link", "set", lan_side, "up")

    def host(self, name: str) -> Host:
        """A new host on the LAN (its address is the next free one from .11)."""
        namespace = self._namespace(name)
        address = self.address(11 + len(self.hosts))
        lan_side = f"h{len(self.hosts)}"
        _must("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", lan_side, "netns", self.lan)
        self._plug(lan_side)
        _must("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _must("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, namespace, address)
        self.hosts[name] = host
        return host

    def run(self, host: Host, argv: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host`` with output to ``log``; stopped by ``close()``."""
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.namespace, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=child_env(),
            )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM, then SIGKILL after a bound (``ip netns exec`` execs the command: the pid is its)."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        for namespace in reversed(self._namespaces):
            _ip("netns", "del", namespace)  # takes its interfaces with it
        if self._root_link:
            _ip("link", "del", self._root_link)  # gone with its peer already, unless that failed

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Host", "NetnsLab", "unavailable"]
