"""``reuseport:`` server endpoints: several processes listening on one TCP port.

Twisted's ``tcp:`` endpoint sets SO_REUSEADDR but has no SO_REUSEPORT option,
so a second ``twist gatewayd`` on the same port fails with "address in use".
``ReusePortServerEndpoint`` builds the listening socket itself with both
options, binds and listens, and hands it to ``IReactorSocket.adoptStreamPort``;
every process that does the same (same user, same address, same port) gets
its own accept queue, and the kernel spreads new connections over them.

Endpoint string (``twisted/plugins/gatewayd_endpoints.py`` registers it)::

    reuseport:PORT[:interface=ADDR][:backlog=N][:ipv6only=yes|no]

``interface`` defaults to ``0.0.0.0``; an address containing ``:`` is IPv6
(colons are escaped in endpoint strings: ``interface=\\:\\:``). ``ipv6only``
(default: the system's setting) only matters for IPv6 wildcard addresses.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

PREFIX = "reuseport"
DEFAULT_BACKLOG = 50  # Twisted's tcp: default


def reuseport_socket(
    port: int, interface: str = "0.0.0.0", backlog: int = DEFAULT_BACKLOG, ipv6only: bool | None = None
) -> socket.socket:
    """A non-blocking TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound and listening.

    Raises ``OSError`` when the address cannot be bound (in use without
    SO_REUSEPORT, by another user, or not a local address).
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("SO_REUSEPORT is not available on this platform")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and ipv6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ipv6only))
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class ReusePortServerEndpoint:
    """Listens on ``interface:port`` with SO_REUSEPORT; ``listen`` fires with the ``IListeningPort``.

    Bind failures (the port held by a socket without SO_REUSEPORT, a
    privileged port...) errback with the ``OSError``, as ``tcp:`` does with
    ``CannotListenError``.
    """

    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str = "0.0.0.0",
        backlog: int = DEFAULT_BACKLOG,
        ipv6only: bool | None = None,
    ) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.ipv6only = ipv6only

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        try:
            sock = reuseport_socket(self.port, self.interface, self.backlog, self.ipv6only)
        except OSError:
            return defer.fail()
        try:
            # adoptStreamPort duplicates the descriptor; our copy is closed either way.
            listening: IListeningPort = self.reactor.adoptStreamPort(
                sock.fileno(), sock.family, protocolFactory
            )
        except BaseException:
            return defer.fail()
        finally:
            sock.close()
        return defer.succeed(listening)

    def __repr__(self) -> str:
        return f"<ReusePortServerEndpoint {self.interface}:{self.port}>"


def _flag(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    raise ValueError(f"{PREFIX}: {name} must be yes or no, not {value!r}")


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """Parses ``reuseport:PORT[:interface=ADDR][:backlog=N][:ipv6only=yes|no]``."""

    prefix = PREFIX

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> ReusePortServerEndpoint:
        options = {name: str(value) for name, value in kwargs.items()}
        port = str(args[0]) if args else options.pop("port", None)
        if port is None or len(args) > 1:
            raise ValueError(
                f"{PREFIX}: expected {PREFIX}:PORT[:interface=ADDR][:backlog=N][:ipv6only=yes|no]"
            )
        interface = options.pop("interface", "0.0.0.0")
        backlog = int(options.pop("backlog", DEFAULT_BACKLOG))
        ipv6only = _flag("ipv6only", options.pop("ipv6only", None))
        if options:
            raise ValueError(f"{PREFIX}: unknown option(s) {', '.join(sorted(options))}")
        return ReusePortServerEndpoint(reactor, int(port), interface, backlog, ipv6only)
