"""Hostile HTTP/2 clients against a real ``twist gatewayd --dev`` process.

Each attack runs inside ``attack(...)``: a well-behaved client asks Health/Check
on its own connection throughout and must be answered every time, and the
gateway's resident memory must not grow by more than a generous bound while
the attack sends (or would make the gateway decode or queue) far more than
that. Each test also asserts the frame the attacker is refused with.

In-process variants of some of these (smaller, with the server's internals in
view) are in tests/integration/test_abuse.py and test_slow_client.py.
"""

from __future__ import annotations

from typing import TypeVar

import hpack
import pytest_twisted
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame
from twisted.internet import defer, reactor, task

from gatewayd.client.client import EXECUTE_COMMAND_PATH, SUBSCRIBE_EVENTS_PATH, DeviceSession, GatewayClient
from gatewayd.client.keys import DeviceKey
from gatewayd.client.sign import sign_request
from gatewayd.config import ServerConfig
from gatewayd.http2.h2adapter import max_header_block_bytes
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame
from gatewayd.testing.client import login, new_email, signed_subscribe_request
from gatewayd.testing.harness import CHECK, check_request
from gatewayd.testing.wait import until
from tests.hostile.flood import flood, h2_preamble
from tests.hostile.held import HeldSocket, StreamResult, grpc_calls, window_updates
from tests.hostile.support import Attack, GatewayProcess, attack, close, h2_client, sample_until

T = TypeVar("T")

# Keepalive PINGs stay off, as by default: a client that stops reading must be dropped by the
# send timeout alone. keepalive_timeout_s still bounds how long a closed connection may linger.
SEND_TIMEOUT_S = 3.0
GATEWAY_CONFIG = f"""
[server]
stream_buffer_bytes = 16384
keepalive_timeout_s = 2.0
send_timeout_s = {SEND_TIMEOUT_S}
[limits]
ip = {{ rate = 5000.0, burst = 10000 }}
session = {{ rate = 5000.0, burst = 10000 }}
user = {{ rate = 5000.0, burst = 10000 }}
message_type = {{ rate = 5000.0, burst = 10000 }}
"""

WATCH = "/grpc.health.v1.Health/Watch"
AUTHORITY = b"gatewayd.test"
MIB = 1024 * 1024


def _request_block_prefix() -> bytes:
    """The pseudo-headers of a Check request as HPACK that leaves the dynamic table alone:
    static-table indexes and literals without indexing."""

    def literal(name_index: int, value: bytes) -> bytes:
        assert len(value) < 127
        return bytes([name_index]) + bytes([len(value)]) + value  # 0000xxxx: literal without indexing

    return b"\x83\x86" + literal(4, CHECK.encode()) + literal(1, AUTHORITY)  # POST, http, :path, :authority


@pytest_twisted.ensureDeferred
async def test_continuation_flood_is_cut_off(gateway: GatewayProcess) -> None:
    # HEADERS without END_HEADERS, then CONTINUATION frames without end.
    bound = max_header_block_bytes(ServerConfig().max_header_list_bytes)
    preamble = h2_preamble(HeadersFrame(1, _request_block_prefix()))  # no END_HEADERS
    continuation = ContinuationFrame(1, b"\x00" * 16384).serialize()  # no END_HEADERS either
    async with attack(gateway) as state:
        # Twice the bound, then nothing more: the gateway closes having read no more than that
        # (h2 alone would wait for 64 frames, 1 MiB, and this flood would stall unanswered).
        result = await _sampling(state, flood(gateway.port, preamble, continuation, 2 * bound))
        assert result.closed and not result.stalled, (result.sent, result.frames)
        assert result.goaways == [(0, ErrorCodes.ENHANCE_YOUR_CALM)], result.frames
        # 8 connections at once, each offering 64 MiB of header block. A server that kept
        # collecting would hold 512 MiB.
        floods = [flood(gateway.port, preamble, continuation * 4, 64 * MIB) for _ in range(8)]
        results = await _sampling(state, defer.gatherResults(floods, consumeErrors=True))
        for result in results:
            # Refused with GOAWAY long before the budget (what we count as sent includes the
            # kernel's socket buffers, several MiB on loopback).
            assert result.closed and result.sent < 32 * MIB, (result.sent, result.goaways)
            assert [code for _, code in result.goaways] == [ErrorCodes.ENHANCE_YOUR_CALM], result.frames
            assert not any(isinstance(f, HeadersFrame) for f in result.frames)
    await until(lambda: gateway.text().count(f"header block on stream 1 over {bound} bytes") == 9,
                "the gateway to log each refusal", interval=0.05)


