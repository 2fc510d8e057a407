"""gRPC over HTTP/2 (PROTOCOL-HTTP2.md): framed messages, status in trailers."""

from __future__ import annotations

from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import encode_grpc_message
from gatewayd.rpc.wire import WireProtocol, status_metadata
from gatewayd.transport.exchange import Exchange, HeaderList

_ACCEPT = (b"grpc-accept-encoding", b"gzip, identity")
_GZIP = (b"grpc-encoding", b"gzip")
_OK_TRAILERS: HeaderList = [(b"grpc-status", b"0")]


def status_pairs(error: RpcError | None) -> HeaderList:
    """``grpc-status``, ``grpc-message`` (percent-encoded) and the error's metadata."""
    if error is None:
        return _OK_TRAILERS
    pairs = [(b"grpc-status", b"%d" % error.code)]
    if error.message:
        pairs.append((b"grpc-message", encode_grpc_message(error.message).encode("ascii")))
    return pairs + status_metadata(error)


class Grpc(WireProtocol):
    name = "grpc"

    def _headers(self, extra: HeaderList) -> HeaderList:
        headers = [self.content_type_header, _ACCEPT]
        if self.response_gzip:
            headers.append(_GZIP)
        return headers + extra

    def write_unary(self, exchange: Exchange, payload: bytes, extra: HeaderList) -> None:
        exchange.send_headers(200, self._headers(extra))
        exchange.send_data(self.frame_message(payload))
        exchange.send_trailers(_OK_TRAILERS)

    def start_stream(self, exchange: Exchange, extra: HeaderList) -> None:
        exchange.send_headers(200, self._headers(extra))

    def end_stream(self, exchange: Exchange) -> None:
        exchange.send_trailers(_OK_TRAILERS)

    def write_error(self, exchange: Exchange, error: RpcError, started: bool, extra: HeaderList) -> None:
        if started:
            exchange.send_trailers(status_pairs(error))
        else:
            # Trailers-only: one HEADERS frame with END_STREAM.
            headers = [self.content_type_header, _ACCEPT, *extra]
            exchange.send_headers(200, headers + status_pairs(error), end_stream=True)


def unsupported_transport(exchange: Exchange) -> None:
    """gRPC needs HTTP/2; over HTTP/1.1 say so in the status the client reads."""
    error = RpcError(Code.UNIMPLEMENTED, "gRPC requires HTTP/2; use gRPC-Web or Connect over HTTP/1.1")
    exchange.send_headers(505, [(b"content-type", b"application/grpc"), *status_pairs(error)], end_stream=True)
