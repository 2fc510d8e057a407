"""What every wire protocol provides, the server side of connect-go's ``protocol.go``.

A ``WireProtocol`` class is one wire format: it declares the content types it
serves and its own refusals (``refuse_transport``, ``check_method``). An
instance lives for one call: it reads the request's headers, unwraps the
request message from the body, and writes the response (a unary answer, a
stream of messages, or an error) the way its specification says.
``ServerCall`` (server.py) drives it and knows nothing of any one protocol.
The protocols themselves are the modules of ``rpc/protocols/``; their registry
(``rpc/protocols/__init__.py``) picks one per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from gatewayd.rpc import compression
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FLAG_COMPRESSED, encode_frame, parse_grpc_timeout
from gatewayd.rpc.methods import Method
from gatewayd.transport.exchange import Exchange, HeaderList


@dataclass(frozen=True, slots=True)
class Refusal:
    """A plain HTTP answer to a request that cannot become a call (405, 415, 404...)."""

    status: int
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = b""

    def write(self, exchange: Exchange, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        headers = [*self.headers, (b"content-length", b"%d" % len(self.body)), *extra]
        if self.body:
            exchange.send_headers(self.status, headers)
            exchange.send_data(self.body, end_stream=True)
        else:
            exchange.send_headers(self.status, headers, end_stream=True)


def plain_refusal(status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> Refusal:
    """A refusal with a one-line ``text/plain`` body."""
    return Refusal(status, [(b"content-type", b"text/plain"), *headers], message.encode() + b"\n")


class WireProtocol:
    """Base of the per-protocol codecs; subclasses fill in the specifics."""

    name = ""
    content_types: ClassVar[tuple[str, ...]] = ()  # the media types (no parameters) this class serves
    rpc_path_only = False  # the content types are RPCs only on /package.Service/Method paths
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
        # The key under which a framed ``Encoded`` message is shared between streams:
        # ``frame_message`` depends only on the protocol, JSON or binary, and whether the
        # client takes gzip (most gRPC clients say they do), so streams that agree on the
        # three share one frame, compressed once when it is compressed at all.
        self.frame_cache_key = self.name + ("+json" if self.json else "") + ("+gzip" if self.response_gzip else "")

    # -- refusals, before a call starts -------------------------------------------

    @classmethod
    def refuse_transport(cls, http2: bool) -> Refusal | None:
        """The answer when this protocol cannot run over the request's HTTP version."""
        return None

    def check_method(self, method: Method | None, path: str) -> RpcError | Refusal | None:
        """Whether a call to ``method`` (``None``: no such path) can go ahead in this protocol."""
        if method is None:
            return RpcError(Code.UNIMPLEMENTED, f"unknown method {path}")
        return None

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


def media_type(headers: Mapping[str, str]) -> str:
    """The request's content type without parameters, lowercase (``""`` when absent)."""
    return headers.get("content-type", "").split(";")[0].strip().lower()
