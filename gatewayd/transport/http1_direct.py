"""RPC requests the HTTP/1.1 channel reads and answers itself, past twisted.web's ``Request``.

Almost every RPC over HTTP/1.1 arrives in one read holding the whole request: a
small POST to ``/package.Service/Method`` with a Content-Length body. For those,
``read_rpc_request`` reads the head with one regular expression and a
``DirectExchange`` writes the answer straight to the transport (a unary answer
in one write). The answer's bytes are exactly those twisted.web writes: its
status line, header-name case, default content type and chunking
(tests/unit/test_http1_direct.py compares the two byte for byte).

``read_rpc_request`` is a filter, not a second HTTP parser: it takes only heads
that are plainly well-formed (method POST, HTTP/1.1, a printable target without
a query, token field names, values without CR, LF or NUL, no obs-fold, exactly
one valid Host and one all-digit Content-Length, no Transfer-Encoding, Expect,
Upgrade or Connection other than ``keep-alive``, within the header limits),
with the whole body in the same read and nothing after it. Anything else,
well-formed or hostile, is left to twisted.web's reading, where every rule of
``GatewayHTTPChannel`` applies as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.web.http import NO_BODY_CODES, RESPONSES
from twisted.web.http_headers import _nameEncoder

from gatewayd.rpc.wire import rpc_path_shape
from gatewayd.transport.backpressure import PausableExchange
from gatewayd.transport.direct_write import write_now
from gatewayd.transport.exchange import ExchangeHandler, HeaderList
from gatewayd.transport.turn_writes import TurnWrites

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# The whole head at once: the request line, then fields with token names and values without NUL, CR or LF.
_HEAD = re.compile(rb"POST (/[!->@-~]*) HTTP/1\.1((?:\r\n" + _TCHAR + rb"+:[^\x00\r\n]*)*)")  # no "?": no query
#: ``uri-host [ ":" port ]`` (RFC 9110 section 7.2): a reg-name or IP literal, digits for the port.
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_HOST_TEXT = re.compile(HOST.pattern.decode("latin-1"))
_SINGLE = frozenset({"host", "content-length"})  # twice: left to twisted.web (it refuses)
_DECLINED = frozenset({"transfer-encoding", "expect", "upgrade"})  # read or refused by twisted.web


class RpcRequest:
    """A complete request read by ``read_rpc_request``: lowercase header names, repeats joined with ``", "``."""

    __slots__ = ("body", "headers", "path")

    def __init__(self, path: str, headers: dict[str, str], body: bytes) -> None:
        self.path = path
        self.headers = headers
        self.body = body


_Read = tuple[str, dict[str, str], int, int]  # path, headers, body size, number of header fields
_READ: dict[bytes, _Read] = {}
_READ_KEPT = 256  # a client sends the same head again and again (the length aside): it is read once
_READ_MAX_HEAD = 1024  # longer heads are read every time


def read_rpc_request(data: bytes, max_head_bytes: int, max_headers: int, max_body_bytes: int) -> RpcRequest | None:
    """``data`` as one whole RPC request, or ``None`` when twisted.web should read it (see the module doc).

    A client repeats its head byte for byte (a new Content-Length only with a new body
    size), so a head read once is kept (``_READ``): the next request with it is only
    checked against the limits, which are the caller's and never part of what is kept.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 > max_head_bytes:
        return None
    if end <= _READ_MAX_HEAD:
        key = data[:end]
        read = _READ.get(key)
        if read is None:
            read = _read_head(data, end)
            if read is None:
                return None
            if len(_READ) >= _READ_KEPT:
                _READ.clear()
            _READ[key] = read
    else:
        read = _read_head(data, end)
        if read is None:
            return None
    path, headers, size, fields = read
    if fields >= max_headers or size > max_body_bytes or len(data) != end + 4 + size:
        return None
    return RpcRequest(path, headers.copy(), data[end + 4:])


