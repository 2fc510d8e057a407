"""The transport-neutral HTTP exchange that RPC protocols are written against.

A transport (our HTTP/2 connection, or twisted.web for HTTP/1.1) turns each
request into an ``Exchange`` and hands it to an ``ExchangeHandler`` as soon as
the request headers are complete; the body follows in chunks. Only unary and
server-streaming RPCs exist here, so handlers read the whole (bounded) body
before they answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

HeaderList = list[tuple[bytes, bytes]]


class Exchange(Protocol):
    """One HTTP request and the means to answer it.

    ``headers`` has lowercase names; repeated headers are joined with ``", "``.
    Writes never block: bytes the peer cannot take yet (flow control, a full
    socket) are queued and counted in ``buffered_bytes``, which callers bound.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    peer: str
    http2: bool

    @property
    def buffered_bytes(self) -> int: ...

    def send_headers(self, status: int, headers: HeaderList, end_stream: bool = False) -> None: ...

    def send_data(self, data: bytes, end_stream: bool = False) -> None: ...

    def send_trailers(self, trailers: HeaderList) -> None:
        """End the response with trailers (HTTP/2 only)."""

    def reset(self) -> None:
        """Abandon the response: RST_STREAM on HTTP/2, abort the connection on HTTP/1.1."""

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` whenever queued bytes have been handed to the socket."""


class ExchangeHandler(Protocol):
    """Consumes one request; created by an ``HttpApplication`` per request."""

    def body_received(self, data: bytes) -> None: ...

    def body_complete(self) -> None: ...

    def aborted(self) -> None:
        """The peer reset the stream or the connection was lost; free everything."""


class HttpApplication(Protocol):
    """Decides what serves a request from its headers."""

    def handler_for(self, exchange: Exchange) -> ExchangeHandler | None:
        """An RPC handler for this request, or ``None`` to serve it as a web resource."""
