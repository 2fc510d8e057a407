"""gzip for messages and bodies, with decompressed size bounded."""

from __future__ import annotations

import gzip
import zlib

from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError

SUPPORTED = ("gzip", "identity")
COMPRESS_MIN_BYTES = 1024
"""Smaller messages are sent uncompressed: gzip costs more than it saves there."""


def accepts_gzip(header: str | None) -> bool:
    """Whether an accept-encoding style header lists gzip."""
    return bool(header) and "gzip" in [p.split(";")[0].strip() for p in header.split(",")]  # type: ignore[union-attr]


def check_encoding(name: str | None) -> str | None:
    """``None`` for identity; raise UNIMPLEMENTED for an encoding we do not speak."""
    if not name or name == "identity":
        return None
    if name != "gzip":
        raise RpcError(Code.UNIMPLEMENTED, f"unsupported compression {name!r}", {"grpc-accept-encoding": "gzip"})
    return name


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data``; more than ``limit`` bytes out is RESOURCE_EXHAUSTED."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error:
        raise RpcError(Code.INVALID_ARGUMENT, "malformed gzip data") from None
    if len(out) > limit:
        raise RpcError(Code.RESOURCE_EXHAUSTED, f"decompressed message exceeds the limit of {limit} bytes")
    if not d.eof:
        raise RpcError(Code.INVALID_ARGUMENT, "truncated gzip data")
    if d.unused_data:
        # A second gzip member (or junk) after the first: refuse rather than drop it silently.
        raise RpcError(Code.INVALID_ARGUMENT, "unexpected data after the gzip stream")
    return out


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)