def _read_head(data: bytes, end: int) -> _Read | None:
    """The head ``data[:end]`` as (path, headers, body size, fields), when it is one ``read_rpc_request``
    takes whatever the limits; ``None`` otherwise."""
    head = _HEAD.fullmatch(data, 0, end)
    if head is None:
        return None
    path = head[1].decode("latin-1")
    if not rpc_path_shape(path):
        return None
    # Lines of token names and values without NUL, CR or LF (_HEAD matched them): split, not searched.
    lines = head[2].decode("latin-1").split("\r\n")  # lines[0] is the empty text before the first CRLF
    headers: dict[str, str] = {}
    for index in range(1, len(lines)):
        name, _, value = lines[index].partition(":")
        name = name.lower()
        value = value.strip(" \t")
        seen = headers.get(name)
        if seen is None:
            headers[name] = value
        elif name in _SINGLE:
            return None
        else:
            headers[name] = seen + ", " + value
    if not _DECLINED.isdisjoint(headers):
        return None
    connection = headers.get("connection")
    if connection is not None and connection.lower() != "keep-alive":
        return None
    host = headers.get("host")
    length = headers.get("content-length")
    if host is None or not _HOST_TEXT.fullmatch(host) or length is None or not length.isascii() \
            or not length.isdigit() or len(length) > 12:
        return None
    return path, headers, int(length), len(lines) - 1


def response_head(status: int, headers: HeaderList, chunked: bool) -> bytes:
    """The status line and header block twisted.web's ``server.Request`` writes for these headers.

    Names in twisted's canonical case, grouped by name in first-seen order; line
    breaks in values become spaces; ``Content-Type: text/html`` when twisted would
    add it; ``Transfer-Encoding: chunked`` when ``chunked``.
    """
    grouped: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if b"\r" in value or b"\n" in value:
            value = b" ".join(value.splitlines())
        canonical = _nameEncoder.encode(name)
        values = grouped.get(canonical)
        if values is None:
            grouped[canonical] = [value]
        else:
            values.append(value)
    if status not in NO_BODY_CODES and b"Content-Type" not in grouped:
        length = grouped.get(b"Content-Length")
        if not (length and length[0] == b"0"):
            grouped[b"Content-Type"] = [b"text/html"]
    if chunked:
        grouped[b"Transfer-Encoding"] = [b"chunked"]
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, RESPONSES.get(status, b"Unknown Status"))]
    for canonical, values in grouped.items():
        for value in values:
            parts.append(b"%s: %s\r\n" % (canonical, value))
    parts.append(b"\r\n")
    return b"".join(parts)


_Head = tuple[bytes, bool, bool]  # the head's bytes, chunked, no body (a 204 or 304)
_HEADS: dict[tuple[int, tuple[tuple[bytes, bytes], ...], bool], _Head] = {}
_HEADS_KEPT = 1024  # answers repeat (status, headers, lengths): their heads are formatted once


def _head_for(status: int, headers: HeaderList, end_stream: bool) -> _Head:
    """The head of an answer sent with ``send_headers(status, headers, end_stream)``, as ``Http1Exchange``
    has twisted.web write it: ``Content-Length: 0`` added when it ends at once without one."""
    key = (status, tuple(headers), end_stream)
    head = _HEADS.get(key)
    if head is None:
        has_length = any(name.lower() == b"content-length" for name, _ in headers)
        if end_stream and not has_length:
            headers = [*headers, (b"content-length", b"0")]
            has_length = True
        no_body = status in NO_BODY_CODES
        chunked = not has_length and not no_body
        head = (response_head(status, headers, chunked), chunked, no_body)
        if len(_HEADS) >= _HEADS_KEPT:
            _HEADS.clear()
        _HEADS[key] = head
    return head


