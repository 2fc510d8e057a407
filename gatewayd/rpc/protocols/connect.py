"""The Connect protocol: unary (bare bodies, JSON errors, HTTP statuses) and streaming (end-stream message).

Connect's own rules live here: the code -> HTTP status table of unary errors,
the error JSON and end-stream message (written by ``error_json`` and read by
``decode_error``, ``decode_unary_error``, ``decode_end_stream``, the one codec
the server and ``gatewayd.client`` share), and its refusals: 404 for an unknown
procedure, 415 for a unary content type on a streaming method.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gatewayd.rpc import compression, details
from gatewayd.rpc.codes import Code, code_for_http_status
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FLAG_CONNECT_END_STREAM, encode_frame, parse_connect_timeout
from gatewayd.rpc.methods import Method
from gatewayd.rpc.wire import Refusal, WireProtocol, plain_refusal, status_metadata
from gatewayd.transport.exchange import Exchange, HeaderList

_JSON = (b"content-type", b"application/json")
_ACCEPT_GZIP = (b"accept-encoding", b"gzip")
_GZIP = (b"content-encoding", b"gzip")
_END_OK = encode_frame(b"{}", FLAG_CONNECT_END_STREAM)
UNARY_CONTENT_TYPE = "application/proto"
STREAM_CONTENT_TYPE = "application/connect+proto"

# The Connect protocol reference's code -> HTTP status table.
_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

#: Response headers that are HTTP's or Connect's own, not error metadata.
_NOT_METADATA = frozenset({"content-type", "content-length", "content-encoding", "accept-encoding", "date", "server"})


def http_status(code: Code) -> int:
    """The HTTP status of a Connect unary error with ``code``."""
    return _HTTP_STATUS[code]


# --- the error codec ----------------------------------------------------------------------


def error_json(error: RpcError) -> dict[str, Any]:
    """The Connect ``Error`` object: ``code``, ``message`` when there is one, and ``details``:
    ``{"type": <message name>, "value": <unpadded base64 of the message>}`` each."""
    body: dict[str, Any] = {"code": error.code.connect_name}
    if error.message:
        body["message"] = error.message
    if error.details:
        packed = [details.pack(d) for d in error.details]
        body["details"] = [{"type": details.type_name(p), "value": details.b64encode_unpadded(p.value)}
                           for p in packed]
    return body


def decode_error(document: object) -> RpcError | None:
    """An ``Error`` object as ``RpcError``; ``None`` when it is not one (no string ``code``).

    Details become ``Any`` messages; a detail without a string ``type`` and a
    base64 ``value`` is skipped (``debug`` is never read, as the spec says).
    """
    if not isinstance(document, dict) or not isinstance(document.get("code"), str):
        return None
    message = document.get("message")
    # "ok" names no error: an error object carrying it is UNKNOWN, as any unknown code (Code.OK is 0).
    code = Code.from_connect_name(document["code"]) or Code.UNKNOWN
    return RpcError(code, message if isinstance(message, str) else "", details=_details(document.get("details")))


def _details(entries: object) -> list[details.AnyProto]:
    out = []
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("type"), str) and isinstance(entry.get("value"), str):
            try:
                out.append(details.packed(entry["type"], details.b64decode_any(entry["value"])))
            except ValueError:
                continue
    return out


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def decode_unary_error(body: bytes, status: int, headers: Mapping[str, str]) -> RpcError:
    """A non-200 unary answer: its error body, or without one a code inferred from the HTTP status.

    The response headers other than HTTP's own are the error's metadata.
    """
    error = decode_error(_json(body)) or RpcError(
        code_for_http_status(status), f"HTTP status {status} without a Connect error")
    error.metadata = {k: v for k, v in headers.items() if k not in _NOT_METADATA}
    return error


def decode_end_stream(payload: bytes) -> RpcError | None:
    """The status an end-stream message reports: ``None`` for OK; malformed is INTERNAL."""
    document = _json(payload)
    if not isinstance(document, dict):
        return RpcError(Code.INTERNAL, "malformed Connect end-stream message")
    if not document.get("error"):
        return None
    error = decode_error(document["error"]) or RpcError(Code.UNKNOWN, "")
    metadata = document.get("metadata")
    if isinstance(metadata, dict):
        error.metadata = {str(k).lower(): ",".join(map(str, v)) if isinstance(v, list) else str(v)
                          for k, v in metadata.items()}
    return error


# --- client side: the request ----------------------------------------------------------------


def request_headers(content_type: str, timeout_s: float | None = None) -> dict[str, str]:
    """The headers of a Connect request (unary or streaming, by ``content_type``)."""
    headers = {"content-type": content_type, "connect-protocol-version": "1"}
    if timeout_s:
        headers["connect-timeout-ms"] = str(max(1, int(timeout_s * 1000)))
    return headers


# --- server side -----------------------------------------------------------------------------


class _Connect(WireProtocol):
    timeout_header = "connect-timeout-ms"
    parse_timeout = staticmethod(parse_connect_timeout)

    def check_method(self, method: Method | None, path: str) -> RpcError | Refusal | None:
        if method is None:
            # Connect answers an unknown procedure with 404, whatever the codec.
            body = json.dumps({"code": Code.UNIMPLEMENTED.connect_name, "message": f"unknown method {path}"})
            return Refusal(404, [_JSON], body.encode())
        return None


class ConnectUnary(_Connect):
    name = "connect"
    content_types = (UNARY_CONTENT_TYPE, "application/json")
    rpc_path_only = True  # application/json elsewhere is just JSON
    framed = False
    json_content_type = "application/json"
    encoding_header = "content-encoding"
    accept_encoding_header = "accept-encoding"

    def check_method(self, method: Method | None, path: str) -> RpcError | Refusal | None:
        if method is not None and method.server_streaming:
            return plain_refusal(415, "unary content type for a streaming method")
        return super().check_method(method, path)

    def write_unary(self, exchange: Exchange, payload: bytes, extra: HeaderList) -> None:
        if self.response_gzip and len(payload) >= compression.COMPRESS_MIN_BYTES:
            payload = compression.gzip_bytes(payload)
            headers = [self.content_type_header, _ACCEPT_GZIP, _GZIP, (b"content-length", b"%d" % len(payload))]
        else:
            headers = [self.content_type_header, _ACCEPT_GZIP, (b"content-length", b"%d" % len(payload))]
        if extra:
            headers += extra
        exchange.send_headers(200, headers)
        exchange.send_data(payload, end_stream=True)

    def write_error(self, exchange: Exchange, error: RpcError, started: bool, extra: HeaderList) -> None:
        body = json.dumps(error_json(error), separators=(",", ":")).encode()
        headers = [_JSON, (b"content-length", b"%d" % len(body)), *status_metadata(error), *extra]
        exchange.send_headers(http_status(error.code), headers)
        exchange.send_data(body, end_stream=True)


class ConnectStreaming(_Connect):
    name = "connect-stream"
    content_types = (STREAM_CONTENT_TYPE, "application/connect+json")
    json_content_type = "application/connect+json"
    encoding_header = "connect-content-encoding"
    accept_encoding_header = "connect-accept-encoding"

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


CODECS: tuple[type[WireProtocol], ...] = (ConnectUnary, ConnectStreaming)
