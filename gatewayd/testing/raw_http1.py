"""A raw HTTP/1.1 client: exact request bytes out, everything the server sent back in.

``RawHttp1`` collects the bytes until the server closes; ``parse_http1_response``
reads one response from them (content-length, chunked, or read to close);
``send_http1`` does both for one request; ``http1_request`` builds a request byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from gatewayd.testing.wait import Waitable


@dataclass
class Http1Response:
    """One parsed HTTP/1.1 response; ``raw`` is every byte the server sent."""

    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = field(repr=False, default=b"")


def parse_http1_response(raw: bytes) -> Http1Response:
    """One HTTP/1.1 response (content-length, chunked, or read to close)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        n = name.strip().lower()
        headers[n] = headers[n] + ", " + value.strip() if n in headers else value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return Http1Response(status, headers, bytes(body), raw)
    if "content-length" in headers:
        return Http1Response(status, headers, rest[: int(headers["content-length"])], raw)
    return Http1Response(status, headers, rest, raw)


class RawHttp1(Protocol, Waitable):
    """Sends exact bytes over HTTP/1.1 and collects everything until the server closes."""

    def __init__(self, reactor: Any = None) -> None:
        Waitable.__init__(self, reactor)
        self.received = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check_waiters()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self._check_waiters()

    def describe(self) -> str:
        return f"closed={self.closed} received={self.received[:300]!r}"


async def send_http1(client: RawHttp1, raw: bytes) -> Http1Response:
    """Write ``raw`` on ``client``'s open connection; the response, once the server closed it (bounded)."""
    assert client.transport is not None, "connect the client first"
    client.transport.write(raw)
    await client.wait(lambda: client.closed, "HTTP/1.1 connection close")
    return parse_http1_response(client.received)


def http1_request(method: str, path: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The exact bytes of one request with ``Connection: close`` and a Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gatewayd.test", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


__all__ = ["Http1Response", "RawHttp1", "http1_request", "parse_http1_response", "send_http1"]
