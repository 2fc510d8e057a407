"""The Twisted side of an HTTP/2 server connection: it only moves bytes.

``H2ServerConnection`` hands every read to a ``ServerConnectionCore`` and lets
the core write, pause or resume reading and close through the transport; it is
the transport's push producer, so a full socket pauses the core's sending.
Everything HTTP/2 happens in the core (gatewayd/http2/core.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.connection
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewayd.http2.core import ServerConnectionCore
from gatewayd.http2.limits import H2Limits, TurnBudget
from gatewayd.http2.stream import H2Stream
from gatewayd.transport.direct_write import direct_socket, write_now
from gatewayd.transport.exchange import ExchangeHandler, HttpApplication

# Builds the handler of a request the application does not claim, given its stream and the
# connection's transport (which a twisted.web request asks for its addresses and for TLS).
WebFallback = Callable[[H2Stream, Any], ExchangeHandler]


class _TransportIO:
    """The core's ``ConnectionIO`` over the protocol's transport (writes: ``direct_write``)."""

    __slots__ = ("_direct", "_protocol")

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol
        self._direct: Any = None

    def connected(self) -> None:
        """The transport is there: see whether a write may go to its socket at once."""
        self._direct = direct_socket(self._protocol.transport)

    def write(self, data: bytes) -> None:
        write_now(self._protocol.transport, self._direct, data)

    def pause_reading(self) -> None:
        self._protocol.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        self._protocol.transport.resumeProducing()  # type: ignore[union-attr]

    def close(self) -> None:
        self._protocol.transport.unregisterProducer()  # type: ignore[union-attr]  # paused, it would keep us open
        self._protocol.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        self._protocol.transport.abortConnection()  # type: ignore[union-attr]


@implementer(IPushProducer)
class H2ServerConnection(Protocol):
    """An HTTP/2 server connection serving an ``HttpApplication``."""

    def __init__(
        self,
        app: HttpApplication,
        clock: IReactorTime,
        limits: H2Limits,
        web_fallback: WebFallback,
        turn_budget: TurnBudget | None = None,
    ) -> None:
        self.on_close: Callable[[H2ServerConnection], None] | None = None
        self._io = _TransportIO(self)
        self.core = ServerConnectionCore(
            app, clock, limits, lambda stream: web_fallback(stream, self.transport), self._io, turn_budget
        )
        self.core.on_close = self._core_closed

    def _core_closed(self, core: ServerConnectionCore) -> None:
        if self.on_close is not None:
            self.on_close(self)

    @property
    def streams(self) -> dict[int, H2Stream]:
        return self.core.streams

    @property
    def h2(self) -> h2.connection.H2Connection:
        return self.core.h2

    @property
    def peer(self) -> str:
        return self.core.peer

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        transport.registerProducer(self, True)
        self._io.connected()
        self.core.start(getattr(peer, "host", str(peer)))

    def dataReceived(self, data: bytes) -> None:
        self.core.receive(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.core.connection_lost()

    # -- IPushProducer: the socket's backpressure -----------------------------------

    def pauseProducing(self) -> None:
        self.core.pause_sending()

    def resumeProducing(self) -> None:
        self.core.resume_sending()

    def stopProducing(self) -> None:
        self.core.pause_sending()

    # -- drain ------------------------------------------------------------------

    def shutdown(self) -> defer.Deferred[None]:
        """Stop taking streams, let the open ones finish, close; fires when closed."""
        return self.core.shutdown()

    def abort(self) -> None:
        """Drop the connection now (the drain time ran out)."""
        self.core.abort()
