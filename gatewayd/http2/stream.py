"""One HTTP/2 request stream: the ``Exchange`` a handler answers through.

Response bytes wait in the stream's queue until both flow-control windows (and
the socket) take them; nothing is dropped, and ``buffered_bytes`` says how much
waits, so callers can bound it. Once the response has ended (or the stream was
reset, by either side), every write is ignored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import h2.errors
import h2.exceptions
from h2.connection import ConnectionState
from h2.stream import StreamState

from gatewayd.http2.h2adapter import (
    ANY_PEER_FRAME_SIZE,
    h2_stream,
    send_data_frame,
    send_data_now,
    send_headers,
    send_same_data,
    send_window,
    still_open,
)
from gatewayd.transport.exchange import ExchangeHandler, HeaderList

_SERVER_OPEN = ConnectionState.SERVER_OPEN
_SENDS_DATA = frozenset((StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE))

if TYPE_CHECKING:
    from gatewayd.http2.core import ServerConnectionCore

# Where a stream's queue stood (``H2Stream.send_mark``): its first chunk and the bytes queued.
SendMark = tuple[bytes, int]


_STATUS_FIELDS = {status: (b":status", b"%d" % status) for status in range(200, 600)}


class H2Stream:
    """One request stream of a ``ServerConnectionCore``."""

    __slots__ = (
        "_drain_callback",
        "_end_queued",
        "_h2_stream",
        "_queue",
        "_queued_bytes",
        "_trailers",
        "answered",
        "conn",
        "handler",
        "headers",
        "method",
        "path",
        "peer",
        "stream_id",
    )

    http2 = True

    def __init__(self, conn: ServerConnectionCore, stream_id: int, method: str, path: str,
                 headers: Mapping[str, str], peer: str) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.method = method
        self.path = path
        self.headers = headers
        self.peer = peer
        self.handler: ExchangeHandler | None = None
        self.answered = False
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._end_queued = False
        self._trailers: HeaderList | None = None
        self._drain_callback: Callable[[], None] | None = None
        self._h2_stream = h2_stream(conn.h2, stream_id)  # for send_data_now

    @property
    def buffered_bytes(self) -> int:
        return self._queued_bytes

    @property
    def closed(self) -> bool:
        return self.conn.streams.get(self.stream_id) is not self

    def send_headers(self, status: int, headers: HeaderList, end_stream: bool = False) -> None:
        if self.closed:
            return
        self.answered = True
        status_field = _STATUS_FIELDS.get(status) or (b":status", b"%d" % status)
        send_headers(self.conn.h2, self.stream_id, [status_field, *headers], end_stream)
        if end_stream:
            self.conn.stream_done(self)
        self.conn.flush_soon()

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        conn = self.conn
        if conn.streams.get(self.stream_id) is not self:  # closed
            return
        # Nothing waits ahead of it (the fan-out's case): one frame straight to h2's buffer
        # when the windows allow, as push() would send it, without the queue round trip.
        if (data and not end_stream and not self._queue and not self._end_queued and not conn.paused
                and send_data_now(conn.h2, self._h2_stream, data)):
            conn.flush_soon()
            if self._drain_callback is not None:
                self._drain_callback()
            return
        if data:
            self._queue.append(data)
            self._queued_bytes += len(data)
        elif not end_stream and not self._queue and not self._end_queued:
            # An empty DATA frame: activity on an idle stream that carries no byte (gatewayd/heartbeat.py).
            state = send_window(self.conn.h2, self.stream_id)
            if state is not None:
                send_data_frame(self.conn.h2, state[0], b"")
        self._end_queued = end_stream
        self.push()
        self.conn.flush_soon()

    def send_trailers(self, trailers: HeaderList) -> None:
        if self.closed:
            return
        self._trailers = trailers
        self._end_queued = True
        self.push()
        self.conn.flush_soon()

    def reset(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.closed:
            return
        try:
            self.conn.h2.reset_stream(self.stream_id, error_code)
        except h2.exceptions.ProtocolError:
            pass
        self.conn.stream_done(self)
        # Nothing queued goes out any more: free it now, whoever still holds the stream.
        self._queue.clear()
        self._queued_bytes = 0
        self.conn.flush_soon()

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self._drain_callback = callback

    def push(self) -> None:
        """Send as much queued data as the windows allow; finish when all is out.

        Called after each write, when a window opens and when the socket takes
        bytes again; the drain callback runs whenever the queue has emptied.
        """
        h2conn = self.conn.h2
        sid = self.stream_id
        queue = self._queue
        if queue and not self.conn.paused:
            state = send_window(h2conn, sid)
            if state is None:
                return
            h2stream, window = state
            max_frame = h2conn.max_outbound_frame_size
            while queue and window > 0:
                chunk = queue[0]
                size = min(len(chunk), window, max_frame)
                if size == len(chunk):
                    queue.popleft()
                else:
                    queue[0] = chunk[size:]
                    chunk = chunk[:size]
                self._queued_bytes -= size
                window -= size
                last = not queue and self._end_queued and self._trailers is None
                if last:
                    send_data_frame(h2conn, h2stream, chunk, end_stream=True)
                    self.conn.stream_done(self)
                    return
                send_data_frame(h2conn, h2stream, chunk)
        if queue:
            return
        if self._end_queued:
            if not still_open(h2conn, sid):
                # The peer reset or closed the stream while our end waited for its window (grpcio's
                # reflection client cancels after the first answer): nothing more may be sent on it.
                self.conn.stream_done(self)
                return
            if self._trailers is not None:
                send_headers(h2conn, sid, self._trailers, True)
            else:
                h2conn.end_stream(sid)
            self.conn.stream_done(self)
        elif self._drain_callback is not None:
            self._drain_callback()

    # -- progress, for the send timeout (gatewayd/http2/send_timeout.py) ----------------

    def send_mark(self) -> SendMark | None:
        """Where the queue stands now; ``None`` when nothing is queued."""
        queue = self._queue
        return (queue[0], self._queued_bytes) if queue else None

    def sent_since(self, mark: SendMark) -> bool:
        """Whether queued bytes went out since ``mark`` was taken.

        Costs ``push`` nothing: bytes leave only from the head of the queue, which
        is then dropped or replaced by its rest (a new object, as the mark holds on
        to the old one), and writes only add bytes. A new head, or fewer bytes
        queued, means bytes went out; the one progress this misses is the same bytes
        object queued twice in a row, the first sent and as many bytes written since.
        """
        queue = self._queue
        return not queue or queue[0] is not mark[0] or self._queued_bytes < mark[1]


def push_all(streams: Iterable[H2Stream]) -> None:
    """``push()`` each stream that has something for it to do: queued bytes, a queued end,
    or a drain callback. On any other stream ``push`` does nothing, and the socket resumes
    once per fan-out slice on a connection with a thousand such streams."""
    for stream in list(streams):
        if stream._queue or stream._end_queued or stream._drain_callback is not None:
            stream.push()


def send_data_to_many(conn: ServerConnectionCore, streams: Sequence[H2Stream], data: bytes) -> list[int]:
    """``stream.send_data(data)`` on each of ``streams`` (all of ``conn``) that would send it at
    once as one DATA frame: those frames go out together (``send_same_data``: one append to h2's
    buffer, the connection's window lowered once); returns the positions in ``streams`` of the
    others, in order, for the caller's ``send_data`` (queued, closed, a drain callback...).

    For one event fanned out to a thousand streams of a connection this leaves out, per stream,
    the calls and the connection-wide checks ``send_data`` and ``send_data_now`` repeat.
    tests/unit/test_h2_data_frames.py pins the bytes, the windows and the streams left to
    what ``send_data`` on each stream does.
    """
    size = len(data)
    h2conn = conn.h2
    if (not size or size > ANY_PEER_FRAME_SIZE or conn.paused or conn.lost
            or h2conn.state_machine.state is not _SERVER_OPEN):
        return list(range(len(streams)))
    window = h2conn.outbound_flow_control_window
    live = conn.streams
    ready = []
    left = []
    for i, stream in enumerate(streams):
        h2s = stream._h2_stream
        if (window >= size and h2s is not None and live.get(stream.stream_id) is stream
                and not stream._queue and not stream._end_queued and stream._drain_callback is None
                and h2s.outbound_flow_control_window >= size and h2s.state_machine.state in _SENDS_DATA):
            window -= size
            ready.append(h2s)
        else:
            left.append(i)
    if ready:
        send_same_data(h2conn, ready, data)
        conn.flush_soon()
    return left
