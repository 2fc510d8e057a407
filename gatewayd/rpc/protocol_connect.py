"""The Connect protocol: unary (raw bodies, JSON errors) and streaming (end-stream message)."""

from __future__ import annotations

import json

from gatewayd.rpc import compression
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FLAG_CONNECT_END_STREAM, encode_frame, parse_connect_timeout
from gatewayd.rpc.wire import WireProtocol, status_metadata
from gatewayd.transport.exchange import Exchange, HeaderList

_JSON = (b"content-type", b"application/json")
_END_OK = encode_frame(b"{}", FLAG_CONNECT_END_STREAM)


def error_json(error: RpcError) -> dict[str, str]:
    body = {"code": error.code.connect_name}
    if error.message:
        body["message"] = error.message
    return body


class ConnectUnary(WireProtocol):
    name = "connect"
    framed = False
    json_content_type = "application/json"
    timeout_header = "connect-timeout-ms"
    encoding_header = "content-encoding"
    accept_encoding_header = "accept-encoding"
    parse_timeout = staticmethod(parse_connect_timeout)

    def write_unary(self, exchange: Exchange, payload: bytes, extra: HeaderList) -> None:
        headers = [self.content_type_header, (b"accept-encoding", b"gzip")]
        if self.response_gzip and len(payload) >= compression.COMPRESS_MIN_BYTES:
            payload = compression.gzip_bytes(payload)
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", b"%d" % len(payload)))
        exchange.send_headers(200, headers + extra)
        exchange.send_data(payload, end_stream=True)

    def write_error(self, exchange: Exchange, error: RpcError, started: bool, extra: HeaderList) -> None:
        body = json.dumps(error_json(error), separators=(",", ":")).encode()
        headers = [_JSON, (b"content-length", b"%d" % len(body)), *status_metadata(error), *extra]
        exchange.send_headers(error.code.http_status, headers)
        exchange.send_data(body, end_stream=True)


class ConnectStreaming(WireProtocol):
    name = "connect-stream"
    json_content_type = "application/connect+json"
    timeout_header = "connect-timeout-ms"
    encoding_header = "connect-content-encoding"
    accept_encoding_header = "connect-accept-encoding"
    parse_timeout = staticmethod(parse_connect_timeout)

    def start_stream(self, exchange: Exchange, extra: HeaderList) -> None:
        headers = [self.content_type_header, (b"connect-accept-encoding", b"gzip")]
        if self.response_gzip:
            headers.append((b"connect-content-encoding", b"gzip"))
        exchange.send_headers(200, headers + extra)

    def end_stream(self, exchange: Exchange) -> None:
        exchange.send_data(_END_OK, end_stream=True)

    def write_error(self, exchange: Exchange, error: RpcError, started: bool, extra: HeaderList) -> None:
        if not started:
            self.start_stream(exchange, extra)
        end: dict[str, object] = {"error": error_json(error)}
        if error.metadata:
            end["metadata"] = {k: [v] for k, v in error.metadata.items()}
        exchange.send_data(encode_frame(json.dumps(end).encode(), FLAG_CONNECT_END_STREAM), end_stream=True)

    def write_unary(self, exchange: Exchange, payload: bytes, extra: HeaderList) -> None:
        # A unary method called with the streaming protocol: one message, then end-stream.
        self.start_stream(exchange, extra)
        exchange.send_data(self.frame_message(payload) + _END_OK, end_stream=True)
