"""Gateway key rotation (PROTOCOL.md section 2): publish the next key first, then sign with it.

Key A signs; key B (the next one) and key C (say, another instance's) are published through
``keys.published``. ``/api/v1/public/gateway-keys`` must list all three. A client fetches
the keys once. The gateway is then restarted (same port, same backend) signing with B and
publishing A. The client, holding only what it fetched before the rotation (its key fetcher
answers nothing new afterwards), verifies the responses and events signed after it.
Ignoring ``keys.published`` fails both halves: B would be missing from the list, and the
client could not verify B's signatures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor

from gatewayd.client import GatewayClient
from gatewayd.client.verify import KeyCache, VerificationError
from gatewayd.client.wire import make_transport
from gatewayd.service import Gateway
from gatewayd.signing import GatewayKey
from gatewayd.testing.client import Closer, RunningGateway, login, new_email, start_gateway
from gatewayd.testing.events import RawStream, check_server_time, published_keys, subscribe_request
from gatewayd.testing.wait import WAIT_S


def key_files(tmp_path: Path, name: str) -> tuple[GatewayKey, Path, Path]:
    """A new gateway key: its private key file and its published (public) key file."""
    key = GatewayKey.generate()
    private, public = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
    key.save(private)
    public.write_text(key.published().as_json()["public_key"] + "\n")
    return key, private, public


def as_published(*keys: GatewayKey) -> dict[str, bytes]:
    return {k.key_id: k.public_key for k in keys}


async def restart_with_keys(gw: RunningGateway, signing_key: Path, published: list[Path]) -> RunningGateway:
    """The same gateway restarted on its port with other keys (the backend and its sessions stay)."""
    port_number = gw.port.getHost().port
    config = gw.gateway.config.replace(keys={"signing_key": str(signing_key),
                                             "published": tuple(str(p) for p in published)})
    await gw.stop_gateway()
    gateway = Gateway(config, reactor)
    port = await endpoints.TCP4ServerEndpoint(reactor, port_number, interface="127.0.0.1").listen(gateway.factory)
    gateway.push.start()
    restarted = RunningGateway(gateway, port, gw.backend, gw.backend_service, gw.backend_url, gw._pool)
    await restarted.push_connected()
    return restarted


class FrozenKeys:
    """A client's key fetcher that serves what it fetched first, then never anything new."""

    def __init__(self, fetch: Any) -> None:
        self._fetch = fetch
        self.snapshot: Mapping[str, bytes] | None = None
        self.fetches = 0

    async def _first(self) -> Mapping[str, bytes]:
        self.snapshot = dict(await self._fetch())
        return self.snapshot

    def __call__(self) -> defer.Deferred[Mapping[str, bytes]]:
        self.fetches += 1
        if self.snapshot is None:
            return defer.ensureDeferred(self._first())
        return defer.succeed(dict(self.snapshot))


@pytest_twisted.async_yield_fixture
async def rotation(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    a, a_key, a_pub = key_files(tmp_path, "a")
    b, b_key, b_pub = key_files(tmp_path, "b")
    c, _, c_pub = key_files(tmp_path, "c")
    gw = await start_gateway(str(tmp_path / "state"),
                             keys={"signing_key": str(a_key), "published": (str(b_pub), str(c_pub))})
    state: dict[str, Any] = {"gw": gw, "a": a, "b": b, "c": c, "b_key": b_key, "a_pub": a_pub, "b_pub": b_pub}
    try:
        await gw.push_connected()
        yield state
    finally:
        await state["gw"].stop()


@pytest.mark.parametrize("protocol", ["grpc", "connect"])
@pytest_twisted.ensureDeferred
async def test_a_client_with_the_keys_from_before_a_rotation_verifies_what_is_signed_after_it(
        rotation: dict[str, Any], closer: Closer, protocol: str) -> None:
    gw: RunningGateway = rotation["gw"]
    a, b, c = rotation["a"], rotation["b"], rotation["c"]
    # Every published key and the signing key, each once.
    assert await published_keys(gw.url) == as_published(a, b, c)

    device = await login(gw.url, new_email("rotation"))
    client = closer(GatewayClient(gw.url, protocol, key=device[0], session=device[1], timeout_s=WAIT_S))
    frozen = FrozenKeys(client.fetch_gateway_keys)
    client.keys = KeyCache(frozen)
    before = await client.execute("user.profile.get")
    assert before.ok and before.key_id == a.key_id
    assert frozen.snapshot is not None and set(frozen.snapshot) == {a.key_id, b.key_id, c.key_id}

    # The rotation: B signs now; A stays published for responses signed just before.
    rotation["gw"] = gw = await restart_with_keys(gw, rotation["b_key"], [rotation["a_pub"], rotation["b_pub"]])
    assert await published_keys(gw.url) == as_published(a, b)

    after = await client.execute("user.profile.get")
    assert after.ok and after.key_id == b.key_id
    assert after.json() == before.json()
    assert frozen.fetches == 1  # verified with the keys fetched before the rotation, nothing refetched

    # Events too: the stream's first event is signed by B and checks against the old snapshot.
    stream = RawStream(closer(make_transport(protocol, reactor, gw.url)), subscribe_request(device))
    await stream.wait_messages(1)
    assert stream.messages[0].key_id == b.key_id
    check_server_time(stream.messages[0], dict(frozen.snapshot))
    stream.cancel()


@pytest_twisted.ensureDeferred
async def test_a_key_that_was_never_published_is_refused_by_the_client(
        rotation: dict[str, Any], closer: Closer, tmp_path: Path) -> None:
    """The control: rotating to a key the client never saw published fails verification."""
    gw: RunningGateway = rotation["gw"]
    device = await login(gw.url, new_email("rotation"))
    client = closer(GatewayClient(gw.url, "connect", key=device[0], session=device[1], timeout_s=WAIT_S))
    frozen = FrozenKeys(client.fetch_gateway_keys)
    client.keys = KeyCache(frozen)
    assert (await client.execute("user.profile.get")).ok

    _, surprise_key, _ = key_files(tmp_path, "surprise")
    rotation["gw"] = await restart_with_keys(gw, surprise_key, [rotation["a_pub"]])
    with pytest.raises(VerificationError):
        await client.execute("user.profile.get")
