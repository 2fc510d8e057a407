"""The RPC server: one ``ServerCall`` per request, whatever the protocol.

``RpcApplication.handler_for`` claims RPC requests by content type and path;
each becomes a ``ServerCall`` that reads the bounded body, decodes the request
message, runs the method's handler, and writes the result through its
``WireProtocol``. Deadlines and peer resets cancel the handler's Deferred.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import DecodeError, Message
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatewayd.rpc.call import Call, Encoded, encode_json
from gatewayd.rpc.codes import Code
from gatewayd.rpc.compression import gunzip
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import Base64StreamDecoder, FrameDecoder
from gatewayd.rpc.methods import Method, MethodTable
from gatewayd.rpc.protocols import select
from gatewayd.rpc.wire import Refusal, WireProtocol, rpc_path_shape
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.exchange import Exchange, ExchangeHandler, HeaderList

log = Logger()

CallObserver = Callable[[Call, Code, float], None]
"""Told of every finished call: the call, its status code, its duration in seconds."""

FinishObserver = Callable[["ServerCall", Code], None]
"""Told of every RPC that ends, refused before its handler ran too (``call`` is then ``None``)."""


class RpcApplication:
    """Claims RPC requests and serves them from a ``MethodTable``."""

    def __init__(
        self,
        methods: MethodTable,
        clock: IReactorTime,
        cors: CorsPolicy,
        max_message_bytes: int = 4 * 1024 * 1024,
        stream_buffer_bytes: int = 256 * 1024,
        resolve_peer: Callable[[Exchange], str] | None = None,
    ) -> None:
        self.methods = methods
        self.clock = clock
        self.cors = cors
        self.max_message_bytes = max_message_bytes
        self.stream_buffer_bytes = stream_buffer_bytes
        self.resolve_peer = resolve_peer or (lambda exchange: exchange.peer)
        self.observers: list[CallObserver] = []
        self.on_finish: FinishObserver | None = None  # the access log (observability/access.py)
        self.active: set[ServerCall] = set()

    def handler_for(self, exchange: Exchange) -> ExchangeHandler | None:
        path = exchange.path
        if exchange.method == "OPTIONS" and rpc_path_shape(path):
            return _Preflight(self, exchange)
        method = self.methods.get(path)
        selected = select(exchange.method, path, exchange.headers, exchange.http2, method is not None)
        if selected is None:
            return None
        if isinstance(selected, Refusal):
            return _Refused(exchange, selected)
        if method is None:
            return ServerCall(self, exchange, selected)
        if method.bidi and selected.framed:
            from gatewayd.rpc.bidi import BidiServerCall

            return BidiServerCall(self, exchange, selected)
        return ServerCall(self, exchange, selected, method)

    def notify(self, call: Call, code: Code, started: float) -> None:
        if self.observers:
            duration = time.perf_counter() - started
            for observer in self.observers:
                observer(call, code, duration)


class ServerCall:
    """One RPC in flight; also the ``ServerStream`` a streaming handler writes to."""

    __slots__ = (
        "_body",
        "_body_size",
        "_deadline_call",
        "_decoder",
        "_frames",
        "_handler_d",
        "_started",
        "_stream_started",
        "_text",
        "app",
        "bytes_in",
        "bytes_out",
        "call",
        "cors_headers",
        "exchange",
        "finished",
        "method",
        "proto",
        "streaming",
    )

    def __init__(self, app: RpcApplication, exchange: Exchange, proto: WireProtocol,
                 method: Method | None = None) -> None:
        """``method``: the method table's entry for the path, when the caller has looked it up already."""
        self.app = app
        self.exchange = exchange
        self.proto = proto
        self.method: Method | None = method if method is not None else app.methods.get(exchange.path)
        self.cors_headers: HeaderList = app.cors.response_headers(exchange.headers.get("origin"))
        self.finished = False
        self.streaming = False
        self._stream_started = False
        self.call: Call | None = None
        self._started = time.perf_counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self._handler_d: defer.Deferred[Any] | None = None
        self._deadline_call: IDelayedCall | None = None
        self._body = bytearray()
        self._body_size = 0
        self._frames: list[tuple[int, bytes]] = []
        self._decoder = FrameDecoder(app.max_message_bytes) if proto.framed else None
        self._text = Base64StreamDecoder() if proto.text else None
        app.active.add(self)

    # -- ExchangeHandler ------------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.finished:
            return
        if self.method is None:
            # Answered at once: a bidi client (buf curl's reflection) waits for an answer before it half-closes.
            verdict = self.proto.check_method(None, self.exchange.path)
            self._fail_early(verdict or RpcError(Code.UNIMPLEMENTED, f"unknown method {self.exchange.path}"))
            return
        try:
            if self._text is not None:
                data = self._text.feed(data)
            if self._decoder is not None:
                self._frames.extend(self._decoder.feed(data))
                if len(self._frames) > 1:
                    raise RpcError(Code.UNIMPLEMENTED, "client streaming is not supported")
            else:
                self._body_size += len(data)
                if self._body_size > self.app.max_message_bytes:
                    raise RpcError(
                        Code.RESOURCE_EXHAUSTED,
                        f"message exceeds the limit of {self.app.max_message_bytes} bytes",
                    )
                self._body += data
        except RpcError as e:
            self._fail_early(e)

    def body_complete(self) -> None:
        if self.finished or self.call is not None:
            return
        try:
            request = self._decode_request()
        except RpcError as e:
            self._fail_early(e)
            return
        if request is None:
            return  # refused
        self._run(request)

    def body_too_large(self) -> None:
        """The transport dropped a request body over its limit (HTTP/1.1): RESOURCE_EXHAUSTED."""
        if self.finished:
            return
        self._fail_early(
            RpcError(Code.RESOURCE_EXHAUSTED, f"message exceeds the limit of {self.app.max_message_bytes} bytes")
        )

    def aborted(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._cleanup()
        self._done(Code.CANCELLED)
        if self._handler_d is not None:
            self._handler_d.cancel()

    # -- request --------------------------------------------------------------------

    def _decode_request(self) -> Message | None:
        """The request message; ``None`` when the protocol refused the call (and answered)."""
        method = self.method
        verdict = self.proto.check_method(method, self.exchange.path)
        if isinstance(verdict, RpcError):
            raise verdict
        if verdict is not None:
            self._fail_early(verdict)
            return None
        assert method is not None
        encoding = self.proto.request_encoding()
        limit = self.app.max_message_bytes
        if self._decoder is not None:
            if (self._text is not None and self._text.pending) or self._decoder.pending:
                raise RpcError(Code.INVALID_ARGUMENT, "truncated request message")
            if len(self._frames) != 1:
                raise RpcError(Code.INVALID_ARGUMENT, "expected exactly one request message")
            flags, payload = self._frames[0]
            payload = self.proto.unwrap_frame(flags, payload, limit)
        else:
            payload = bytes(self._body)
            if encoding is not None:
                payload = gunzip(payload, limit)
        request = method.request_type()
        if self.proto.json:
            try:
                document = json.loads(payload or b"{}")
                if not isinstance(document, dict):
                    # ParseDict takes a bare string as an empty message; a message is a JSON object.
                    raise ValueError("not a JSON object")
                ParseDict(document, request, ignore_unknown_fields=True)
            except (ValueError, ParseError, TypeError, RecursionError):
                # RecursionError: deeply nested JSON ("[[[[...") within the size limit.
                raise RpcError(Code.INVALID_ARGUMENT, "malformed JSON request message") from None
        else:
            try:
                request.ParseFromString(payload)
            except DecodeError:
                raise RpcError(Code.INVALID_ARGUMENT, "malformed protobuf request message") from None
        return request

    # -- running the handler ------------------------------------------------------------

    def _run(self, request: Message) -> None:
        method = self.method
        assert method is not None
        exchange = self.exchange
        try:
            timeout = self.proto.timeout()
        except RpcError as e:
            self._fail_early(e)
            return
        clock = self.app.clock
        self.call = call = Call(
            method=exchange.path,
            protocol=self.proto.name,
            metadata=exchange.headers,
            peer=self.app.resolve_peer(exchange),
            deadline=None if timeout is None else clock.seconds() + timeout,
        )
        if timeout is not None:
            self._deadline_call = clock.callLater(timeout, self._deadline_expired)
        try:
            result: Any
            if method.stream is not None:
                self.streaming = True
                result = method.stream(call, request, self)
            else:
                assert method.unary is not None
                result = method.unary(call, request)
        except Exception:
            self._handler_failed(Failure())
            return
        d = result if isinstance(result, defer.Deferred) else defer.ensureDeferred(result)
        if self.finished:
            # The stream ended (overflow) while the handler was starting.
            d.cancel()
            return
        self._handler_d = d
        if d.called and not d.paused and not isinstance(d.result, Failure):
            # Answered at once (Health/Check, say): write it now, without running callbacks.
            # (called, paused and result are what Deferred.__await__ reads too.)
            try:
                self._handler_succeeded(d.result)
            except Exception:
                # What addCallbacks would have left in the Deferred, unhandled: say so.
                log.failure("answering {path} failed", path=self.exchange.path)
            return
        d.addCallbacks(self._handler_succeeded, self._handler_failed)

    def _handler_succeeded(self, response: Any) -> None:
        if self.finished:
            return
        self.finished = True
        self._cleanup()
        if self.streaming:
            self._ensure_stream_started()
            self.proto.end_stream(self.exchange)
        else:
            payload = self._encode(response)
            self.bytes_out += len(payload)
            self.proto.write_unary(self.exchange, payload, self.cors_headers)
        self._done(Code.OK)

    def _handler_failed(self, failure: Failure) -> None:
        if self.finished:
            return None
        error = failure.value
        if not isinstance(error, RpcError):
            if failure.check(defer.CancelledError):
                error = RpcError(Code.CANCELLED, "call cancelled")
            else:
                log.failure("handler for {path} failed", failure, path=self.exchange.path)
                error = RpcError(Code.INTERNAL, "internal error")
        self._finish_with(error)
        return None

    def _deadline_expired(self) -> None:
        self._deadline_call = None
        if self.finished:
            return
        self._finish_with(RpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded"))
        if self._handler_d is not None:
            self._handler_d.cancel()

    def _fail_early(self, error: RpcError | Refusal) -> None:
        """Refuse the call before a handler ran: with a status, or with the protocol's plain HTTP answer."""
        if isinstance(error, Refusal):
            self.finished = True
            self._cleanup()
            error.write(self.exchange, self.cors_headers)
            # Connect's codes for these HTTP answers: 404 is an unknown procedure, 415 and the like unknown.
            self._done(Code.UNIMPLEMENTED if error.status == 404 else Code.UNKNOWN)
            return
        self._finish_with(error)

    def _finish_with(self, error: RpcError) -> None:
        self.finished = True
        self._cleanup()
        self.proto.write_error(self.exchange, error, self.streaming and self._stream_started, self.cors_headers)
        self._done(error.code)

    def _done(self, code: Code) -> None:
        if self.call is not None:
            self.app.notify(self.call, code, self._started)
        if self.app.on_finish is not None:
            self.app.on_finish(self, code)

    @property
    def duration_s(self) -> float:
        """Seconds since the request's headers arrived."""
        return time.perf_counter() - self._started

    def _cleanup(self) -> None:
        self.app.active.discard(self)
        if self._deadline_call is not None and self._deadline_call.active():
            self._deadline_call.cancel()
        self._deadline_call = None
        self.exchange.on_drain(None)

    # -- ServerStream -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.finished

    def _ensure_stream_started(self) -> None:
        if not self._stream_started:
            self._stream_started = True
            self.proto.start_stream(self.exchange, self.cors_headers)

    def send(self, message: Message | Encoded) -> None:
        if self.finished:
            return
        if not self._stream_started:
            self._ensure_stream_started()
        proto = self.proto
        if type(message) is Encoded:
            key = proto.frame_cache_key
            data = message.frames.get(key)
            if data is None:
                data = message.frames[key] = proto.frame_message(message.json() if proto.json else message.proto)
        else:
            data = proto.frame_message(self._encode(message))
        exchange = self.exchange
        self.bytes_out += len(data)
        exchange.send_data(data)
        if exchange.buffered_bytes > self.app.stream_buffer_bytes:
            self._finish_with(RpcError(Code.RESOURCE_EXHAUSTED, "client is not reading; stream buffer full"))
            if self._handler_d is not None:
                self._handler_d.cancel()

    def _encode(self, message: Message | Encoded) -> bytes:
        if isinstance(message, Encoded):
            return message.json() if self.proto.json else message.proto
        return encode_json(message) if self.proto.json else message.SerializeToString()


class _Refused:
    """Answer a request that is not a well-formed RPC with its refusal, once the body is in."""

    def __init__(self, exchange: Exchange, refusal: Refusal) -> None:
        self.exchange = exchange
        self.refusal = refusal
        self.done = False

    def body_received(self, data: bytes) -> None:
        pass

    def body_complete(self) -> None:
        if self.done:
            return
        self.done = True
        self.refusal.write(self.exchange)

    def aborted(self) -> None:
        self.done = True


class _Preflight(_Refused):
    """A CORS preflight for an RPC path."""

    def __init__(self, app: RpcApplication, exchange: Exchange) -> None:
        super().__init__(exchange, Refusal(204))
        self.app = app

    def body_complete(self) -> None:
        if self.done:
            return
        self.done = True
        headers = self.exchange.headers
        allowed = self.app.cors.preflight_headers(headers.get("origin"), headers.get("access-control-request-headers"))
        if allowed is None:
            self.exchange.send_headers(403, [(b"content-length", b"0")], end_stream=True)
        else:
            self.exchange.send_headers(204, allowed, end_stream=True)
