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
wrapper and always takes ``transport.write``. The bench's fan-out observer
(bench/twist_observe.py) sees these sends: they go through ``writeSomeData``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


def direct_socket(transport: Any) -> Any:
    """What ``write_now`` may send through for ``transport`` (the TCP transport itself), or
    ``None`` (TLS, test transports)."""
    return transport if isinstance(transport, tcp.Connection) else None


def write_now(transport: Any, direct: Any, data: bytes) -> None:
    """``transport.write(data)``, sending at once first when nothing is queued.

    ``direct`` is ``direct_socket(transport)`` (looked up once per connection);
    with ``None`` this is exactly ``transport.write``. The send is Twisted's own
    ``writeSomeData`` (the one its reactor calls when the socket is writable): up
    to 128 KiB per call, 0 when the socket is full, an exception object when the
    connection is broken, which we leave for ``transport.write``'s path to notice.
    """
    if (
        direct is not None
        and not transport._tempDataBuffer
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        sent = direct.writeSomeData(data)
        if type(sent) is int and sent > 0:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
