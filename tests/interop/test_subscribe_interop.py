"""SubscribeEvents over HTTP/2 with connect-es (@connectrpc/connect-node) against a whole gateway.

The Python client speaks gRPC-Web and Connect over HTTP/1.1 only
(``tests/integration/test_subscribe_events.py``); here connect-node's
``createGrpcWebTransport`` / ``createConnectTransport`` with ``httpVersion: "2"`` (and its
gRPC transport, and Connect's JSON codec) open the streams. The signed
SubscribeEventsRequests are built in Python and handed to the generic ``node/client.mjs`` as
protobuf JSON; the events it prints come back as protobuf JSON and are verified here with
``gatewayd.signing`` against the gateway's published key.

Per variant, two sessions of one user subscribe in one Node process: the first event is a
signed ``gateway.server_time``; a note created by the second session reaches both; the second
revokes the first, whose stream ends FAILED_PRECONDITION while the second's stays open and gets
one more event (then cancels; the gateway frees the stream at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from google.protobuf import json_format

from gatewayd._proto.gateway.v1.gateway_pb2 import GatewayEvent
from gatewayd.client import GatewayClient
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import RunningGateway, new_email, running_gateway
from gatewayd.testing.events import (
    check_note,
    check_server_time,
    h2_stream_count,
    published_keys,
    same_user_sessions,
    subscribe_request,
)
from gatewayd.testing.wait import WAIT_S, bounded, until
from tests.interop._clients import NodeClient
from tests.interop._support import require_node

pytestmark = require_node()

SUBSCRIBE = "gateway.v1.Gateway/SubscribeEvents"

# (connect-node transport, HTTP version, binary codec, the content type the gateway must answer with)
VARIANTS = [
    pytest.param("grpcweb", "2", True, "application/grpc-web", id="grpc-web-h2"),
    pytest.param("connect", "2", True, "application/connect+proto", id="connect-h2-proto"),
    pytest.param("connect", "2", False, "application/connect+json", id="connect-h2-json"),
    pytest.param("grpc", "2", True, "application/grpc", id="grpc-h2"),
]


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with running_gateway(str(tmp_path / "state"), push_connected=True) as gw:
        yield gw


def messages(node: NodeClient, step_id: str) -> list[GatewayEvent]:
    """The GatewayEvents Node printed for ``step_id`` so far (protobuf JSON back to messages)."""
    out = []
    for event in node.events:
        if event.get("id") == step_id and event.get("event") == "message":
            out.append(json_format.ParseDict(event["message"], GatewayEvent()))
    return out


def ending(node: NodeClient, step_id: str) -> dict[str, Any] | None:
    return next((e for e in node.events if e.get("id") == step_id and e.get("event") == "end"), None)


async def wait_messages(node: NodeClient, step_id: str, count: int) -> list[GatewayEvent]:
    await until(lambda: len(messages(node, step_id)) >= count or node.exit_code is not None,
                lambda: node._describe(f"{count} messages on {step_id}"))
    got = messages(node, step_id)
    assert len(got) >= count, node._describe(f"{count} messages on {step_id}")
    return got


@pytest.mark.parametrize(("transport", "http", "binary", "content_type"), VARIANTS)
@pytest_twisted.ensureDeferred
async def test_subscribe_over_http2_with_connect_node(
        gateway: RunningGateway, transport: str, http: str, binary: bool, content_type: str) -> None:
    keys = await published_keys(gateway.url)
    first, second = await same_user_sessions(gateway, new_email("subscriber"))

    def step(step_id: str, device: Any, **extra: Any) -> dict[str, Any]:
        return {"id": step_id, "transport": transport, "httpVersion": http, "binary": binary,
                "method": SUBSCRIBE, "request": json_format.MessageToDict(subscribe_request(device)), **extra}

    # "b" aborts its own stream after its third message: that is how the Node process ends.
    plan = {"baseUrl": gateway.url, "steps": [{"group": [step("a", first), step("b", second, cancelAfter=3)]}]}
    node = NodeClient.start(plan, timeout=20.0)
    actor = GatewayClient(gateway.url, "connect", key=second[0], session=second[1], timeout_s=WAIT_S)
    try:
        for step_id in ("a", "b"):
            (greeting,) = await wait_messages(node, step_id, 1)
            check_server_time(greeting, keys)
        assert len(gateway.gateway.hub) == 2
        # Both streams really are HTTP/2 streams on the gateway.
        assert h2_stream_count(gateway) == 2, [list(c.streams) for c in gateway.gateway.factory.h2_connections]
        heads = [e["headers"] for e in node.events if e.get("event") == "headers"]
        assert len(heads) == 2 and all(h["content-type"].startswith(content_type) for h in heads), heads

        created = await actor.execute("user.notes.create", {"text": f"to {transport} h{http}"})
        assert created.ok, created
        for step_id in ("a", "b"):
            got = await wait_messages(node, step_id, 2)
            check_note(got[1], keys, created.json())
        assert messages(node, "a")[1] == messages(node, "b")[1]  # one signed event, fanned out

        revoked = await actor.execute("user.sessions.revoke", {"device_session_id": first[1].device_session_id})
        assert (revoked.result_code, revoked.json()) == ("ok", {"revoked": 1})
        await until(lambda: ending(node, "a") is not None, lambda: node._describe("the end of a"))
        end_a = ending(node, "a")
        assert end_a is not None and end_a["code"] == Code.FAILED_PRECONDITION, end_a
        assert end_a["received"] == 2 and not end_a["cancelledByClient"], end_a
        assert ending(node, "b") is None  # the other session's stream stays open...
        assert len(gateway.gateway.hub) == 1

        later = await actor.execute("user.notes.create", {"text": "after the revocation"})
        assert later.ok
        got_b = await wait_messages(node, "b", 3)  # ...and one more event reaches it
        check_note(got_b[2], keys, later.json())
        assert len(messages(node, "a")) == 2

        code = await bounded(node.ended, 10.0)
        assert code == 0, node._describe("node failed")
        end_b = ending(node, "b")
        assert end_b is not None and end_b["cancelledByClient"] and end_b["received"] == 3, end_b
        # The client's cancellation freed the stream on the gateway.
        await until(lambda: len(gateway.gateway.hub) == 0 and h2_stream_count(gateway) == 0,
                    lambda: f"hub {len(gateway.gateway.hub)}, h2 streams {h2_stream_count(gateway)}")
    finally:
        if node.exit_code is None:
            node.signal("KILL")
            await bounded(node.ended)
        await actor.close()
