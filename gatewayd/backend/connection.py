"""One keep-alive HTTP/1.1 connection to the backend, parsed by ``httptools`` (llhttp, in C).

Promises:

- One request at a time (no pipelining): ``send`` writes the whole request in
  one ``write`` and the connection reports the answer to its ``Exchange``.
  Over plain TCP with nothing queued in the transport, the request goes
  straight to the socket (one ``send``); only what the socket does not take
  goes through Twisted's write buffer. That saves registering the socket for
  writability and the reactor turn to write it, twice per request. Bytes and
  their order are the same either way.
- A request is written when the reactor turn that sent it ends (the pool's
  ``TurnWrites``), with the other requests of that turn: a backend on
  the same core wakes once for them all instead of taking the core once per
  request (measured: ~1/3 less backend CPU per call, bench/README.md). A
  request abandoned, or whose connection closed, before then is never written.
- Bodies delimited by ``Content-Length``, chunked, or by the connection's end
  (HTTP/1.0 style, complete as far as HTTP can tell); interim ``1xx``
  answers are skipped.
- An answer is handed over only once it is complete; the connection is
  reusable when the answer allowed keep-alive and nothing followed it.
- Anything malformed, an answer over the body limit, bytes nobody asked for,
  or the connection lost before an answer is complete: the exchange fails
  with ``BackendUnavailable`` and the connection is closed, never reused.
- An answer's head that ``httptools`` has already parsed (``AnswerHeads``:
  byte for byte, up to the blank line, from the start of an answer) is not
  parsed again: an answer that arrives whole in one read, with that head and
  a body of the length it had then, is what ``httptools`` made of it then
  (status, keep-alive; the body is the rest of the bytes). A backend sends
  the same head over and over (its ``Date`` changes once a second), so this
  skips the parser's nine Python callbacks per answer. Only heads whose
  answer's body was the raw rest of the read are remembered: an answer
  delimited by ``Content-Length`` (not chunked, not by the connection's end,
  no interim answer before it, nothing after it).
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

import httptools
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from gatewayd.backend.answers import BackendAnswer, BackendUnavailable
from gatewayd.transport.direct_write import direct_socket, write_now
from gatewayd.transport.turn_writes import TurnWrites

_DELIMITING = (b"content-length", b"transfer-encoding")
_END_OF_HEAD = b"\r\n\r\n"
MAX_HEADS = 256


class AnswerHeads:
    """Answer heads ``httptools`` parsed, with what it made of them: head bytes -> (status,
    keep-alive, body length). Bounded: past ``MAX_HEADS`` it starts over. One per pool."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[bytes, tuple[int, bool, int]] = {}

    def remember(self, head: bytes, status: int, keep_alive: bool, body_length: int) -> None:
        known = self.known
        if len(known) >= MAX_HEADS:
            known.clear()
        known[head] = (status, keep_alive, body_length)


class Exchange(TypingProtocol):
    """The request waiting for this connection's answer."""

    def answered(self, answer: BackendAnswer) -> None:
        """The complete answer (the connection is already back in its pool)."""

    def failed(self, error: BackendUnavailable, received_any: bool) -> None:
        """No answer; ``received_any`` is False when not one byte of an answer arrived."""


class ConnectionOwner(TypingProtocol):
    """Where a connection goes when it is free again or gone (its pool)."""

    def connection_free(self, connection: BackendConnection, reusable: bool) -> None:
        """The exchange is over: ``reusable`` connections take the next request, others are closing."""

    def connection_lost(self, connection: BackendConnection) -> None:
        """The connection is gone (whatever it was doing)."""


