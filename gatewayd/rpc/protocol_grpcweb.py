"""gRPC-Web (PROTOCOL-WEB.md): binary and base64 text, trailers in a 0x80 frame."""

from __future__ import annotations

from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import encode_base64_chunk, encode_grpc_web_trailers
from gatewayd.rpc.protocol_grpc import status_pairs
from gatewayd.rpc.wire import WireProtocol
from gatewayd.transport.exchange import Exchange, HeaderList

_ACCEPT = (b"grpc-accept-encoding", b"gzip")
_GZIP = (b"grpc-encoding", b"gzip")
_OK_TRAILER_FRAME = encode_grpc_web_trailers([("grpc-status", "0")])


def _trailer_frame(error: RpcError | None) -> bytes:
    if error is None:
        return _OK_TRAILER_FRAME
    return encode_grpc_web_trailers((k.decode(), v.decode()) for k, v in status_pairs(error))


class GrpcWeb(WireProtocol):
    name = "grpc-web"

    def _wire(self, data: bytes) -> bytes:
        return data

    def _headers(self, extra: HeaderList) -> HeaderList:
        headers = [self.content_type_header, _ACCEPT]
        if self.response_gzip:
            headers.append(_GZIP)
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
            headers = [self.content_type_header, *extra]
            exchange.send_headers(200, headers + status_pairs(error), end_stream=True)


class GrpcWebText(GrpcWeb):
    """``application/grpc-web-text``: every flush base64-encoded on its own."""

    name = "grpc-web-text"
    text = True

    def _wire(self, data: bytes) -> bytes:
        return encode_base64_chunk(data)

