"""What a test reaches on a loopback port: its URL and its gRPC target."""

from __future__ import annotations


class OnLoopback:
    """``url`` and ``target`` of a server on ``127.0.0.1:port`` (a subclass provides ``port``)."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"