async def _sampling(state: Attack, d: defer.Deferred[T]) -> T:
    """``d``'s result, sampling RSS every 20 ms until it fires."""
    await sample_until(state, lambda: d.called, "the attack to end", timeout=60.0)
    return await d


@pytest_twisted.ensureDeferred
async def test_hpack_bomb_is_refused_enhance_your_calm(gateway: GatewayProcess) -> None:
    # One 4000-byte header enters the dynamic table on stream 1 (a normal, served request);
    # stream 3 then references it 10,000 times: 10 KiB on the wire, 40 MiB once decoded.
    # Twenty connections do it: 800 MiB of headers if anything decoded them whole.
    async with attack(gateway) as state:
        for _ in range(20):
            client = await h2_client(gateway.port)
            encoder = hpack.Encoder()
            big = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", CHECK.encode()),
                   (b":authority", AUTHORITY), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                   (b"x-bomb", b"a" * 4000)]
            client.write_frame(HeadersFrame(1, encoder.encode(big), flags=["END_HEADERS"]))
            client.send_body(1, encode_frame(check_request()))
            await client.wait(lambda c=client: 1 in c.responses and c.responses[1].done, "stream 1 answered")
            assert client.responses[1].grpc_status() == 0
            # Index 62 is the newest dynamic entry: x-bomb (it pushed the others out of the 4 KiB table).
            bomb = _request_block_prefix() + b"\xbe" * 10_000
            client.write_frame(HeadersFrame(3, bomb, flags=["END_HEADERS", "END_STREAM"]))
            await client.wait(lambda c=client: c.closed, "the bomb's connection to close")
            state.sample()
            assert client.goaways and client.goaways[-1] == (1, ErrorCodes.ENHANCE_YOUR_CALM), client.goaways
            assert 3 not in client.responses or client.responses[3].headers is None


@pytest_twisted.ensureDeferred
async def test_the_101st_concurrent_stream_is_refused(gateway: GatewayProcess) -> None:
    async with attack(gateway) as state:
        client = await h2_client(gateway.port)
        watches = [client.open_stream(WATCH, body=encode_frame(check_request())) for _ in range(100)]
        await client.wait(lambda: all(client.responses[s].headers is not None for s in watches), "100 Watch streams")
        extra = client.open_stream(WATCH, body=encode_frame(check_request()))
        await client.wait(lambda: client.responses[extra].done, "the 101st stream's refusal")
        assert client.responses[extra].reset == ErrorCodes.REFUSED_STREAM
        assert client.responses[extra].headers is None
        # The connection itself is fine: the 100 are still open, and once one ends a new stream is served.
        assert not client.goaways and not client.closed
        assert not any(client.responses[s].done for s in watches)
        client.reset_stream(watches[0])  # read before the next HEADERS: the slot is free by then
        response = await client.call(CHECK, encode_frame(check_request()))
        assert response.grpc_status() == 0, response
        state.sample()
        close(client)


