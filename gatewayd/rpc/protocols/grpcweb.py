"""gRPC-Web (PROTOCOL-WEB.md): binary and base64 text, trailers in a 0x80 frame.

The status is gRPC's (``grpc.status_headers`` / ``grpc.decode_status``); only
where it travels differs: in the response headers of a trailers-only answer,
else in the trailer frame at the end of the body.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import decode_grpc_web_trailers, encode_base64_chunk, encode_grpc_web_trailers
from gatewayd.rpc.protocols.grpc import decode_status, encode_timeout, status_headers
from gatewayd.rpc.wire import WireProtocol
from gatewayd.transport.exchange import Exchange, HeaderList

CONTENT_TYPE = "application/grpc-web+proto"
_ACCEPT = (b"grpc-accept-encoding", b"gzip")
_GZIP = (b"grpc-encoding", b"gzip")
_OK_TRAILER_FRAME = encode_grpc_web_trailers([("grpc-status", "0")])


def _trailer_frame(error: RpcError | None) -> bytes:
    if error is None:
        return _OK_TRAILER_FRAME
    return encode_grpc_web_trailers((k.decode(), v.decode()) for k, v in status_headers(error))


# --- client side ------------------------------------------------------------------------


def request_headers(timeout_s: float | None) -> dict[str, str]:
    """The headers of a binary gRPC-Web request."""
    headers = {"content-type": CONTENT_TYPE, "accept": CONTENT_TYPE, "x-grpc-web": "1",
               "x-user-agent": "gatewayd-client"}
    if timeout_s:
        headers["grpc-timeout"] = encode_timeout(timeout_s)
    return headers


def decode_trailer_frame(payload: bytes) -> RpcError | None:
    """The status in a trailer frame's payload (``None`` for OK); a malformed frame is INTERNAL."""
    try:
        fields = decode_grpc_web_trailers(payload)
    except RpcError as e:
        return e
    return decode_status(fields)


def status_in_headers(headers: Mapping[str, str], http_status: int) -> bool:
    """Whether the response headers settle the call: a trailers-only answer, or a non-200 status."""
    return "grpc-status" in headers or http_status != 200


def headers_status(headers: Mapping[str, str], http_status: int) -> RpcError | None:
    """The status such headers report: their own (whatever the HTTP status), else the HTTP status's."""
    return decode_status(headers, 200 if "grpc-status" in headers else http_status)


# --- server side ------------------------------------------------------------------------


class GrpcWeb(WireProtocol):
    name = "grpc-web"
    content_types = ("application/grpc-web", CONTENT_TYPE)

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
            exchange.send_headers(200, headers + status_headers(error), end_stream=True)


class GrpcWebText(GrpcWeb):
    """``application/grpc-web-text``: every flush base64-encoded on its own."""

    name = "grpc-web-text"
    content_types = ("application/grpc-web-text", "application/grpc-web-text+proto")
    text = True

    def _wire(self, data: bytes) -> bytes:
        return encode_base64_chunk(data)


CODECS: tuple[type[WireProtocol], ...] = (GrpcWeb, GrpcWebText)
