"""One event to the streams of one HTTP/2 connection at once (the hub's fan-out).

``send_together`` does what ``stream.send(event)`` on each of them does, for the
streams whose call and HTTP/2 stream would write the event at once as one DATA
frame: the event framed once for their wire format, and the frames appended to
the connection's buffer in one go (``http2.stream.send_data_to_many``). The
others (queued bytes, a call not yet started or finished, another wire format,
HTTP/1.1) are handed back for ``stream.send``. tests/unit/test_push_send_together.py
pins the bytes written, the windows and the calls' counters to per-stream sends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gatewayd.http2.core import ServerConnectionCore
from gatewayd.http2.stream import H2Stream, send_data_to_many
from gatewayd.rpc.call import Encoded
from gatewayd.rpc.server import ServerCall

if TYPE_CHECKING:
    from gatewayd.push.hub import Subscription


def send_together(subs: list[Subscription], event: Encoded) -> tuple[int, list[Subscription]]:
    """Send ``event`` to the live ``subs`` (all through one connection) that can take it at once;
    returns how many got it and the live ones left for ``stream.send``."""
    connection = subs[0].connection
    if type(connection) is not ServerConnectionCore:
        return 0, [sub for sub in subs if sub.live]
    left: list[Subscription] = []
    batch: list[Subscription] = []
    streams: list[H2Stream] = []
    key: str | None = None
    data = b""
    size = 0
    for sub in subs:
        if not sub.live:
            continue
        call = sub.stream
        # (_stream_started: the response headers are out, so send() would write the frame at once.)
        if type(call) is not ServerCall or call.finished or not call._stream_started:
            left.append(sub)
            continue
        exchange = call.exchange
        proto = call.proto
        if type(exchange) is not H2Stream or (key is not None and proto.frame_cache_key != key):
            left.append(sub)
            continue
        if key is None:  # framed as ServerCall.send frames it, once per wire format
            key = proto.frame_cache_key
            cached = event.frames.get(key)
            if cached is None:
                cached = event.frames[key] = proto.frame_message(event.json() if proto.json else event.proto)
            data = cached
            size = len(data)
        call.bytes_out += size  # taken back below if it is not sent together
        batch.append(sub)
        streams.append(exchange)
    if not batch:
        return 0, left
    try:
        not_sent = send_data_to_many(connection, streams, data)
    except BaseException:
        for sub in batch:
            sub.stream.bytes_out -= size  # type: ignore[attr-defined]
        raise
    if not_sent:
        for i in not_sent:
            sub = batch[i]
            sub.stream.bytes_out -= size  # type: ignore[attr-defined]  # send() counts it
            left.append(sub)
    return len(batch) - len(not_sent), left
