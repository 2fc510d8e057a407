"""Floods from a plain socket in a thread, so the reactor keeps serving the well-behaved client meanwhile.

``flood(port, preamble, chunk, budget)`` connects, sends ``preamble`` and then
``chunk`` again and again until ``budget`` bytes are sent or the gateway closes,
and returns everything the gateway sent. A blocking socket is used on purpose:
when the gateway closes a connection that is still being written to, its
kernel answers with a reset, and a Twisted transport reports the loss without
reading what arrived before it (the GOAWAY); a socket read after the failed
send still returns those bytes.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass, field

from hyperframe.frame import Frame, GoAwayFrame, PingFrame, SettingsFrame
from twisted.internet import defer, threads

from gatewayd.testing.raw_h2 import FrameReader

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STALL_S = 10.0  # a send or read blocked this long: the gateway neither reads nor closes


@dataclass
class FloodResult:
    sent: int = 0
    received: bytes = b""
    closed: bool = False  # the gateway closed (EOF or reset)
    stalled: bool = False  # a send blocked for STALL_S: the gateway stopped reading without closing
    frames: list[Frame] = field(default_factory=list)

    @property
    def goaways(self) -> list[tuple[int, int]]:
        return [(f.last_stream_id, f.error_code) for f in self.frames if isinstance(f, GoAwayFrame)]

    @property
    def ping_acks(self) -> int:
        return sum(1 for f in self.frames if isinstance(f, PingFrame) and "ACK" in f.flags)


def h2_preamble(*frames: Frame) -> bytes:
    """The client preface, an empty SETTINGS, then ``frames``."""
    return H2_PREFACE + SettingsFrame(0).serialize() + b"".join(f.serialize() for f in frames)


def _flood(port: int, preamble: bytes, chunk: bytes, budget: int, read: bool, rcvbuf: int | None) -> FloodResult:
    result = FloodResult()
    received = bytearray()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.connect(("127.0.0.1", port))
        s.settimeout(STALL_S)
        try:
            s.sendall(preamble)
            while result.sent < budget:
                if read:
                    readable, _, _ = select.select([s], [], [], 0)
                    if readable:
                        data = s.recv(1 << 16)
                        if not data:
                            result.closed = True
                            break
                        received += data
                s.sendall(chunk)
                result.sent += len(chunk)
        except TimeoutError:
            result.stalled = True
        except OSError:
            result.closed = True
        # Whatever the gateway sent before it closed is still readable (and then EOF or a reset).
        try:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    result.closed = True
                    break
                received += data
        except TimeoutError:
            pass  # still open
        except OSError:
            result.closed = True
    result.received = bytes(received)
    if preamble.startswith(H2_PREFACE):
        result.frames = FrameReader().feed(result.received)
    return result


def flood(port: int, preamble: bytes, chunk: bytes, budget: int, *, read: bool = True,
          rcvbuf: int | None = None) -> defer.Deferred[FloodResult]:
    """Send ``preamble`` then ``chunk`` until ``budget`` bytes or the gateway closes (in a thread).

    ``read``: read what the gateway sends while flooding (else only afterwards: a client that
    does not read). ``rcvbuf``: our receive buffer size, small to make a non-reader stall sooner.
    """
    return threads.deferToThread(_flood, port, preamble, chunk, budget, read, rcvbuf)
