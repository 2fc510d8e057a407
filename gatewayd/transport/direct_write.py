"""Hand bytes to a TCP socket at once when Twisted has nothing queued for it.

Twisted's ``transport.write`` appends to the transport's buffer, registers the
socket for writability (an ``epoll_ctl``) and sends in the reactor's next turn,
then unregisters it (another ``epoll_ctl``). A gateway that answers each call
with one write per connection pays that on every answer. When the transport
has nothing queued and is not closing, sending now puts the same bytes on the
wire in the same order; whatever the socket does not take (a full send buffer,
an error) goes through ``transport.write`` as before, which queues it behind
nothing and reports a broken connection the way it always does.

Only plain TCP transports (``twisted.internet.tcp.Connection``: accepted,
connected, adopted and UNIX sockets) qualify; a TLS transport is a protocol
wrapper and always takes ``transport.write``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def direct_socket(transport: Any) -> Any:
    """The socket ``write_now`` may send on for ``transport``, or ``None`` (TLS, test transports)."""
    return transport.socket if isinstance(transport, tcp.Connection) else None


def write_now(transport: Any, sock: Any, data: bytes) -> None:
    """``transport.write(data)``, sending on ``sock`` first when nothing is queued.

    ``sock`` is ``direct_socket(transport)`` (looked up once per connection);
    with ``None`` this is exactly ``transport.write``.
    """
    if (
        sock is not None
        and not transport._tempDataBuffer
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        try:
            sent = sock.send(data)
        except OSError:  # EAGAIN, or a broken connection that transport.write will notice
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