@pytest_twisted.ensureDeferred
async def test_ping_flood_gets_goaway_enhance_your_calm(gateway: GatewayProcess) -> None:
    ping = PingFrame(0, b"flooding").serialize()
    async with attack(gateway) as state:
        # A client that reads the ACKs: it sees the GOAWAY, then the close. On a loaded machine the
        # ACKs queued ahead of the GOAWAY may not drain within keepalive_timeout_s, and the gateway then
        # aborts the connection before the GOAWAY gets out: the log line proves the flood was caught.
        floods_before = gateway.text().count("PING flood")
        result = await _sampling(state, flood(gateway.port, h2_preamble(), ping * 256, 64 * MIB))
        assert result.closed and not result.stalled and result.sent < 32 * MIB, result.sent
        assert [code for _, code in result.goaways] in ([ErrorCodes.ENHANCE_YOUR_CALM], []), result.goaways
        await until(lambda: gateway.text().count("PING flood") == floods_before + 1, "the gateway's log line")
        # Answered a bounded number (the bucket, plus what one read held), not one per PING sent.
        assert result.ping_acks < 5000, result.ping_acks

        # One that never reads: the ACKs and the GOAWAY can only queue on the gateway's side, so the
        # gateway must drop the connection itself (a reset; the GOAWAY never gets out).
        floods_before = gateway.text().count("PING flood")
        result = await _sampling(state, flood(gateway.port, h2_preamble(), ping * 256, 64 * MIB, read=False,
                                              rcvbuf=4096))
        assert result.closed and not result.stalled and result.sent < 32 * MIB, result.sent
        await until(lambda: gateway.text().count("PING flood") == floods_before + 1, "the gateway's log line")


# --- flow control: subscribers that never open their window, clients that never read -------------

NOTE_TEXT_CHARS = 3500
STALLED_SOCKET = "its socket did not drain"  # the send timeout's log line when it drops a connection


async def _device(gateway: GatewayProcess) -> tuple[DeviceKey, DeviceSession]:
    return await login(gateway.url, new_email("hostile"))


