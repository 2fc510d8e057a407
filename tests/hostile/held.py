"""A connection the test holds open and drives by hand: exact bytes out, reads only when asked.

``HeldSocket`` is a plain blocking socket whose sends run in a thread and whose reads,
once started, run in another (the reactor keeps serving the well-behaved client meanwhile).
``grpc_calls`` builds the bytes of many gRPC calls on one HTTP/2 connection with h2 (client
side), with the windows the attacker advertises; ``H2Reader`` decodes what came back, per stream.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)
from twisted.internet import defer, threads

from gatewayd.rpc.framing import FrameDecoder, encode_frame
from gatewayd.testing.raw_h2 import FrameReader
from gatewayd.testing.wait import until


def grpc_calls(port: int, path: str, messages: list[bytes], *, initial_window: int | None = None,
               connection_window: int = 0) -> bytes:
    """The client preface and SETTINGS (``initial_window`` as SETTINGS_INITIAL_WINDOW_SIZE), a
    connection WINDOW_UPDATE of ``connection_window``, then one gRPC call per message (streams 1, 3, ...)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
    if initial_window is not None:
        settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = initial_window
    conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    conn.initiate_connection()
    if connection_window:
        conn.increment_flow_control_window(connection_window)
    for message in messages:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                                (b":authority", b"127.0.0.1:%d" % port), (b"content-type", b"application/grpc"),
                                (b"te", b"trailers")])
        conn.send_data(sid, encode_frame(message), end_stream=True)
    return conn.data_to_send()


def window_updates(stream_ids: list[int], increment: int) -> bytes:
    """WINDOW_UPDATE for the connection and for each stream."""
    frames = [WindowUpdateFrame(0, window_increment=increment)]
    frames += [WindowUpdateFrame(sid, window_increment=increment) for sid in stream_ids]
    return b"".join(f.serialize() for f in frames)


@dataclass
class StreamResult:
    headers: dict[str, str] | None = None
    trailers: dict[str, str] | None = None
    data: bytes = b""
    reset: int | None = None

    @property
    def ended(self) -> bool:
        return self.trailers is not None or self.reset is not None

    def messages(self) -> list[bytes]:
        return [payload for _, payload in FrameDecoder(1 << 30).feed(self.data)]


@dataclass
class H2Reader:
    """Parses the server's frames as they are fed; headers decoded with one HPACK decoder."""

    streams: dict[int, StreamResult] = field(default_factory=dict)
    goaways: list[tuple[int, int]] = field(default_factory=list)
    _frames: FrameReader = field(default_factory=FrameReader)

    def feed(self, data: bytes) -> list[bytes]:
        """Parse ``data``; return the opaque data of each PING (not ACK) in it, to be answered."""
        pings = []
        for frame in self._frames.feed(data):
            if isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                pings.append(frame.opaque_data)
            self._handle(frame)
        return pings

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, HeadersFrame | ContinuationFrame):
            block = self._frames.header_block(frame)
            if block is not None:
                sid, headers, _ = block
                stream = self.streams.setdefault(sid, StreamResult())
                if stream.headers is None:
                    stream.headers = headers
                else:
                    stream.trailers = headers
        elif isinstance(frame, DataFrame):
            self.streams.setdefault(frame.stream_id, StreamResult()).data += frame.data
        elif isinstance(frame, RstStreamFrame):
            self.streams.setdefault(frame.stream_id, StreamResult()).reset = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append((frame.last_stream_id, frame.error_code))


class HeldSocket:
    """One TCP connection to the gateway: sends run in a thread, and reading, once started, in another.

    ``start_reading(answer_pings=True)`` models a client that is alive (it answers the
    gateway's keepalive PINGs) however else it misbehaves; without ``start_reading`` nothing
    is read at all.
    """

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised TCP window starts small too.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.closed = False  # the gateway closed (EOF or reset), as far as our reads have seen
        self.reader = H2Reader()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def connect(self) -> defer.Deferred[None]:
        return threads.deferToThread(self.sock.connect, ("127.0.0.1", self.port))

    @property
    def client_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> defer.Deferred[None]:
        return threads.deferToThread(self.sock.sendall, data)

    def start_reading(self, answer_pings: bool) -> None:
        self._thread = threading.Thread(target=self._read_loop, args=(answer_pings,), daemon=True)
        self._thread.start()

    def _read_loop(self, answer_pings: bool) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            with self._lock:
                pings = self.reader.feed(data)
            try:
                for opaque in pings if answer_pings else ():
                    self.sock.sendall(PingFrame(0, opaque, flags=["ACK"]).serialize())
            except OSError:
                pass

    async def wait_for(self, predicate: Callable[[H2Reader], bool], what: str, timeout: float = 10.0) -> None:
        """Until ``predicate(reader)`` holds (bounded); reading must have been started."""

        def check() -> bool:
            with self._lock:
                return predicate(self.reader)

        await until(check, lambda: f"{what}; streams {len(self.reader.streams)}, goaways {self.reader.goaways}, "
                    f"closed {self.closed}", timeout)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
