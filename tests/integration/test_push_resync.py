"""A revocation sent while the gateway's push stream is down still ends the session's streams.

A whole gateway and the reference backend on real sockets; the gateway's SubscribePush call
goes through a ``FaultProxy`` that the test cuts and restores. While it is cut, one session is
revoked through the gateway (the backend's REST side is reachable): the backend publishes the
SessionInvalidation to nobody. Once the push stream is back, the gateway re-checks every open
stream's session and ends the revoked one FAILED_PRECONDITION (PROTOCOL.md section 8).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.client.wire import make_transport
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import Closer, RunningGateway, new_email, start_gateway
from gatewayd.testing.events import (
    RawStream,
    check_note,
    published_keys,
    same_user_sessions,
    subscribe_request,
)
from gatewayd.testing.tcp_proxy import FaultProxy
from gatewayd.testing.wait import WAIT_S, until
from tests.integration.test_metrics import scrape, value


@pytest_twisted.async_yield_fixture
async def proxied(tmp_path: Any) -> AsyncIterator[tuple[RunningGateway, FaultProxy]]:
    # The proxy refuses connections until it knows the backend's push port (known once started).
    proxy = FaultProxy(reactor)
    await proxy.listen()
    gw = await start_gateway(str(tmp_path / "state"),
                             backend={"push_endpoint": f"tcp:host=127.0.0.1:port={proxy.port}"})
    try:
        proxy.restore(gw.backend_service.push_server.port_number)
        await gw.push_connected()
        yield gw, proxy
    finally:
        await gw.stop()
        await proxy.close()


@pytest.mark.parametrize("protocol", ["grpc", "connect"])
@pytest_twisted.ensureDeferred
async def test_a_revocation_missed_during_a_push_outage_ends_the_stream_once_it_is_back(
        proxied: tuple[RunningGateway, FaultProxy], protocol: str, closer: Closer) -> None:
    gw, proxy = proxied
    resync = gw.gateway.resync
    keys = await published_keys(gw.url)
    victim, survivor = await same_user_sessions(gw, new_email("outage"))
    transport = closer(make_transport(protocol, reactor, gw.url))
    victim_stream = RawStream(transport, subscribe_request(victim))
    survivor_stream = RawStream(transport, subscribe_request(survivor))
    await victim_stream.wait_messages(1)
    await survivor_stream.wait_messages(1)
    await until(lambda: resync.pending == 0, "the start-up re-check to finish")
    runs_before = resync.runs
    before = await scrape(gw)

    # The push stream goes down; the gateway notices.
    assert proxy.cut() == 1
    await until(lambda: not gw.gateway.push.connected, "the push consumer to see the cut")

    # The survivor revokes the victim: the backend answers, but its invalidation reaches no gateway.
    actor = closer(GatewayClient(gw.url, "connect", key=survivor[0], session=survivor[1], timeout_s=WAIT_S))
    revoked = await actor.execute("user.sessions.revoke", {"device_session_id": victim[1].device_session_id})
    assert (revoked.result_code, revoked.json()) == ("ok", {"revoked": 1})
    assert gw.backend.bus.subscriber_count == 0
    # Without the push event nothing ended the victim's stream, and its session is cached as active.
    assert not victim_stream.ended
    assert gw.gateway.sessions._entries[victim[1].device_session_id][1].active

    proxy.restore()
    await victim_stream.wait_end()
    assert victim_stream.status() == Code.FAILED_PRECONDITION, victim_stream.outcome
    assert resync.runs == runs_before + 1 and resync.revoked >= 1
    # /metrics shows the re-check, the session it found revoked and the stream that ended.
    await until(lambda: resync.pending == 0, "the re-check to finish")
    samples = await scrape(gw)
    for name, more in (("gatewayd_push_resyncs_total", 1), ("gatewayd_push_resync_sessions_checked_total", 2),
                       ("gatewayd_push_resync_sessions_revoked_total", 1),
                       ("gatewayd_push_resync_streams_ended_total", 1), ("gatewayd_push_streams_revoked_total", 1),
                       ("gatewayd_push_resync_lookup_errors_total", 0)):
        assert value(samples, name) == value(before, name) + more, name
    assert value(samples, "gatewayd_push_resync_pending") == 0
    assert len(victim_stream.messages) == 1  # the greeting only
    assert not survivor_stream.ended, survivor_stream.outcome

    # The victim's session is refused at once; the survivor's stream still gets events, the victim's none.
    victim_client = closer(GatewayClient(gw.url, "connect", key=victim[0], session=victim[1], timeout_s=WAIT_S))
    with pytest.raises(RpcCallError) as refused:
        await victim_client.execute("user.profile.get")
    assert refused.value.code == Code.UNAUTHENTICATED
    note = await actor.execute("user.notes.create", {"text": "after the outage"})
    assert note.ok
    await survivor_stream.wait_messages(2)
    check_note(survivor_stream.messages[1], keys, note.json())
    assert len(victim_stream.messages) == 1
