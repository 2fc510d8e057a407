"""The notes app's tests: only gatewayd's fixtures, no gateway code of our own."""

from __future__ import annotations

import pytest
import pytest_twisted
from notes_app import Notes
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gatewayd.client import RpcCallError

BOUND_S = 10.0


def bounded(d: Deferred) -> Deferred:
    return d.addTimeout(BOUND_S, reactor)


@pytest.mark.parametrize("gatewayd_client", ["connect", "grpc", "grpc-web"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_note_added_is_listed(gatewayd_client):
    notes = Notes(gatewayd_client)
    await notes.add("buy milk")
    assert await notes.texts() == ["buy milk"]


@pytest_twisted.ensureDeferred
async def test_following_sees_a_note_the_backend_pushes(gatewayd_dev, gatewayd_client):
    seen = []
    arrived = Deferred()
    following = Notes(gatewayd_client).follow(lambda text: (seen.append(text), arrived.callback(None)))
    await bounded(following.ready)
    gatewayd_dev.publish("user.note.created", {"note_id": "n1", "text": "from another device"},
                         user_id=gatewayd_client.session.user_id)
    await bounded(arrived)
    assert seen == ["from another device"]
    following.stop()


@pytest_twisted.ensureDeferred
async def test_a_revoked_session_stops_following(gatewayd_dev, gatewayd_client):
    following = Notes(gatewayd_client).follow(lambda text: None)
    await bounded(following.ready)
    assert gatewayd_dev.revoke(gatewayd_client.session.device_session_id) == 1
    with pytest.raises(RpcCallError) as ended:
        await bounded(following.ended)
    assert ended.value.code_name == "failed_precondition"
