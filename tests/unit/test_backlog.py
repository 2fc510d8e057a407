"""Listen backlogs: the endpoint strings we listen on, and what the kernel then reports."""

from __future__ import annotations

import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from gatewayd.backlog import DEFAULT_BACKLOG, with_backlog
from gatewayd.config import ConfigError, from_mapping


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8080", "tcp:8080:backlog=1024"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=1024"),
        ("tcp6:8080", "tcp6:8080:backlog=1024"),
        ("unix:/run/gw.sock", "unix:/run/gw.sock:backlog=1024"),
        ("ssl:443:privateKey=k.pem", "ssl:443:privateKey=k.pem:backlog=1024"),
        ("reuseport:8080", "reuseport:8080:backlog=1024"),
        ("tcp:8080:backlog=10", "tcp:8080:backlog=10"),  # the operator's own choice wins
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),  # the socket unit decides
    ],
)
def test_with_backlog(description: str, expected: str) -> None:
    assert with_backlog(description) == expected


def test_the_backlog_is_configurable_and_defaults_to_1024() -> None:
    assert DEFAULT_BACKLOG == 1024
    assert from_mapping({}).server.listen_backlog == 1024
    assert from_mapping({"server": {"listen_backlog": 64}}).server.listen_backlog == 64
    with pytest.raises(ConfigError, match="listen_backlog"):
        from_mapping({"server": {"listen_backlog": 0}})
    assert from_mapping({}).backend.max_waiting == 1024
    with pytest.raises(ConfigError, match="max_connections"):
        from_mapping({"backend": {"max_connections": 0}})


@pytest_twisted.ensureDeferred
async def test_the_kernel_sees_the_backlog() -> None:
    port = await serverFromString(reactor, with_backlog("tcp:0:interface=127.0.0.1", 777)).listen(
        Factory.forProtocol(Protocol))
    try:
        assert backlog_of(port.getHost().port) == 777
    finally:
        await port.stopListening()


def backlog_of(port: int) -> int:
    """The backlog the kernel reports for a listening TCP port (``ss``: Send-Q of a LISTEN socket)."""
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing[:1] == ["LISTEN"], listing
    return int(listing[2])


@pytest_twisted.ensureDeferred
async def test_the_dev_backend_listens_with_the_backlog() -> None:
    from twisted.internet.task import Clock

    from gatewayd.devbackend.listeners import DevBackendService
    from gatewayd.devbackend.service import DevBackend

    loopback = "tcp:0:interface=127.0.0.1"
    service = DevBackendService(reactor, DevBackend(Clock()), loopback, loopback, backlog=555)
    await service.startService()
    try:
        assert service.push_server is not None
        assert backlog_of(service.http_port.getHost().port) == 555
        assert backlog_of(service.push_server.port_number) == 555
    finally:
        await service.stopService()
