"""remote_reach: which endpoint strings only this machine can reach (dev mode's guard)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet.endpoints import _SystemdParser
from twisted.python.systemd import ListenFDs

from gatewayd.listen_scope import remote_reach

LOOPBACK_ONLY = [
    "tcp:8080:interface=127.0.0.1",
    "tcp:8080:interface=127.1.2.3",
    "tcp:0:interface=localhost",
    "tcp:8080:127.0.0.1",  # interface given positionally
    r"tcp6:8080:interface=\:\:1",
    r"tcp6:8080:interface=\:\:ffff\:127.0.0.1",
    "reuseport:8080:interface=127.0.0.1:backlog=10",
    "ssl:8443:privateKey=k.pem:interface=127.0.0.1",
    "unix:/run/gatewayd/gatewayd.sock",
]

REACHABLE = [
    ("tcp:8080", "every interface"),
    ("tcp:8080:backlog=10", "every interface"),
    ("tcp:8080:10.0.0.1", "other machines can reach"),
    ("tcp:8080:interface=0.0.0.0", "every interface"),
    (r"tcp6:8080", "every interface"),
    (r"tcp6:8080:interface=\:\:", "every interface"),
    ("reuseport:8080", "every interface"),
    ("ssl:8443:privateKey=k.pem", "every interface"),
    ("tcp:8080:interface=192.168.1.10", "other machines can reach"),
    ("tcp:8080:interface=my-laptop.example", "host"),
    ("systemd:domain=INET:index=0", "systemd passed no such socket"),  # none was passed to this process
    ("gopher:70", "any address"),
    ("tcp:8080:interface=127.0.0.1\\", "not an endpoint string"),  # a dangling escape
]


@pytest.mark.parametrize("listen", LOOPBACK_ONLY)
def test_loopback_and_local_sockets_are_fine(listen: str) -> None:
    assert remote_reach(listen) is None


@pytest.mark.parametrize(("listen", "why"), REACHABLE)
def test_everything_else_says_why(listen: str, why: str) -> None:
    reason = remote_reach(listen)
    assert reason is not None and why in reason, reason


# --- sockets from systemd: judged by where they are bound ------------------------------------------


@pytest.fixture
def from_systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    """Sockets appended here are what systemd passed (named ``gatewayd.socket``, ``s1``...)."""
    sockets: list[socket.socket] = []

    class Inherited(ListenFDs):
        def __init__(self) -> None:
            pass

        def inheritedDescriptors(self) -> list[int]:
            return [s.fileno() for s in sockets]

        def inheritedNamedDescriptors(self) -> dict[str, int]:
            return {("gatewayd.socket" if i == 0 else f"s{i}"): s.fileno() for i, s in enumerate(sockets)}

    monkeypatch.setattr(_SystemdParser, "_sddaemon", Inherited())
    yield sockets
    for s in sockets:
        s.close()


def listening(family: socket.AddressFamily, address: object) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(1)
    return sock


def test_a_systemd_socket_on_loopback_is_fine(from_systemd: list[socket.socket]) -> None:
    from_systemd.append(listening(socket.AF_INET, ("127.0.0.1", 0)))
    assert remote_reach("systemd:domain=INET:index=0") is None
    assert remote_reach("systemd:domain=INET:name=gatewayd.socket") is None


def test_a_systemd_socket_on_every_interface_is_not(from_systemd: list[socket.socket]) -> None:
    from_systemd.append(listening(socket.AF_INET, ("127.0.0.1", 0)))
    from_systemd.append(listening(socket.AF_INET, ("0.0.0.0", 0)))
    reason = remote_reach("systemd:domain=INET:index=1")
    assert reason is not None and "bound to 0.0.0.0" in reason and "every interface" in reason
    by_name = remote_reach("systemd:domain=INET:name=s1")
    assert by_name is not None and "bound to 0.0.0.0" in by_name
    missing = remote_reach("systemd:domain=INET:name=other")
    assert missing is not None and "no such socket" in missing


def test_a_systemd_unix_socket_is_fine(from_systemd: list[socket.socket], tmp_path: object) -> None:
    from_systemd.append(listening(socket.AF_UNIX, f"{tmp_path}/g.sock"))
    assert remote_reach("systemd:domain=UNIX:index=0") is None
