"""The HTTP/2 send timeout on a Clock: stalled streams are reset, stalled sockets dropped, idle streams left alone.

``server.send_timeout_s`` (here 10 s, checked every 5 s): a stream whose queued bytes
the client's window takes none of is reset after between 10 and 15 s without progress;
a connection whose socket did not drain (sending paused throughout) as long is aborted.
"""

from __future__ import annotations

from typing import Any

from h2.errors import ErrorCodes
from hyperframe.frame import SettingsFrame, WindowUpdateFrame

from gatewayd.config import ServerConfig
from gatewayd.rpc.codes import Code
from gatewayd.testing.harness import STREAM
from tests.unit.h2_memory import CorePair, ProtocolPair
from tests.unit.test_h2_core import check, stream_body

TIMEOUT = 10.0
LATEST = 1.5 * TIMEOUT  # a stall ends between TIMEOUT and this long after it began


def config(**changes: Any) -> ServerConfig:
    return ServerConfig(**({"send_timeout_s": TIMEOUT} | changes))


def elapse(pair: CorePair | ProtocolPair, seconds: float) -> None:
    """Let ``seconds`` pass, running each timer at its time (a punctual reactor: one check arms the next)."""
    end = pair.clock.seconds() + seconds
    while True:
        due = [call.getTime() for call in pair.clock.getDelayedCalls() if call.getTime() <= end]
        if not due:
            break
        pair.advance(max(0.0, min(due) - pair.clock.seconds()))
    pair.advance(end - pair.clock.seconds())


def test_a_stream_whose_window_stays_shut_is_reset_and_its_queue_freed() -> None:
    pair = CorePair(config(), auto_window=False)
    sid = pair.open(STREAM, stream_body(100, 1000, hold=True))
    pair.turn()
    stream = pair.core.streams[sid]
    response = pair.client.responses[sid]
    assert len(response.data) == 65535 and stream.buffered_bytes > 30_000  # the call still runs
    assert pair.app.active and not pair.methods.cancelled
    elapse(pair, TIMEOUT - 0.1)
    assert response.reset is None and sid in pair.core.streams
    elapse(pair, LATEST - TIMEOUT + 0.1)
    # RST_STREAM(CANCEL), the running call cancelled, the queue dropped, the stream forgotten.
    assert response.reset == ErrorCodes.CANCEL and response.trailers is None
    assert pair.methods.cancelled == [STREAM] and not pair.app.active
    assert stream.buffered_bytes == 0 and stream.send_mark() is None and not pair.core.streams
    # Only that stream: the connection serves the next call (once the client reads again).
    assert not pair.closed and not pair.client.goaways
    pair.client.auto_window = True
    pair.client.write_frame(WindowUpdateFrame(0, window_increment=65535))
    assert check(pair) == 0


def test_a_stream_ended_resource_exhausted_does_not_keep_its_queue_while_the_client_answers_pings() -> None:
    # The buffer overflowed: the call is over, its queue and trailers wait for a window that never opens,
    # on a connection kept alive by keepalive PINGs the client answers.
    pair = CorePair(config(stream_buffer_bytes=8192, keepalive_interval_s=2, keepalive_timeout_s=1),
                    auto_window=False)
    pair.client.write_frame(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}))
    sid = pair.open(STREAM, stream_body(200, 1000, hold=True))
    pair.turn()
    stream = pair.core.streams[sid]
    assert pair.methods.cancelled == [STREAM] and not pair.app.active
    assert pair.client.responses[sid].data == b"" and 8192 < stream.buffered_bytes <= 8192 + 1100
    elapse(pair, LATEST + 0.1)
    response = pair.client.responses[sid]
    assert response.reset == ErrorCodes.CANCEL and response.trailers is None and response.data == b""
    assert stream.buffered_bytes == 0 and not pair.core.streams and not pair.closed
    pair.client.auto_window = True
    pair.client.write_frame(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535}))
    assert check(pair) == 0


