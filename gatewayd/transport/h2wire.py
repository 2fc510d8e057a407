"""Sans-I/O helpers around h2 for the server's hot paths: request headers in one pass,
DATA frames without h2's per-call bookkeeping."""

from __future__ import annotations

import re
import struct
from typing import Any

import h2.connection
from h2.connection import ConnectionState
from h2.stream import StreamState

_PSEUDO = frozenset((b":method", b":path", b":scheme", b":authority"))
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_FORBIDDEN_VALUE_BYTES = re.compile(rb"[\x00\r\n]")
_FORBIDDEN_NAME_BYTES = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")


def parse_request_headers(raw: list[tuple[bytes, bytes]]) -> tuple[str, str, dict[str, str]] | None:
    """Method, path and headers (lowercase names, repeats joined with ", ") of a request,
    or ``None`` when the block is malformed (RFC 9113 section 8.2 and 8.3)."""
    method = path = scheme = None
    headers: dict[str, str] = {}
    regular = False
    for name, value in raw:
        if _FORBIDDEN_VALUE_BYTES.search(value):
            return None
        if name[:1] == b":":
            if regular or name not in _PSEUDO:
                return None
            v = value.decode("latin-1")
            if name == b":method":
                if method is not None:
                    return None
                method = v
            elif name == b":path":
                if path is not None or not v:
                    return None
                path = v
            elif name == b":scheme":
                if scheme is not None:
                    return None
                scheme = v
            elif "host" in headers:
                return None
            else:
                headers["host"] = v
            continue
        regular = True
        if not name or _FORBIDDEN_NAME_BYTES.search(name) or name in _CONNECTION_SPECIFIC:
            return None
        if name == b"te" and value != b"trailers":
            return None
        n = name.decode("ascii")
        v = value.decode("latin-1")
        if n in headers:
            if n == "host":
                continue  # :authority wins over a Host header
            headers[n] = headers[n] + ", " + v
        else:
            headers[n] = v
    if method is None or path is None or scheme is None:
        return None
    return method, path, headers


_DATA_FRAME_HEADER = struct.Struct(">IBI")  # 24-bit length + type 0 (DATA), flags, stream id
_SENDS_DATA = frozenset((StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE))


def send_data_frame(conn: h2.connection.H2Connection, stream: Any, data: bytes) -> None:
    """``conn.send_data(stream_id, data)`` without END_STREAM, for the fan-out hot path.

    The caller has checked ``data`` against the flow-control windows and the
    frame size. In the states where sending DATA is allowed, h2's state
    machines make no transition for it and its send_data only serializes one
    frame and lowers both windows: done here directly, it is about a third of
    the cost per stream. Anything unusual takes h2's own path;
    tests/unit/test_h2_data_frames.py pins the bytes and windows to h2's.
    """
    if stream.state_machine.state not in _SENDS_DATA or conn.state_machine.state is not ConnectionState.SERVER_OPEN:
        conn.send_data(stream.stream_id, data)
        return
    size = len(data)
    buffer = conn._data_to_send
    buffer += _DATA_FRAME_HEADER.pack(size << 8, 0, stream.stream_id)
    buffer += data
    stream.outbound_flow_control_window -= size
    conn.outbound_flow_control_window -= size
