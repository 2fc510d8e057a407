"""Bidirectional streaming for the methods that need it (server reflection), and only those.

Every other method reads its whole request before its handler runs (rpc/server.py). A
method registered with ``Method(..., stream=handler, bidi=True)`` is served by a
``BidiServerCall`` instead: its handler runs as soon as the first request message is
complete and is given a ``RequestStream`` in place of a request message; each further
message is handed to it as it arrives, so a client that waits for an answer before it
sends the next request (buf curl, grpcurl) is answered. Over HTTP/1.1 the whole body
arrives before any of it is read, so the call is half-duplex there; that is all the
gRPC-Web and Connect specifications promise over HTTP/1.1 anyway.
"""

from __future__ import annotations

from collections import deque

from google.protobuf.message import Message
from twisted.internet import defer

from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import Base64StreamDecoder, FrameDecoder
from gatewayd.rpc.server import RpcApplication, ServerCall
from gatewayd.rpc.wire import WireProtocol
from gatewayd.transport.exchange import Exchange


class RequestStream:
    """The request messages of one bidi call, in the order they arrived.

    ``next()`` fires with the next message, or with ``None`` once the client has
    half-closed and every message was taken. Cancelling its Deferred drops the wait.
    """

    __slots__ = ("_ended", "_messages", "_waiter", "queued_bytes")

    def __init__(self) -> None:
        self._messages: deque[tuple[Message, int]] = deque()
        self._waiter: defer.Deferred[Message | None] | None = None
        self._ended = False
        self.queued_bytes = 0

    def put(self, message: Message, size: int) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(message)
        else:
            self._messages.append((message, size))
            self.queued_bytes += size

    def end(self) -> None:
        self._ended = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def next(self) -> defer.Deferred[Message | None]:
        if self._messages:
            message, size = self._messages.popleft()
            self.queued_bytes -= size
            return defer.succeed(message)
        if self._ended:
            return defer.succeed(None)

        def drop(d: defer.Deferred[Message | None]) -> None:
            if self._waiter is d:
                self._waiter = None

        self._waiter = defer.Deferred(canceller=drop)
        return self._waiter


class BidiServerCall(ServerCall):
    """A ``ServerCall`` that hands request messages to its handler as they complete.

    Messages not yet taken by the handler are bounded by ``server.max_message_bytes`` in
    total (RESOURCE_EXHAUSTED beyond it): flow control does not hold a client back, since
    the transport acknowledges DATA as it arrives.
    """

    __slots__ = ("_incoming", "_incoming_text", "requests")

    def __init__(self, app: RpcApplication, exchange: Exchange, proto: WireProtocol) -> None:
        super().__init__(app, exchange, proto)
        self.requests = RequestStream()
        # Our own decoders: ServerCall's stay empty, so its one-message decoding
        # (``_decode_request`` on ``_frames``) can be reused frame by frame.
        self._incoming = FrameDecoder(app.max_message_bytes)
        self._incoming_text = Base64StreamDecoder() if proto.text else None

    def body_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.finished:
            return
        try:
            if self._incoming_text is not None:
                data = self._incoming_text.feed(data)
            for flags, payload in self._incoming.feed(data):
                self._frames = [(flags, payload)]
                message = self._decode_request()
                if message is None:
                    return  # refused by the protocol, and answered
                self._start()
                if self.finished:
                    return
                self.requests.put(message, len(payload))
                if self.requests.queued_bytes > self.app.max_message_bytes:
                    raise RpcError(Code.RESOURCE_EXHAUSTED, "too many request messages waiting to be read")
        except RpcError as e:
            self._fail(e)

    def body_complete(self) -> None:
        if self.finished:
            return
        if self._incoming.pending or (self._incoming_text is not None and self._incoming_text.pending):
            self._fail(RpcError(Code.INVALID_ARGUMENT, "truncated request message"))
            return
        self._start()
        self.requests.end()

    def _start(self) -> None:
        if self.call is None and not self.finished:
            self._run(self.requests)  # type: ignore[arg-type]

    def _fail(self, error: RpcError) -> None:
        self._fail_early(error)
        if self._handler_d is not None:
            self._handler_d.cancel()
