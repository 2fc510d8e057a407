"""gRPC over HTTP/2 (PROTOCOL-HTTP2.md): framed messages, the status in trailers.

Server side: ``Grpc``, refused over HTTP/1.1. The status codec, the one place a
gRPC status is written (``status_headers``) and read (``decode_status``), is
shared by gRPC-Web and by every client: ``rpc.client`` (gRPC over h2),
``gatewayd.client`` and ``gatewayd.testing``.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.rpc import details
from gatewayd.rpc.codes import Code, code_for_http_status
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import decode_grpc_message, encode_grpc_message
from gatewayd.rpc.wire import Refusal, WireProtocol, status_metadata
from gatewayd.transport.exchange import Exchange, HeaderList

CONTENT_TYPE = "application/grpc"
_ACCEPT = (b"grpc-accept-encoding", b"gzip, identity")
_GZIP = (b"grpc-encoding", b"gzip")
_OK_TRAILERS: HeaderList = [(b"grpc-status", b"0")]

#: Fields that are the status itself, gRPC's own or HTTP's: not status metadata.
_NOT_METADATA = frozenset({"grpc-status", "grpc-message", "grpc-status-details-bin", "grpc-encoding",
                           "grpc-accept-encoding", "content-type", "content-length", "date", "server"})


# --- the status codec ------------------------------------------------------------------


def status_headers(error: RpcError | None) -> HeaderList:
    """``grpc-status``, ``grpc-message`` (percent-encoded), ``grpc-status-details-bin`` when the
    error has details, and the error's metadata.

    ``grpc-status-details-bin`` is a ``google.rpc.Status`` with the same code and message
    and the details packed in ``Any``, base64 without padding (binary metadata).
    """
    if error is None:
        return _OK_TRAILERS
    pairs = [(b"grpc-status", b"%d" % error.code)]
    if error.message:
        pairs.append((b"grpc-message", encode_grpc_message(error.message).encode("ascii")))
    if error.details:
        status = details.encode_status(error.code, error.message, error.details)
        pairs.append((b"grpc-status-details-bin", details.b64encode_unpadded(status).encode("ascii")))
    return pairs + status_metadata(error)


def decode_status(fields: Mapping[str, str], http_status: int = 200) -> RpcError | None:
    """The outcome a response reports: ``None`` for OK, else the status as an ``RpcError``.

    ``fields`` are the trailers (or the headers of a trailers-only response),
    lowercase names. The rules of PROTOCOL-HTTP2.md: a non-200 HTTP status maps
    to a code by gRPC's table; a missing ``grpc-status`` is INTERNAL, a
    malformed one UNKNOWN, a number outside the known codes UNKNOWN too. The
    details of ``grpc-status-details-bin`` become the error's ``details`` (as
    ``Any``; a malformed value is ignored: the status stands without them). The
    remaining fields are the status metadata.
    """
    if http_status != 200:
        return RpcError(code_for_http_status(http_status), f"HTTP status {http_status} without gRPC status")
    raw = fields.get("grpc-status")
    if raw is None:
        return RpcError(Code.INTERNAL, "server ended the stream without grpc-status")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10):
        return RpcError(Code.UNKNOWN, f"malformed grpc-status {raw!r}")
    value = int(raw)
    if value == 0:
        return None
    message = decode_grpc_message(fields.get("grpc-message", ""))
    try:
        code = Code(value)
    except ValueError:
        code, message = Code.UNKNOWN, f"grpc-status {value}: {message}"
    metadata = {k: v for k, v in fields.items() if k not in _NOT_METADATA and not k.startswith(":")}
    return RpcError(code, message, metadata, _details(fields.get("grpc-status-details-bin")))


def _details(value: str | None) -> tuple[details.AnyProto, ...]:
    if not value:
        return ()
    try:
        return details.decode_status_details(details.b64decode_any(value))
    except ValueError:
        return ()


# --- client side: the request ------------------------------------------------------------


def encode_timeout(timeout_s: float) -> str:
    """A ``grpc-timeout`` value for ``timeout_s`` seconds (milliseconds, at least 1)."""
    return f"{max(1, int(timeout_s * 1000))}m"


# --- server side ------------------------------------------------------------------------


class Grpc(WireProtocol):
    name = "grpc"
    content_types = (CONTENT_TYPE, "application/grpc+proto")

    @classmethod
    def refuse_transport(cls, http2: bool) -> Refusal | None:
        if http2:
            return None
        # gRPC needs HTTP/2; over HTTP/1.1 say so in the status the client reads.
        error = RpcError(Code.UNIMPLEMENTED, "gRPC requires HTTP/2; use gRPC-Web or Connect over HTTP/1.1")
        return Refusal(505, [(b"content-type", CONTENT_TYPE.encode()), *status_headers(error)])

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
            exchange.send_trailers(status_headers(error))
        else:
            # Trailers-only: one HEADERS frame with END_STREAM.
            headers = [self.content_type_header, _ACCEPT, *extra]
            exchange.send_headers(200, headers + status_headers(error), end_stream=True)


CODECS: tuple[type[WireProtocol], ...] = (Grpc,)
