"""Sans-I/O framing shared by the three protocols: pure functions and small parsers.

Nothing here touches a transport. Decoders raise only ``RpcError``.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError

FLAG_COMPRESSED = 0x01
FLAG_CONNECT_END_STREAM = 0x02
FLAG_GRPC_WEB_TRAILERS = 0x80

_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size


def encode_frame(payload: bytes, flags: int = 0) -> bytes:
    """A length-prefixed message: flags byte, 4-byte big-endian length, payload."""
    return _HEADER.pack(flags, len(payload)) + payload


class FrameDecoder:
    """Split a byte stream into ``(flags, payload)`` messages, fed in arbitrary chunks.

    A declared length over ``max_message_bytes`` raises RESOURCE_EXHAUSTED at
    once, before the payload is buffered.
    """

    __slots__ = ("_buffer", "max_message_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self._buffer = bytearray()
        self.max_message_bytes = max_message_bytes

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return every message now complete, in order."""
        buf = self._buffer
        buf += data
        out: list[tuple[int, bytes]] = []
        offset = 0
        while len(buf) - offset >= HEADER_SIZE:
            flags, length = _HEADER.unpack_from(buf, offset)
            if length > self.max_message_bytes:
                raise RpcError(
                    Code.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes exceeds the limit of {self.max_message_bytes}",
                )
            end = offset + HEADER_SIZE + length
            if len(buf) < end:
                break
            out.append((flags, bytes(buf[offset + HEADER_SIZE : end])))
            offset = end
        if offset:
            del buf[:offset]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held (non-zero at end of stream means truncation)."""
        return len(self._buffer)


def decode_single_frame(body: bytes, max_message_bytes: int) -> tuple[int, bytes]:
    """Exactly one message from a complete request body (unary and server-streaming requests)."""
    decoder = FrameDecoder(max_message_bytes)
    frames = decoder.feed(body)
    if decoder.pending:
        raise RpcError(Code.INVALID_ARGUMENT, "truncated message frame")
    if len(frames) != 1:
        raise RpcError(Code.UNIMPLEMENTED if frames else Code.INVALID_ARGUMENT,
                       f"expected exactly one request message, got {len(frames)}")
    return frames[0]


# --- grpc-message percent-encoding (PROTOCOL-HTTP2.md) ---------------------------

_GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def encode_grpc_message(message: str) -> str:
    """Percent-encode a status message: printable ASCII except ``%`` passes through."""
    return quote(message.encode("utf-8"), safe=_GRPC_MESSAGE_SAFE)


def decode_grpc_message(value: str) -> str:
    """Undo ``encode_grpc_message``; malformed escapes are kept as they are."""
    return unquote(value, errors="replace")


# --- gRPC-Web trailers -----------------------------------------------------------

def encode_grpc_web_trailers(trailers: Iterable[tuple[str, str]]) -> bytes:
    """The gRPC-Web trailer frame: flag 0x80, then ``name: value\\r\\n`` lines."""
    block = "".join(f"{k}: {v}\r\n" for k, v in trailers).encode("utf-8")
    return encode_frame(block, FLAG_GRPC_WEB_TRAILERS)


def decode_grpc_web_trailers(payload: bytes) -> dict[str, str]:
    """Parse a trailer frame's payload into lowercase names and values."""
    out: dict[str, str] = {}
    for line in payload.decode("utf-8", "replace").split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise RpcError(Code.INTERNAL, "malformed gRPC-Web trailer line")
        out[name.strip().lower()] = value.strip()
    return out


def split_grpc_web_body(body: bytes, max_message_bytes: int) -> tuple[list[bytes], dict[str, str]]:
    """A whole gRPC-Web response body: its messages and its trailers (client and test side)."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    for flags, payload in FrameDecoder(max_message_bytes).feed(body):
        if flags & FLAG_GRPC_WEB_TRAILERS:
            trailers = decode_grpc_web_trailers(payload)
        else:
            messages.append(payload)
    return messages, trailers


# --- gRPC-Web text (base64) ------------------------------------------------------

class Base64StreamDecoder:
    """Decode ``application/grpc-web-text`` bodies fed in arbitrary chunks.

    Each writer flush is encoded on its own, so padding may appear mid-stream:
    the body is a concatenation of padded base64 segments. Decoding whole
    4-character groups as they complete handles both.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        data = self._pending + bytes(data).translate(None, b" \t\r\n")
        whole = len(data) - len(data) % 4
        self._pending = data[whole:]
        try:
            return base64.b64decode(data[:whole], validate=True) if whole else b""
        except (binascii.Error, ValueError):
            # b64decode stops at the first padded group, so split at padding.
            return self._decode_segments(data[:whole])

    @staticmethod
    def _decode_segments(data: bytes) -> bytes:
        out = bytearray()
        for i in range(0, len(data), 4):
            group = data[i : i + 4]
            try:
                out += base64.b64decode(group, validate=True)
            except (binascii.Error, ValueError):
                raise RpcError(Code.INVALID_ARGUMENT, "malformed base64 in grpc-web-text body") from None
        return bytes(out)

    @property
    def pending(self) -> int:
        return len(self._pending)


def encode_base64_chunk(data: bytes) -> bytes:
    """One flush of a grpc-web-text response, padded on its own."""
    return base64.b64encode(data)


# --- deadlines -------------------------------------------------------------------

_GRPC_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str) -> float:
    """Seconds from a ``grpc-timeout`` header (1-8 digits and a unit)."""
    digits, unit = value[:-1], value[-1:]
    if not (1 <= len(digits) <= 8 and digits.isascii() and digits.isdigit()) or unit not in _GRPC_TIMEOUT_UNITS:
        raise RpcError(Code.INVALID_ARGUMENT, "malformed grpc-timeout")
    return int(digits) * _GRPC_TIMEOUT_UNITS[unit]


def parse_connect_timeout(value: str) -> float:
    """Seconds from a ``Connect-Timeout-Ms`` header (at most 10 digits)."""
    if not (1 <= len(value) <= 10 and value.isascii() and value.isdigit()):
        raise RpcError(Code.INVALID_ARGUMENT, "malformed connect-timeout-ms")
    return int(value) / 1000.0


def metadata_pairs(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """Metadata as ``(name, value)`` pairs, binary (``-bin``) values already base64."""
    return list(metadata.items())