class BackendConnection(Protocol):
    """A ``Protocol`` for one pooled connection; ``send`` one request, get one answer."""

    def __init__(self, owner: ConnectionOwner, max_body_bytes: int, heads: AnswerHeads, turn: TurnWrites) -> None:
        self._owner = owner
        self._turn = turn
        self._held = b""  # a request waiting for the end of the turn
        self._heads = heads
        self._fresh = False  # an exchange waits and no byte of its answer has come yet
        self._max_body_bytes = max_body_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._exchange: Exchange | None = None
        self._status = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._delimited = False  # Content-Length or Transfer-Encoding seen
        self._headers_done = False
        self._keep_alive = False
        self._answer: BackendAnswer | None = None
        self._error: BackendUnavailable | None = None
        self._received_any = False
        self._direct: Any = None  # plain TCP: the transport requests may be sent through at once
        self.requests_sent = 0
        self.closed = False

    def connectionMade(self) -> None:
        self._direct = direct_socket(self.transport)

    # --- the pool's side -----------------------------------------------------------------

    def send(self, request: bytes, exchange: Exchange) -> None:
        """Write ``request`` (complete HTTP/1.1 bytes); its answer goes to ``exchange``."""
        self._exchange = exchange
        self._status = self._size = 0
        self._chunks = []
        self._delimited = self._headers_done = self._keep_alive = self._received_any = False
        self._answer = self._error = None
        self._fresh = True
        self.requests_sent += 1
        self._held = request
        self._turn.add(self)

    def flush(self) -> None:
        """The end of the turn: write the request held since ``send``, unless it was dropped."""
        request, self._held = self._held, b""
        if request and not self.closed:
            write_now(self.transport, self._direct, request)

    def abandon(self) -> None:
        """Stop the exchange in progress (cancelled or timed out): its answer is never read."""
        self._exchange = None
        self._held = b""
        self.abort()
        self._owner.connection_free(self, False)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abortConnection()  # type: ignore[union-attr]

    def close(self) -> None:
        """Close an idle connection cleanly."""
        if not self.closed:
            self.closed = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    # --- bytes in ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._exchange is None:
            # Bytes on an idle connection (or after an abandoned exchange): never reuse it.
            self.abort()
            return
        self._received_any = True
        if self._held:
            # An answer to a request still waiting for the end of the turn: nobody asked for it.
            self._held = b""
            self._fail(BackendUnavailable("backend answered a request it was not sent"))
            return
        if self._fresh:
            self._fresh = False
            end = data.find(_END_OF_HEAD) + 4
            if end > 3:
                known = self._heads.known.get(data[:end])
                if known is not None and len(data) - end == known[2]:
                    # A head httptools parsed before, with a body of the length it had: the same answer.
                    self._finish(BackendAnswer(known[0], data[end:]), reusable=known[1])
                    return
                self._parse(data)
                answer = self._answer
                if (answer is not None and self._error is None and self._exchange is not None
                        and answer.body == data[end:]):
                    # Exactly one answer, delimited by Content-Length: its head decides all there is.
                    self._heads.remember(data[:end], answer.status, self._keep_alive, len(answer.body))
                self._handle()
                return
        self._parse(data)
        self._handle()

    def _parse(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error = BackendUnavailable("backend answered with a protocol upgrade")
        except httptools.HttpParserError:
            if self._error is None:
                self._error = BackendUnavailable("backend answer is not valid HTTP/1.1")

    def _handle(self) -> None:
        if self._answer is not None:
            self._finish(self._answer, reusable=self._keep_alive and self._error is None)
        elif self._error is not None:
            self._fail(self._error)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        exchange = self._exchange
        if exchange is not None and self._answer is None:
            if self._headers_done and not self._delimited and self._error is None:
                # A body delimited by the connection's end: complete as far as HTTP can tell.
                self._finish(BackendAnswer(self._status, b"".join(self._chunks)), reusable=False)
            else:
                self._fail(self._error or BackendUnavailable("backend closed the connection"))
        self._owner.connection_lost(self)

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._answer is not None:
            # A second answer to one request: the connection is out of step.
            self._error = BackendUnavailable("backend sent more than one answer")
            raise self._error

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in _DELIMITING:
            self._delimited = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body_bytes:
            self._chunks.clear()
            self._error = BackendUnavailable("backend answer too large")
            raise self._error
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        status = self._status
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._headers_done = self._delimited = False
            return
        self._keep_alive = self._parser.should_keep_alive()
        chunks = self._chunks
        self._answer = BackendAnswer(status, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    # --- handing over ---------------------------------------------------------------------------

    def _finish(self, answer: BackendAnswer, reusable: bool) -> None:
        exchange, self._exchange = self._exchange, None
        self._chunks = []
        if not reusable:
            self.abort()
        # Back in the pool (or out of it) before the caller's callbacks run, so they can reuse it at once.
        self._owner.connection_free(self, reusable)
        if exchange is not None:
            exchange.answered(answer)

    def _fail(self, error: BackendUnavailable) -> None:
        exchange, self._exchange = self._exchange, None
        self._chunks = []
        self.abort()
        self._owner.connection_free(self, False)
        if exchange is not None:
            exchange.failed(error, self._received_any)
