"""remote_reach: which endpoint strings only this machine can reach (dev mode's guard)."""

from __future__ import annotations

import pytest

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
    ("systemd:domain=INET:index=0", "any address"),
    ("tcp:8080:interface=127.0.0.1\\", "not an endpoint string"),  # a dangling escape
]


@pytest.mark.parametrize("listen", LOOPBACK_ONLY)
def test_loopback_and_local_sockets_are_fine(listen: str) -> None:
    assert remote_reach(listen) is None


@pytest.mark.parametrize(("listen", "why"), REACHABLE)
def test_everything_else_says_why(listen: str, why: str) -> None:
    reason = remote_reach(listen)
    assert reason is not None and why in reason, reason
