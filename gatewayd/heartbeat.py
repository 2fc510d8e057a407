"""Heartbeats on idle event streams (``server.heartbeat_interval_s``; docs/protocol.md says how they travel).

A stream that has sent nothing for ``interval_s`` gets a keep-alive, so a proxy that
ends idle streams keeps it open:

- by default, over HTTP/2 (gRPC, gRPC-Web, Connect): an empty DATA frame on the stream.
  It carries no byte of any message, so every client's message decoder sees nothing;
  a proxy reading the stream from us sees stream activity.
- when the call's metadata has ``gateway-heartbeat: events`` (any transport): a signed
  ``gateway.heartbeat`` GatewayEvent with payload ``{"server_time_ms": N}``, which a
  client that asked for it skips. This is the one form that also travels over HTTP/1.1
  (where a chunked body has no empty frame) and through proxies that re-frame HTTP/2.
- otherwise, over HTTP/1.1: nothing (existing clients would not know the event).

The first beat comes ``interval_s`` after the stream's last message (``gateway.server_time``
at the latest), so the first event of every stream is still ``gateway.server_time``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from gatewayd.pipeline.signer import EventSigner
from gatewayd.rpc.call import Call, Encoded, ServerStream
from gatewayd.rpc.methods import StreamHandler

HEARTBEAT_EVENT = "gateway.heartbeat"
OPT_IN_HEADER = "gateway-heartbeat"
OPT_IN_EVENTS = "events"


class Heartbeats:
    """Wraps a stream handler so its idle streams get heartbeats; ``interval_s`` may change (reload)."""

    def __init__(self, clock: Any, interval_s: float, signer: EventSigner) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self.signer = signer
        self._prefix = "hb_" + os.urandom(6).hex() + "_"
        self._counter = 0
        self._event: tuple[int, Encoded] | None = None

    def wrap(self, handler: StreamHandler) -> StreamHandler:
        def run(call: Call, request: Any, stream: ServerStream) -> Any:
            if self.interval_s <= 0:
                return handler(call, request, stream)
            beating = BeatingStream(self, stream, call.metadata.get(OPT_IN_HEADER, "").strip() == OPT_IN_EVENTS)
            d: defer.Deferred[None] = defer.ensureDeferred(handler(call, request, beating))  # type: ignore[arg-type]
            return d.addBoth(beating.stop)

        return run

    def event(self) -> Encoded:
        """A signed ``gateway.heartbeat`` for this millisecond, shared by the streams beating in it."""
        now_ms = int(self.clock.seconds() * 1000)
        if self._event is not None and self._event[0] == now_ms:
            return self._event[1]
        self._counter += 1
        payload = json.dumps({"server_time_ms": now_ms}, separators=(",", ":")).encode()
        event = Encoded(self.signer.sign(HEARTBEAT_EVENT, f"{self._prefix}{self._counter}", payload, now_ms))
        self._event = (now_ms, event)
        return event


class BeatingStream:
    """A ``ServerStream`` that remembers when it last sent and beats when idle."""

    __slots__ = ("_last", "_timer", "events", "heartbeats", "stream")

    def __init__(self, heartbeats: Heartbeats, stream: ServerStream, events: bool) -> None:
        self.heartbeats = heartbeats
        self.stream = stream
        self.events = events
        self._last: float | None = None  # no beat before the first message went out
        self._timer: IDelayedCall | None = None

    @property
    def closed(self) -> bool:
        return self.stream.closed

    def send(self, message: Any) -> None:
        self.stream.send(message)
        self._last = self.heartbeats.clock.seconds()
        if self._timer is None and not self.stream.closed:
            self._schedule(self.heartbeats.interval_s)

    def _schedule(self, delay: float) -> None:
        self._timer = self.heartbeats.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        interval = self.heartbeats.interval_s
        if self.stream.closed or interval <= 0 or self._last is None:
            return
        idle = self.heartbeats.clock.seconds() - self._last
        if idle < interval:
            self._schedule(interval - idle)
            return
        self._beat()
        self._schedule(interval)

    def _beat(self) -> None:
        if self.events:
            self.send(self.heartbeats.event())
            return
        exchange = getattr(self.stream, "exchange", None)
        if exchange is not None and exchange.http2 and not exchange.buffered_bytes:
            exchange.send_data(b"")  # an empty DATA frame (gatewayd/http2/stream.py)
            self._last = self.heartbeats.clock.seconds()

    def stop(self, result: Any) -> Any:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return result