@pytest_twisted.ensureDeferred
async def test_subscribers_that_never_open_their_window(gateway: GatewayProcess) -> None:
    # 100 SubscribeEvents streams on one connection whose SETTINGS_INITIAL_WINDOW_SIZE is 0, while
    # 150 events of ~3.5 KiB flow to their user: 50 MiB if the gateway queued everything for them.
    # It may queue stream_buffer_bytes (16 KiB) per stream, then ends each. Half the streams get a
    # byte of window every half second (slow progress, which must be left alone); the other half
    # never do, and the send timeout resets each (its queue dropped), though the connection reads.
    key, session = await _device(gateway)
    device = (key, session)
    async with attack(gateway) as state:
        stalled = HeldSocket(gateway.port)
        await stalled.connect()
        stalled.start_reading(answer_pings=True)  # alive, answering keepalive; only its windows stay shut
        requests = [signed_subscribe_request(key, session.device_session_id).SerializeToString()
                    for _ in range(100)]
        await stalled.send(grpc_calls(gateway.port, SUBSCRIBE_EVENTS_PATH, requests, initial_window=0))
        stream_ids = list(range(1, 200, 2))
        await stalled.wait_for(lambda r: all(r.streams.get(s, StreamResult()).headers for s in stream_ids),
                               "response headers on every stream")
        for sid in stream_ids:  # answered (HEADERS are not flow-controlled), nothing more yet
            result = stalled.reader.streams[sid]
            assert result.headers is not None and result.headers[":status"] == "200", result
            assert not result.data and not result.ended, result
        trickled, shut = stream_ids[:50], stream_ids[50:]
        trickle = task.LoopingCall(lambda: stalled.send(window_updates(trickled, 1)))
        trickle.start(0.5)

        events: list[str] = []
        good = GatewayClient(gateway.url, "grpc", key=device[0], session=device[1])
        actor = GatewayClient(gateway.url, "connect", key=device[0], session=device[1])
        subscription = good.subscribe(lambda e: events.append(e.event_type))
        try:
            await until(lambda: len(events) == 1, "the good subscriber's server_time")
            for i in range(150):
                answer = await actor.execute("user.notes.create", {"text": f"{i:04d}" + "n" * NOTE_TEXT_CHARS})
                assert answer.ok, answer
                await until(lambda n=2 + i: len(events) == n, lambda n=2 + i: f"{n} events; got {len(events)}")
                state.sample()
            assert events == ["gateway.server_time"] + ["user.note.created"] * 150
            assert not subscription.called
            # The shut streams: reset CANCEL once they made no progress for send_timeout_s (they stalled
            # at the first event; the bound is generous for a loaded machine), with nothing sent.
            await stalled.wait_for(lambda r: all(r.streams[s].reset is not None for s in shut),
                                   "the send timeout's resets", timeout=10 * SEND_TIMEOUT_S)
            state.sample()
        finally:
            if trickle.running:
                trickle.stop()
            subscription.cancel()
            await actor.close()
            await good.close()
        for sid in shut:
            result = stalled.reader.streams[sid]
            assert result.reset == ErrorCodes.CANCEL and result.trailers is None and not result.data, (sid, result)
        assert not stalled.reader.goaways and not stalled.closed
        assert all(stalled.reader.streams[s].reset is None for s in trickled)

        # Once the trickled streams' windows open, each reads what was queued for it and then its
        # end: RESOURCE_EXHAUSTED, after at most the buffer plus one event.
        await stalled.send(window_updates(trickled, 1 << 24))
        await stalled.wait_for(lambda r: all(r.streams[s].ended for s in trickled), "every trickled stream's end",
                               timeout=20.0)
        for sid in trickled:
            result = stalled.reader.streams[sid]
            assert result.reset is None and result.trailers is not None, (sid, result)
            assert result.trailers.get("grpc-status") == str(int(Code.RESOURCE_EXHAUSTED)), result.trailers
            assert 16384 < len(result.data) <= 16384 + 4096 + NOTE_TEXT_CHARS, (sid, len(result.data))
            assert 2 <= len(result.messages()) <= 8, len(result.messages())
        stalled.close()


@pytest_twisted.ensureDeferred
async def test_client_that_never_reads_large_responses_is_dropped(gateway: GatewayProcess) -> None:
    # A client opens huge windows, asks for a ~150 KiB note list on 50 streams and reads nothing.
    # Its responses can only sit in the gateway, whose socket takes no more bytes: with keepalive
    # off, the send timeout must drop the connection (a GOAWAY could not reach it anyway).
    key, session = await _device(gateway)
    actor = GatewayClient(gateway.url, "connect", key=key, session=session)
    try:
        for i in range(40):
            assert (await actor.execute("user.notes.create", {"text": f"{i:04d}" + "l" * 3900})).ok
    finally:
        await actor.close()
    async with attack(gateway) as state:
        deaf = HeldSocket(gateway.port, rcvbuf=4096)
        await deaf.connect()
        requests = [sign_request(key, session.device_session_id, "user.notes.list", b"",
                                 clock=reactor).SerializeToString() for _ in range(50)]
        await deaf.send(grpc_calls(gateway.port, EXECUTE_COMMAND_PATH, requests, initial_window=2**31 - 1,
                                   connection_window=2**31 - 1 - 65535))
        client_port = deaf.client_port
        drops_before = gateway.text().count(STALLED_SOCKET)
        await sample_until(state, lambda: gateway.server_socket_state(client_port) is None,
                           "the gateway to drop the connection of a client that reads nothing", timeout=30.0)
        await until(lambda: gateway.text().count(STALLED_SOCKET) == drops_before + 1, "the gateway's log line")
        # What it could still read: some responses, then the end of the connection.
        deaf.start_reading(answer_pings=False)
        await until(lambda: deaf.closed, "the end of the connection", timeout=30.0)
        deaf.close()
