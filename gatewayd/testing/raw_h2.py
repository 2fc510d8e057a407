"""A raw HTTP/2 client that sends exact frames and records every frame it receives.

``RawH2Client`` sends through ``h2`` but parses what the server sends itself, so it
keeps reading after a GOAWAY (when h2's own state machine would refuse) and can model
peers h2 would not be: one that stops reading, never answers PINGs, resets at once.
Connect it with ``connectProtocol``; each stream's outcome is a ``Response``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FrameDecoder
from gatewayd.rpc.protocols.grpc import decode_status
from gatewayd.testing.wait import Waitable


@dataclass
class Response:
    """What came back on one stream."""

    stream_id: int
    headers: dict[str, str] | None = None
    trailers: dict[str, str] | None = None
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int:
        assert self.headers is not None, self
        return int(self.headers[":status"])

    def rpc_status(self) -> RpcError | None:
        """The gRPC status (``None`` for OK) from the trailers, or the headers of a trailers-only
        response, read by the same codec as every gatewayd client."""
        source = self.trailers if self.trailers is not None else self.headers
        assert source is not None and "grpc-status" in source, self
        return decode_status(source)

    def grpc_status(self) -> int:
        status = self.rpc_status()
        return 0 if status is None else int(status.code)

    def grpc_message(self) -> str:
        status = self.rpc_status()
        return "" if status is None else status.message

    def messages(self) -> list[tuple[int, bytes]]:
        """The body's length-prefixed messages as ``(flags, payload)``."""
        return FrameDecoder(1 << 30).feed(self.data)


def _headers_dict(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        n, v = name.decode(), value.decode("latin-1")
        out[n] = out[n] + ", " + v if n in out else v
    return out


class FrameReader:
    """What a peer sent, parsed by hand: bytes into frames, header blocks into header dicts.

    Sans-I/O and free of h2's state machine, so it keeps reading whatever comes (after a
    GOAWAY, on a reset stream). One HPACK decoder serves the connection, as it must.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = 1 << 24
        self._block: tuple[int, bytearray, bool] | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (a partial frame waits for the rest)."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self._buffer[:9])))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(self._buffer[9 : 9 + length])))
            del self._buffer[: 9 + length]
            frames.append(frame)
        return frames

    def header_block(self, frame: HeadersFrame | ContinuationFrame) -> tuple[int, dict[str, str], bool] | None:
        """Add ``frame`` to the header block it starts or continues; once the block ends,
        ``(stream_id, headers, END_STREAM was set)``."""
        if isinstance(frame, HeadersFrame):
            self._block = (frame.stream_id, bytearray(), "END_STREAM" in frame.flags)
        assert self._block is not None, "CONTINUATION without HEADERS"
        self._block[1].extend(frame.data)
        if "END_HEADERS" not in frame.flags:
            return None
        sid, block, end_stream = self._block
        self._block = None
        return sid, _headers_dict(self._decoder.decode(bytes(block), raw=True)), end_stream


class RawH2Client(Protocol, Waitable):
    """An HTTP/2 client that sends exact frames and records every frame the server sends.

    ``auto_window`` returns every received DATA byte to the windows at once;
    turn it off to model a client that stops reading. ``auto_ping_ack`` answers PINGs.
    """

    def __init__(self, auto_window: bool = True, auto_ping_ack: bool = True, reactor: Any = None) -> None:
        Waitable.__init__(self, reactor)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.auto_window = auto_window
        self.auto_ping_ack = auto_ping_ack
        self.frames: list[Frame] = []
        self.responses: dict[int, Response] = {}
        self.goaways: list[tuple[int, int]] = []  # (last_stream_id, error_code)
        self.closed = False
        self._reader = FrameReader()

    def describe(self) -> str:
        return f"goaways={self.goaways} closed={self.closed} responses={list(self.responses.values())!r:.600}"

    # -- sending ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def write_frame(self, *frames: Frame) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(f.serialize() for f in frames))

    def open_stream(self, path: str, content_type: str | None = "application/grpc", body: bytes | None = None,
                    extra: Iterable[tuple[str, str]] = (), end_stream: bool = True, method: str = "POST") -> int:
        """Send HEADERS (and DATA frames of ``body``); return the stream id."""
        sid: int = self.h2.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode()),
                   (b":authority", b"gatewayd.test")]
        if content_type is not None:
            headers.append((b"content-type", content_type.encode()))
        if content_type is not None and content_type.startswith("application/grpc") and "grpc-web" not in content_type:
            headers.append((b"te", b"trailers"))
        headers += [(k.encode(), v.encode()) for k, v in extra]
        self.responses[sid] = Response(sid)
        self.h2.send_headers(sid, headers, end_stream=end_stream and not body)
        self.flush()
        if body:
            self.send_body(sid, body, end_stream)
        return sid

    def send_body(self, sid: int, body: bytes, end_stream: bool = True) -> None:
        # Written by hand: h2 never learns the server's windows here (we do not feed it what we receive).
        frames = []
        for i in range(0, len(body), 16384):
            chunk = body[i : i + 16384]
            frame = DataFrame(sid, chunk)
            if end_stream and i + 16384 >= len(body):
                frame.flags.add("END_STREAM")
            frames.append(frame)
        self.write_frame(*frames)

    def reset_stream(self, sid: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.write_frame(RstStreamFrame(sid, error_code=code))

    def window_update(self, sid: int, increment: int) -> None:
        self.write_frame(WindowUpdateFrame(0, window_increment=increment),
                         WindowUpdateFrame(sid, window_increment=increment))

    async def call(self, path: str, body: bytes | None, content_type: str = "application/grpc",
                   extra: Iterable[tuple[str, str]] = ()) -> Response:
        sid = self.open_stream(path, content_type, body, extra)
        await self.wait(lambda: self.responses[sid].done or self.closed, f"stream {sid}")
        return self.responses[sid]

    # -- receiving --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        for frame in self._reader.feed(data):
            self.frames.append(frame)
            self._handle(frame)
        self._check_waiters()

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self.write_frame(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame):
            if "ACK" not in frame.flags and self.auto_ping_ack:
                self.write_frame(PingFrame(0, frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            block = self._reader.header_block(frame)
            if block is not None:
                self._headers_done(*block)
        elif isinstance(frame, DataFrame):
            response = self.responses.setdefault(frame.stream_id, Response(frame.stream_id))
            response.data += frame.data
            if "END_STREAM" in frame.flags:
                response.ended = True
            size = frame.flow_controlled_length
            if self.auto_window and size:
                self.write_frame(WindowUpdateFrame(0, window_increment=size))
                if not response.ended:
                    self.write_frame(WindowUpdateFrame(frame.stream_id, window_increment=size))
        elif isinstance(frame, RstStreamFrame):
            self.responses.setdefault(frame.stream_id, Response(frame.stream_id)).reset = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append((frame.last_stream_id, frame.error_code))

    def _headers_done(self, sid: int, headers: dict[str, str], end_stream: bool) -> None:
        response = self.responses.setdefault(sid, Response(sid))
        if response.headers is None:
            response.headers = headers
        else:
            response.trailers = headers
        response.ended = response.ended or end_stream

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self._check_waiters()


__all__ = ["FrameReader", "RawH2Client", "Response"]
