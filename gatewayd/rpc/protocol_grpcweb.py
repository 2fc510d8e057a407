"""gRPC-Web (PROTOCOL-WEB.md): binary and base64 text, trailers in a 0x80 frame."""

from __future__ import annotations

from gatewayd.rpc import compression
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import encode_base64_chunk, encode_grpc_web_trailers, parse_grpc_timeout
from gatewayd.rpc.protocol_grpc import status_pairs
from gatewayd.rpc.wire import WireProtocol
from gatewayd.transport.exchange import Exchange, HeaderList

_OK_TRAILER_FRAME = encode_grpc_web_trailers([("grpc-status", "0")])


def _trailer_frame(error: RpcError | None) -> bytes:
    if error is None:
        return _OK_TRAILER_FRAME
    return encode_grpc_web_trailers((k.decode(), v.decode()) for k, v in status_pairs(error))


class GrpcWeb(WireProtocol):
    name = "grpc-web"

    def __init__(self, headers: dict[str, str], content_type: str) -> None:
        super().__init__(headers, content_type)
        self.response_gzip = compression.accepts_gzip(headers.get("grpc-accept-encoding"))

    def timeout(self) -> float | None:
        value = self.headers.get("grpc-timeout")
        return parse_grpc_timeout(value) if value else None

    def request_encoding(self) -> str | None:
        return compression.check_encoding(self.headers.get("grpc-encoding"))

    def _wire(self, data: bytes) -> bytes:
        return data

    def _headers(self, extra: HeaderList) -> HeaderList:
        headers = [(b"content-type", self.content_type.encode("latin-1")), (b"grpc-accept-encoding", b"gzip")]
        if self.response_gzip:
            headers.append((b"grpc-encoding", b"gzip"))
        return headers + extra

    def frame_message(self, payload: bytes) -> bytes:
        return self._wire(super().frame_message(payload))

    def write_unary(self, exchange: Exchange, payload: bytes, extra: HeaderList) -> None:
        exchange.send_headers(200, self._headers(extra))
        framed = super().frame_message(payload)
        if self.text:
            exchange.send_data(self._wire(framed) + self._wire(_OK_TRAILER_FRAME), end_stream=True)
        else:
            exchange.send_data(framed + _OK_TRAILER_FRAME, end_stream=True)

    def start_stream(self, exchange: Exchange, extra: HeaderList) -> None:
        exchange.send_headers(200, self._headers(extra))

    def end_stream(self, exchange: Exchange) -> None:
        exchange.send_data(self._wire(_OK_TRAILER_FRAME), end_stream=True)

    def write_error(self, exchange: Exchange, error: RpcError, started: bool, extra: HeaderList) -> None:
        if started:
            exchange.send_data(self._wire(_trailer_frame(error)), end_stream=True)
        else:
            # Trailers-only: the status travels in the response headers, the body is empty.
            headers = [(b"content-type", self.content_type.encode("latin-1")), *extra]
            exchange.send_headers(200, headers + status_pairs(error), end_stream=True)


class GrpcWebText(GrpcWeb):
    """``application/grpc-web-text``: every flush base64-encoded on its own."""

    name = "grpc-web-text"
    text = True

    def _wire(self, data: bytes) -> bytes:
        return encode_base64_chunk(data)

