"""The wire protocols the server speaks, and how a request picks one.

Each protocol is one module here whose ``CODECS`` are its ``WireProtocol``
classes, each declaring its content types and refusals. A new protocol is a new
module and one entry in ``_MODULES``. What no single protocol owns is here:
a non-POST request to an RPC (a served path, or any RPC content type) is 405
with ``Allow: POST``: Connect allows GET only for methods marked free of side
effects, and no method here is; a POST to an RPC path with a content type no
protocol serves is 415 (Connect and gRPC both say so).
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.rpc.protocols import connect, grpc, grpcweb
from gatewayd.rpc.wire import Refusal, WireProtocol, media_type, plain_refusal, rpc_path_shape

_MODULES = (grpc, grpcweb, connect)

BY_CONTENT_TYPE: dict[str, type[WireProtocol]] = {
    content_type: codec for module in _MODULES for codec in module.CODECS for content_type in codec.content_types
}

METHOD_NOT_ALLOWED = plain_refusal(405, "RPCs are POST requests", [(b"allow", b"POST")])
UNSUPPORTED_MEDIA_TYPE = plain_refusal(415, "unsupported content type for an RPC")


def protocol_for(path: str, headers: Mapping[str, str]) -> type[WireProtocol] | None:
    """The protocol class a request's content type selects, or ``None``.

    Content types are matched exactly (parameters such as ``charset`` aside):
    ``application/grpcfoo`` is no gRPC. Connect unary's ``application/proto`` and
    ``application/json`` are RPCs only on ``/package.Service/Method`` paths.
    """
    codec = BY_CONTENT_TYPE.get(media_type(headers))
    if codec is not None and codec.rpc_path_only and not rpc_path_shape(path):
        return None
    return codec


def select(method: str, path: str, headers: Mapping[str, str], http2: bool,
           known_path: bool) -> WireProtocol | Refusal | None:
    """The codec for one call, a refusal, or ``None`` when the request is no RPC at all.

    ``known_path``: the method table serves ``path``. A GET (or any non-POST)
    there is refused even without a content type: it names an RPC.
    """
    codec = protocol_for(path, headers)
    if codec is None:
        if not rpc_path_shape(path):
            return None
        if method == "POST":
            return UNSUPPORTED_MEDIA_TYPE
        return METHOD_NOT_ALLOWED if known_path else None
    if method != "POST":
        return METHOD_NOT_ALLOWED
    refusal = codec.refuse_transport(http2)
    if refusal is not None:
        return refusal
    return codec(headers, media_type(headers))


__all__ = ["BY_CONTENT_TYPE", "protocol_for", "select"]
