"""TCP_NODELAY on every connection gatewayd makes or accepts.

Frames and answers are written whole, once per reactor turn, so Nagle's
algorithm only adds the peer's delayed-ACK time (tens of ms) to replies that
leave in more than one segment.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer


def set_nodelay(transport: Any) -> None:
    """Disable Nagle on ``transport`` when it is TCP (TLS wraps it; look underneath)."""
    while transport is not None:
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)


@implementer(IStreamClientEndpoint)
class NoDelayEndpoint:
    """A client endpoint whose connections have TCP_NODELAY set."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        def connected(protocol: Any) -> Any:
            set_nodelay(getattr(protocol, "transport", None))
            return protocol

        d: defer.Deferred[Any] = self._endpoint.connect(factory)
        return d.addCallback(connected)