class DirectExchange(PausableExchange):
    """An ``Exchange`` for a request ``read_rpc_request`` read, written to its channel's transport.

    The head waits for the first body bytes (or the end), as twisted.web's does:
    a unary answer leaves in one write. With ``turn``, that write waits for the end
    of the reactor turn, with the turn's other answers (``flush``): on loopback each
    answer's ``send`` also wakes the client, and answers sent together wake a client
    once rather than once each. The channel flushes it before it reads on. Without
    a Content-Length the body is chunked. Backpressure: registered as the channel's
    producer while a body streams; body bytes written while the socket is full are
    counted in ``buffered_bytes``.
    ``done`` is called once, when the answer is complete; otherwise the channel calls ``lost``.
    """

    http2 = False
    method = "POST"

    __slots__ = ("_chunked", "_done", "_finished", "_head", "_held", "_no_body", "_producing", "_socket",
                 "_turn", "channel", "handler", "headers", "path", "peer")

    def __init__(self, channel: Any, request: RpcRequest, peer: str, done: Callable[[DirectExchange], None],
                 socket: Any = None, turn: TurnWrites | None = None) -> None:
        """``socket``: ``direct_socket(channel.transport)``, looked up once per connection; ``turn``: where
        a unary answer waits for the end of the reactor turn (``None``: it is written at once)."""
        self.channel = channel
        self._turn = turn
        self._held = b""  # a unary answer waiting for the end of the turn
        self.path = request.path
        self.headers = request.headers
        self.peer = peer
        self.handler: ExchangeHandler | None = None
        self._done = done
        self._socket = socket
        self._head: bytes | None = None
        self._chunked = False
        self._no_body = False
        self._finished = False
        self._producing = False
        super().__init__()

    @property
    def finished(self) -> bool:
        return self._finished

    def send_headers(self, status: int, headers: HeaderList, end_stream: bool = False) -> None:
        if self._finished or self._head is not None:
            return
        self._head, self._chunked, self._no_body = _head_for(status, headers, end_stream)
        if end_stream:
            self._finish(b"")

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        if self._finished:
            return
        if end_stream:
            if self._paused:
                self._buffered += len(data)
            self._finish(data)  # a unary answer: head and body in one write, never a producer
        elif data:
            if not self._producing:
                self._start_producing()
            if self._paused:
                self._buffered += len(data)
            self._write(self._framed(data))

    def send_trailers(self, trailers: HeaderList) -> None:
        if not self._finished:
            self._finish(b"")

    def reset(self) -> None:
        if not self._finished:
            self._finished = True
            self._stop_producing()
            self.channel.transport.abortConnection()

    def lost(self) -> None:
        """The connection went away before the answer was complete (reset too): the handler is told."""
        self._finished = True
        self._producing = False
        if self.handler is not None:
            self.handler.aborted()

    def _framed(self, data: bytes) -> bytes:
        if self._no_body:
            return b""
        if self._chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def _write(self, data: bytes) -> None:
        head = self._head
        if head is None:  # data before headers: the handler broke the Exchange contract
            raise RuntimeError("send_data before send_headers")
        if head:
            self._head = b""
            data = head + data
        if data:
            write_now(self.channel.transport, self._socket, data)

    @property
    def holding(self) -> bool:
        """A finished answer waits for the end of the turn."""
        return bool(self._held)

    def flush(self) -> None:
        """Write the answer held for the end of the turn (if it is still held)."""
        data, self._held = self._held, b""
        if data:
            write_now(self.channel.transport, self._socket, data)

    def _finish(self, data: bytes) -> None:
        last = self._framed(data) if data else b""
        if self._chunked:
            last += b"0\r\n\r\n"
        if self._turn is not None and self._head and not self.channel._dataBuffer:
            # The whole answer in one write (nothing of it sent yet, no pipelined request waiting
            # to be answered after it): it leaves with the turn's other writes.
            self._held = self._head + last
            self._head = b""
            self._turn.add(self)
        else:
            self._write(last)
        self._finished = True
        self._stop_producing()
        self._done(self)

    def _start_producing(self) -> None:
        """The first body bytes of a streamed answer: from now on the channel pauses and resumes us.
        A unary answer (one write) never gets here. The socket may be full already (an earlier
        answer's bytes): then we start paused, as the channel is."""
        self._producing = True
        self._paused = bool(self.channel._waitingForTransport)
        self.channel.registerProducer(self, True)

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            self.channel.unregisterProducer()
