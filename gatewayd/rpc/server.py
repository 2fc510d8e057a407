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
from gatewayd.rpc.protocol_grpc import Grpc, unsupported_transport
from gatewayd.rpc.wire import WireProtocol, rpc_path_shape, select_protocol
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.exchange import Exchange, ExchangeHandler, HeaderList

log = Logger()

CallObserver = Callable[[Call, Code, float], None]
"""Told of every finished call: the call, its status code, its duration in seconds."""


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
        self.active: set[ServerCall] = set()

    def handler_for(self, exchange: Exchange) -> ExchangeHandler | None:
        headers = exchange.headers
        if exchange.method == "OPTIONS" and rpc_path_shape(exchange.path):
            return _Preflight(self, exchange)
        protocol_cls = select_protocol(exchange.method, exchange.path, headers, exchange.http2)
        if protocol_cls is None:
            if rpc_path_shape(exchange.path) and exchange.method == "POST":
                return _Refusal(exchange, 415, b"unsupported content type for an RPC")
            return None
        if exchange.method != "POST":
            return _Refusal(exchange, 405, b"RPCs are POST requests")
        if protocol_cls is Grpc and not exchange.http2:
            return _Refusal(exchange, 0, b"", grpc_over_http1=True)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        return ServerCall(self, exchange, protocol_cls(headers, content_type))

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
        "call",
        "cors_headers",
        "exchange",
        "finished",
        "method",
        "proto",
        "streaming",
    )

    def __init__(self, app: RpcApplication, exchange: Exchange, proto: WireProtocol) -> None:
        self.app = app
        self.exchange = exchange
        self.proto = proto
        self.method: Method | None = app.methods.get(exchange.path)
        self.cors_headers: HeaderList = app.cors.response_headers(exchange.headers.get("origin"))
        self.finished = False
        self.streaming = False
        self._stream_started = False
        self.call: Call | None = None
        self._started = time.perf_counter()
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
        if self.finished:
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
        except _UnsupportedMediaType:
            self._fail_early(_UnsupportedMediaType)
            return
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
        if self.call is not None:
            self.app.notify(self.call, Code.CANCELLED, self._started)
        if self._handler_d is not None:
            self._handler_d.cancel()

    # -- request --------------------------------------------------------------------

    def _decode_request(self) -> Message:
        method = self.method
        if method is None:
            raise RpcError(Code.UNIMPLEMENTED, f"unknown method {self.exchange.path}")
        if not self.proto.framed and method.server_streaming:
            raise _UnsupportedMediaType
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
            self.proto.write_unary(self.exchange, self._encode(response), self.cors_headers)
        self.app.notify(self.call, Code.OK, self._started)  # type: ignore[arg-type]

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

    def _fail_early(self, error: RpcError | type[_UnsupportedMediaType]) -> None:
        """Refuse the call before a handler ran."""
        if error is _UnsupportedMediaType:
            self.finished = True
            self._cleanup()
            _Refusal(self.exchange, 415, b"unary content type for a streaming method").body_complete()
            return
        assert isinstance(error, RpcError)
        if error.code is Code.UNIMPLEMENTED and self.method is None and self.proto.name.startswith("connect"):
            # Connect answers an unknown procedure with 404, whatever the codec.
            self.finished = True
            self._cleanup()
            _write_connect_404(self.exchange, error, self.cors_headers)
            return
        self._finish_with(error)

    def _finish_with(self, error: RpcError) -> None:
        self.finished = True
        self._cleanup()
        self.proto.write_error(self.exchange, error, self.streaming and self._stream_started, self.cors_headers)
        if self.call is not None:
            self.app.notify(self.call, error.code, self._started)

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
        self._ensure_stream_started()
        proto = self.proto
        if type(message) is Encoded:
            key = proto.frame_cache_key
            data = message.frames.get(key) if key is not None else None
            if data is None:
                data = proto.frame_message(message.json() if proto.json else message.proto)
                if key is not None:
                    message.frames[key] = data
        else:
            data = proto.frame_message(self._encode(message))
        exchange = self.exchange
        exchange.send_data(data)
        if exchange.buffered_bytes > self.app.stream_buffer_bytes:
            self._finish_with(RpcError(Code.RESOURCE_EXHAUSTED, "client is not reading; stream buffer full"))
            if self._handler_d is not None:
                self._handler_d.cancel()

    def _encode(self, message: Message | Encoded) -> bytes:
        if isinstance(message, Encoded):
            return message.json() if self.proto.json else message.proto
        return encode_json(message) if self.proto.json else message.SerializeToString()


class _UnsupportedMediaType(Exception):
    pass


def _write_connect_404(exchange: Exchange, error: RpcError, extra: HeaderList) -> None:
    body = json.dumps({"code": "unimplemented", "message": error.message}).encode()
    exchange.send_headers(
        404, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra]
    )
    exchange.send_data(body, end_stream=True)


class _Refusal:
    """Answer a request that is not a well-formed RPC with a plain HTTP status."""

    def __init__(self, exchange: Exchange, status: int, message: bytes, grpc_over_http1: bool = False) -> None:
        self.exchange = exchange
        self.status = status
        self.message = message
        self.grpc_over_http1 = grpc_over_http1
        self.done = False

    def body_received(self, data: bytes) -> None:
        pass

    def body_complete(self) -> None:
        if self.done:
            return
        self.done = True
        if self.grpc_over_http1:
            unsupported_transport(self.exchange)
            return
        body = self.message + b"\n"
        self.exchange.send_headers(
            self.status, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        )
        self.exchange.send_data(body, end_stream=True)

    def aborted(self) -> None:
        self.done = True


class _Preflight(_Refusal):
    """A CORS preflight for an RPC path."""

    def __init__(self, app: RpcApplication, exchange: Exchange) -> None:
        super().__init__(exchange, 204, b"")
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