def test_a_stream_making_slow_progress_is_not_reset() -> None:
    pair = CorePair(config(), auto_window=False)
    sid = pair.open(STREAM, stream_body(100, 1000, hold=True))
    pair.turn()
    response, stream = pair.client.responses[sid], pair.core.streams[sid]
    # A few bytes (part of a message, sometimes the end of one) a little less often than the timeout,
    # while more is written than goes out (events keep coming): the queue grows, and still moves.
    for step in range(15):
        elapse(pair, TIMEOUT - 1)
        before = len(response.data)
        pair.client.window_update(sid, 700 if step % 2 else 1500)
        stream.send_data(bytes([step]) * 2000)
        pair.pump()
        assert len(response.data) > before
        assert response.reset is None and pair.core.streams.get(sid) is stream, step
    assert pair.app.active and not pair.methods.cancelled


def test_an_idle_stream_with_nothing_queued_is_never_reset() -> None:
    # A subscription waiting for its next event, on a connection whose window is even shut.
    pair = CorePair(config(), auto_window=False)
    sid = pair.open(STREAM, stream_body(1, 10, hold=True))
    pair.turn()
    assert len(pair.client.responses[sid].messages()) == 1 and pair.core.streams[sid].buffered_bytes == 0
    elapse(pair, 100 * TIMEOUT)
    assert pair.client.responses[sid].reset is None and sid in pair.core.streams
    assert pair.app.active and not pair.methods.cancelled and not pair.closed


def test_a_socket_that_takes_no_bytes_is_dropped() -> None:
    pair = CorePair(config())
    sid = pair.open(STREAM, stream_body(1, 10, hold=True))
    pair.turn()
    pair.core.pause_sending()  # the transport's buffer is full and stays full
    elapse(pair, TIMEOUT - 0.1)
    assert not pair.io.aborted and sid in pair.core.streams
    elapse(pair, LATEST - TIMEOUT + 0.1)
    assert pair.io.aborted and pair.closed
    assert pair.methods.cancelled == [STREAM] and not pair.core.streams and not pair.app.active


def test_a_full_twisted_transport_gets_the_connection_aborted() -> None:
    # The transport pauses its producer (H2ServerConnection) and never resumes it.
    pair = ProtocolPair(config())
    sid = pair.open(STREAM, stream_body(1, 10, hold=True))
    pair.turn()
    pair.server.pauseProducing()
    elapse(pair, TIMEOUT - 0.1)
    assert not pair.transport.disconnected and sid in pair.server.streams
    elapse(pair, LATEST - TIMEOUT + 0.1)
    assert pair.transport.disconnected and pair.closed and pair.methods.cancelled == [STREAM]


def test_a_socket_that_drains_now_and_then_is_kept() -> None:
    pair = CorePair(config())
    sid = pair.open(STREAM, stream_body(1, 10, hold=True))
    pair.turn()
    for _ in range(20):
        pair.core.pause_sending()
        elapse(pair, TIMEOUT - 1)
        pair.core.resume_sending()  # it took what was buffered...
    pair.core.pause_sending()  # ...and filled again at once
    elapse(pair, TIMEOUT - 1)
    assert not pair.io.aborted and sid in pair.core.streams and pair.app.active


def test_zero_turns_the_send_timeout_off() -> None:
    pair = CorePair(config(send_timeout_s=0), auto_window=False)
    sid = pair.open(STREAM, stream_body(100, 1000, hold=True))
    pair.turn()
    pair.core.pause_sending()
    elapse(pair, 100 * TIMEOUT)
    assert pair.client.responses[sid].reset is None and pair.core.streams[sid].buffered_bytes > 30_000
    assert not pair.io.aborted and pair.app.active


def test_resource_exhausted_is_what_a_client_sees_that_opens_its_window_in_time() -> None:
    # The timeout only ends what stays stuck: a window opened before it lets the queue and the status out.
    pair = CorePair(config(stream_buffer_bytes=8192), auto_window=False)
    sid = pair.open(STREAM, stream_body(200, 1000, hold=True))
    pair.turn()
    elapse(pair, TIMEOUT - 0.1)
    pair.client.window_update(sid, 1 << 20)
    pair.pump()
    response = pair.client.responses[sid]
    assert response.reset is None and response.grpc_status() == Code.RESOURCE_EXHAUSTED
    elapse(pair, LATEST)
    assert not pair.core.streams and not pair.closed
