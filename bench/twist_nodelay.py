"""Diagnostic only: ``twist`` with TCP_NODELAY set on every TCP connection Twisted makes or accepts.

The gateway sets no TCP_NODELAY; this wrapper (``--nodelay`` in the benchmarks)
shows what Nagle's algorithm costs. It patches Twisted in this process only.
"""

from __future__ import annotations

import sys

from twisted.internet import tcp


def _patch() -> None:
    original_server_init = tcp.Server.__init__
    original_connected = tcp.Client._connectDone

    def server_init(self: tcp.Server, *args: object, **kwargs: object) -> None:
        original_server_init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.setTcpNoDelay(True)

    def client_connected(self: tcp.Client) -> None:
        self.setTcpNoDelay(True)
        original_connected(self)

    tcp.Server.__init__ = server_init  # type: ignore[method-assign]
    tcp.Client._connectDone = client_connected  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    _patch()
    from twisted.application.twist._twist import Twist

    sys.argv[0] = "twist"
    Twist.main()
