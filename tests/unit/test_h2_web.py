"""twisted.web resources over HTTP/2: the stream is the request's IConsumer and ITransport.

A producer is paused while the stream's window (or the socket) is closed and
resumed once the peer's WINDOW_UPDATE lets the queue out; static files (a pull
producer) arrive whole under the same rule. In memory, on a Clock
(``ProtocolPair``); TLS over a real socket is in tests/integration/test_tls_alpn.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.web import static
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gatewayd.http2.web import H2WebChannel
from tests.unit.h2_memory import PEER, ProtocolPair

CHUNK = 16384
WINDOW = 65535  # the client's initial window: it never sends a WINDOW_UPDATE by itself here


@implementer(IPushProducer)
class Chunks:
    """A push producer: writes ``count`` chunks of ``CHUNK`` bytes while not paused, then finishes."""

    def __init__(self, request: Any, count: int) -> None:
        self.request = request
        self.left = count
        self.paused = self.stopped = False
        self.pauses = self.resumes = 0

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        while not self.paused and not self.stopped and self.left:
            self.left -= 1
            self.request.write(bytes([self.left]) * CHUNK)
        if not self.left and not self.stopped:
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        self._produce()

    def stopProducing(self) -> None:
        self.stopped = True


class Site(Resource):
    """``/chunks`` streams ``Chunks`` (10 of them); ``/whoami`` says what the request knows of its connection."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.producers: list[Chunks] = []
        self.channels: list[Any] = []
        self.failed: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.channels.append(request.channel)
        if request.path == b"/whoami":
            host, peer = request.getHost(), request.getClientAddress()
            return b"secure=%d peer=%s host=%s transport=%r" % (
                request.isSecure(), peer.host.encode(), type(host).__name__.encode(), request.transport)
        producer = Chunks(request, 10)
        self.producers.append(producer)
        request.notifyFinish().addErrback(self.failed.append)
        producer.start()
        return NOT_DONE_YET


def get(pair: ProtocolPair, path: str) -> int:
    sid = pair.open(path, content_type=None, method="GET")
    pair.turn()
    return sid


def body_of(count: int) -> bytes:
    return b"".join(bytes([i]) * CHUNK for i in reversed(range(count)))


def test_the_channel_is_an_itransport_and_an_iconsumer() -> None:
    site = Site()
    pair = ProtocolPair(web_resource=site)
    sid = get(pair, "/whoami")
    [channel] = site.channels
    assert isinstance(channel, H2WebChannel)
    assert verifyObject(ITransport, channel) and verifyObject(IConsumer, channel)
    response = pair.client.responses[sid]
    assert response.status == 200 and response.ended
    assert response.data == b"secure=0 peer=%s host=IPv4Address transport=None" % PEER.host.encode()


def test_a_producer_pauses_on_a_closed_window_and_resumes_on_window_update() -> None:
    site = Site()
    pair = ProtocolPair(web_resource=site, auto_window=False)
    sid = get(pair, "/chunks")
    [producer] = site.producers
    response = pair.client.responses[sid]
    stream = pair.server.streams[sid]
    # Four chunks fill the window but for one byte; that byte waits, and the producer with it.
    assert len(response.data) == WINDOW and stream.buffered_bytes == 4 * CHUNK - WINDOW
    assert producer.paused and producer.pauses == 1 and producer.left == 6
    pair.turn()
    assert producer.left == 6 and len(response.data) == WINDOW  # nothing moves without a WINDOW_UPDATE
    pair.client.window_update(sid, 2 * CHUNK)  # the byte, one chunk, and the next but a byte: blocked again
    pair.pump()
    assert producer.resumes == 1 and producer.pauses == 2 and producer.left == 4
    assert len(response.data) == WINDOW + 2 * CHUNK
    pair.client.window_update(sid, 1 << 20)
    pair.pump()
    assert producer.resumes == 2 and not producer.left
    assert response.ended and response.data == body_of(10) and not site.failed


def test_a_full_socket_pauses_the_producer_until_it_drains() -> None:
    site = Site()
    pair = ProtocolPair(web_resource=site)
    producer_of_the_socket = pair.transport.producer
    producer_of_the_socket.pauseProducing()  # the kernel's buffer is full
    sid = get(pair, "/chunks")
    [producer] = site.producers
    assert producer.paused and producer.left == 9  # the first chunk waits; nothing more was made
    producer_of_the_socket.resumeProducing()
    assert producer.resumes == 1  # at once: the socket took the waiting chunk
    pair.pump()
    response = pair.client.responses[sid]
    # (The window closed in between, until the client's WINDOW_UPDATEs came: paused and resumed again.)
    assert response.ended and response.data == body_of(10) and producer.pauses == producer.resumes


def test_a_reset_stream_stops_the_producer_and_fails_the_request() -> None:
    site = Site()
    pair = ProtocolPair(web_resource=site, auto_window=False)
    sid = get(pair, "/chunks")
    [producer] = site.producers
    pair.client.reset_stream(sid)
    pair.pump()
    assert producer.stopped and len(site.failed) == 1
    assert not pair.server.streams


def test_a_static_file_pull_producer_follows_the_window(tmp_path: Path) -> None:
    content = bytes(range(256)) * 1200  # 300 KiB: several reads of the file producer
    (tmp_path / "big.bin").write_bytes(content)
    pair = ProtocolPair(web_resource=static.File(str(tmp_path)), auto_window=False)
    sid = get(pair, "/big.bin")
    for _ in range(5):
        pair.turn()
    response = pair.client.responses[sid]
    stream = pair.server.streams[sid]
    # The window's worth went out; at most one read of the file waits; the file is not read further.
    assert len(response.data) == WINDOW and 0 < stream.buffered_bytes <= static.NoRangeStaticProducer.bufferSize
    pair.client.window_update(sid, 1 << 20)
    for _ in range(20):
        pair.turn()
    assert response.ended and response.status == 200 and response.data == content
