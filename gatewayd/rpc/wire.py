"""What the three wire protocols have in common, and how one is chosen.

A ``WireProtocol`` instance lives for one call. It reads the request's
headers, unwraps the request message from the body, and writes the response:
a unary answer, a stream of messages, or an error, each the way its
specification says. ``ServerCall`` (server.py) drives it and knows nothing of
any one protocol.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.rpc import compression
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FLAG_COMPRESSED, encode_frame, parse_grpc_timeout
from gatewayd.transport.exchange import Exchange, HeaderList


class WireProtocol:
    """Base of the per-protocol codecs; subclasses fill in the specifics."""

    name = ""
    framed = True  # request body is length-prefixed messages (all but Connect unary)
    text = False  # gRPC-Web text: base64 bodies
    json_content_type = ""  # the content type that selects protobuf JSON, if the protocol has one
    # The headers that carry, in this protocol: the deadline, the request's compression,
    # and the compressions the client accepts for the response.
    timeout_header = "grpc-timeout"
    encoding_header = "grpc-encoding"
    accept_encoding_header = "grpc-accept-encoding"
    parse_timeout = staticmethod(parse_grpc_timeout)

    def __init__(self, headers: Mapping[str, str], content_type: str) -> None:
        self.headers = headers
        self.content_type = content_type
        self.content_type_header = (b"content-type", content_type.encode("latin-1"))
        self.json = content_type == self.json_content_type
        accept = headers.get(self.accept_encoding_header)
        self.response_gzip = accept is not None and compression.accepts_gzip(accept)

    # -- request ------------------------------------------------------------------

    def timeout(self) -> float | None:
        """The call's timeout in seconds, or ``None``; a malformed header raises ``RpcError``."""
        value = self.headers.get(self.timeout_header)
        return self.parse_timeout(value) if value else None

    def request_encoding(self) -> str | None:
        """The request compression, validated; ``None`` for identity."""
        return compression.check_encoding(self.headers.get(self.encoding_header))

    def unwrap_frame(self, flags: int, payload: bytes, limit: int) -> bytes:
        """The message inside one request frame, decompressed."""
        if flags & FLAG_COMPRESSED:
            if self.request_encoding() is None:
                raise RpcError(Code.INTERNAL, "compressed message without a message encoding")
            return compression.gunzip(payload, limit)
        return payload

    # -- response -----------------------------------------------------------------

    def frame_message(self, payload: bytes) -> bytes:
        """One response message as it goes on the wire (streaming and framed unary)."""
        if self.response_gzip and len(payload) >= compression.COMPRESS_MIN_BYTES:
            return encode_frame(compression.gzip_bytes(payload), FLAG_COMPRESSED)
        return encode_frame(payload)

    @property
    def frame_cache_key(self) -> str | None:
        """Key under which a framed ``Encoded`` message may be shared between streams."""
        return None if self.response_gzip else self.name + ("+json" if self.json else "")

    def write_unary(self, exchange: Exchange, payload: bytes, extra: HeaderList) -> None:
        raise NotImplementedError

    def start_stream(self, exchange: Exchange, extra: HeaderList) -> None:
        raise NotImplementedError

    def write_error(self, exchange: Exchange, error: RpcError, started: bool, extra: HeaderList) -> None:
        """End the call with ``error``; ``started`` says whether response headers went out."""
        raise NotImplementedError

    def end_stream(self, exchange: Exchange) -> None:
        """End a stream that succeeded."""
        raise NotImplementedError


def status_metadata(error: RpcError | None) -> HeaderList:
    """Extra metadata an error carries (``retry-after`` and the like) as header pairs."""
    if error is None or not error.metadata:
        return []
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.metadata.items()]


def rpc_path_shape(path: str) -> bool:
    """``/package.Service/Method``: the only paths the RPC surface owns."""
    parts = path.split("/")
    return len(parts) == 3 and not parts[0] and "." in parts[1] and bool(parts[2])


_BY_CONTENT_TYPE: dict[str, type[WireProtocol]] = {}


def _content_types() -> dict[str, type[WireProtocol]]:
    # Filled on first use: the protocol modules import this one.
    if not _BY_CONTENT_TYPE:
        from gatewayd.rpc.protocol_connect import ConnectStreaming
        from gatewayd.rpc.protocol_grpc import Grpc
        from gatewayd.rpc.protocol_grpcweb import GrpcWeb, GrpcWebText

        for protocol, content_types in (
            (Grpc, ("application/grpc", "application/grpc+proto")),
            (GrpcWeb, ("application/grpc-web", "application/grpc-web+proto")),
            (GrpcWebText, ("application/grpc-web-text", "application/grpc-web-text+proto")),
            (ConnectStreaming, ("application/connect+proto", "application/connect+json")),
        ):
            for content_type in content_types:
                _BY_CONTENT_TYPE[content_type] = protocol
    return _BY_CONTENT_TYPE


def select_protocol(method: str, path: str, headers: Mapping[str, str], http2: bool) -> type[WireProtocol] | None:
    """The protocol class for a request, or ``None`` when it is not an RPC at all.

    Content types are matched exactly (parameters such as ``charset`` aside):
    ``application/grpcfoo`` is no gRPC. Connect unary's ``application/proto`` and
    ``application/json`` are RPCs only on ``/package.Service/Method`` paths.
    """
    ct = headers.get("content-type", "").split(";")[0].strip().lower()
    protocol = _content_types().get(ct)
    if protocol is not None:
        return protocol
    if ct in ("application/proto", "application/json") and rpc_path_shape(path):
        from gatewayd.rpc.protocol_connect import ConnectUnary

        return ConnectUnary
    return None
