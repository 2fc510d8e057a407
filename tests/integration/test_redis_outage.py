"""A whole gateway on Redis stores: Redis going away fails calls closed (UNAVAILABLE), and they
succeed again once it is back. Login (public budgets) and ExecuteCommand (replay, rate) alike."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import login, start_gateway
from gatewayd.testing.redis import RedisServer
from gatewayd.testing.wait import until


@pytest.mark.parametrize("protocol", ["grpc", "connect"])
@pytest_twisted.ensureDeferred
async def test_redis_down_is_unavailable_then_calls_succeed_again(
    tmp_path: Any, redis_server: RedisServer, protocol: str
) -> None:
    gw = await start_gateway(
        str(tmp_path / "state"),
        stores={"kind": "redis", "redis_url": redis_server.url, "key_prefix": "outage:", "timeout_s": 0.5},
    )
    client: GatewayClient | None = None
    try:
        await until(gw.gateway.stores.ping, "the gateway's Redis connection")
        key, session = await login(gw.url, "outage@example.com")
        client = GatewayClient(gw.url, protocol, key=key, session=session, timeout_s=5.0)
        assert (await client.execute("user.profile.get", None)).result_code == "ok"

        redis_server.stop()
        with pytest.raises(RpcCallError) as refused:
            await client.execute("user.notes.create", {"text": "while Redis is down"})
        assert refused.value.code == Code.UNAVAILABLE
        received = [e["path"] for e in await gw.received()]
        assert not any(p.endswith("/notes") for p in received), "a refused call reached the backend"

        redis_server.start()

        async def succeeds() -> bool:
            assert client is not None
            try:
                response = await client.execute("user.notes.list", None)
            except RpcCallError as e:
                assert e.code == Code.UNAVAILABLE, e
                return False
            return response.result_code == "ok"

        await until(succeeds, "calls to succeed once Redis is back", timeout=15)
    finally:
        if client is not None:
            await client.close()
        await gw.stop()
