"""Helpers for test harnesses that drive a real gateway as a device would.

- ``signed_execute_request(...)``: an ExecuteCommandRequest signed by a device
  key, with any field overridable (stale timestamps, wrong hashes, bad
  signatures...) so each rejection of PROTOCOL.md section 3 can be provoked.
- ``login(...)``: a device session through the public REST surface.
- ``start_gateway(...)``: a whole gateway in-process (reference backend on
  its own loopback ports, ``Gateway`` on a free port, push consumer running),
  stopped in order by ``RunningGateway.stop()``; ``running_gateway(...)`` the
  same as an async context manager (a fixture's ``async with``).
- ``new_email(...)``: a user no other call in this process has used.
- ``Closer``: clients and transports to close at the end of a test.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet import endpoints
from twisted.web.client import HTTPConnectionPool

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    RequestEnvelope,
    SubscribeEventsRequest,
)
from gatewayd.client.client import DeviceSession, GatewayClient
from gatewayd.client.keys import DeviceKey
from gatewayd.client.sign import SUBSCRIBE_MESSAGE_TYPE, request_envelope, sign_envelope
from gatewayd.config import Config
from gatewayd.signing import EMPTY_SHA256, sha256
from gatewayd.testing.wait import bounded, until

DEV_CODE = "000000"
_emails = itertools.count()


def new_email(prefix: str = "user") -> str:
    """``{prefix}{n}@example.com``, with ``n`` never repeated in this process."""
    return f"{prefix}{next(_emails)}@example.com"


class Closer:
    """Transports and clients to close at the end of a test, whatever happens (last added, first closed)."""

    def __init__(self) -> None:
        self.things: list[Any] = []

    def __call__(self, thing: Any) -> Any:
        """Remember ``thing`` (anything with an async ``close()``) and return it."""
        self.things.append(thing)
        return thing

    async def close(self) -> None:
        for thing in reversed(self.things):
            await thing.close()


def signed_execute_request(
    key: DeviceKey,
    device_session_id: str,
    message_type: str = "user.profile.get",
    payload: bytes = b"",
    *,
    timestamp_ms: int | None = None,
    clock: Any = None,
    request_id: str | None = None,
    protocol_version: int = 1,
    payload_hash: bytes | None = None,
    signature: bytes | None = None,
) -> ExecuteCommandRequest:
    """A request signed by ``key`` over its own envelope; every field may be overridden.

    ``timestamp_ms`` defaults to ``clock``'s time (the reactor's when no clock
    is given); ``payload_hash`` to SHA-256 of ``payload``; ``signature`` to the
    real signature of whatever envelope results.
    """
    envelope = _envelope(device_session_id, message_type, payload_hash if payload_hash is not None
                         else sha256(payload), timestamp_ms, clock, request_id, protocol_version)
    return ExecuteCommandRequest(envelope=envelope, payload_bytes=payload,
                                 signature=signature if signature is not None else sign_envelope(key, envelope))


def signed_subscribe_request(
    key: DeviceKey,
    device_session_id: str,
    *,
    message_type: str = SUBSCRIBE_MESSAGE_TYPE,
    timestamp_ms: int | None = None,
    clock: Any = None,
    request_id: str | None = None,
    protocol_version: int = 1,
    signature: bytes | None = None,
) -> SubscribeEventsRequest:
    """A SubscribeEventsRequest signed by ``key``; every field may be overridden."""
    envelope = _envelope(device_session_id, message_type, EMPTY_SHA256, timestamp_ms, clock, request_id,
                         protocol_version)
    return SubscribeEventsRequest(envelope=envelope,
                                  signature=signature if signature is not None else sign_envelope(key, envelope))


def _envelope(device_session_id: str, message_type: str, payload_hash: bytes, timestamp_ms: int | None,
              clock: Any, request_id: str | None, protocol_version: int) -> RequestEnvelope:
    if clock is None and timestamp_ms is None:
        from twisted.internet import reactor as clock
    return request_envelope(device_session_id, message_type, payload_hash, clock=clock, request_id=request_id,
                            timestamp_ms=timestamp_ms, protocol_version=protocol_version)


async def login(public_url: str, email: str, key: DeviceKey | None = None, code: str = DEV_CODE,
                reactor: Any = None) -> tuple[DeviceKey, DeviceSession]:
    """A new device session for ``email`` (a fresh key unless ``key`` is given) via the public REST."""
    client = GatewayClient(public_url, key=key, reactor=reactor)
    try:
        session = await client.login(email, code)
    finally:
        await client.close()
    return client.key, session


# --- an in-process gateway ---------------------------------------------------------------


@dataclass
class RunningGateway:
    """A gateway on a loopback port and the reference backend it calls."""

    gateway: Any  # gatewayd.service.Gateway
    port: Any  # IListeningPort
    backend: Any  # gatewayd.devbackend.service.DevBackend
    backend_service: Any  # gatewayd.devbackend.listeners.DevBackendService
    backend_url: str
    _pool: HTTPConnectionPool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def received(self) -> list[dict[str, Any]]:
        """The backend's debug log of every request that reached a user route."""
        response = await treq.get(self.backend_url + "/api/v1/internal/debug/received", pool=self._pool)
        body = await response.content()
        if response.code != 200:
            raise AssertionError(f"debug/received answered {response.code}: {body!r}")
        entries: list[dict[str, Any]] = json.loads(body)
        return entries

    async def push_connected(self) -> None:
        """Wait (bounded) until the push consumer holds its SubscribePush call and the backend sees it."""
        reactor = self.gateway.reactor
        await bounded(self.gateway.push.when_connected(), reactor=reactor)
        await until(lambda: self.backend.bus.subscriber_count == 1, "the backend to see the push call", reactor=reactor)

    async def stop_gateway(self) -> None:
        """Stop the gateway alone (listener, hub, connections, push consumer, backend client, stores);
        the reference backend keeps running, as across a gateway restart."""
        from gatewayd.rpc.codes import Code
        from gatewayd.rpc.errors import RpcError

        gateway = self.gateway
        gateway.factory.accepting = False
        await self.port.stopListening()
        gateway.hub.close(RpcError(Code.UNAVAILABLE, "gateway is shutting down"))
        for protocol in list(gateway.factory.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        await gateway.push.stop()
        await gateway.backend.close()
        await gateway.stores.close()
        await gateway.access_log.close()

    async def stop_backend(self) -> None:
        """Stop the backend's listeners and drop the gateway's kept-alive backend connections."""
        await self.backend_service.stopService()
        await self.gateway.backend.close()

    async def stop(self) -> None:
        """Stop in the gateway's order: listener, hub, connections, push consumer, backend, stores."""
        await self.stop_gateway()
        if self.backend_service.running:
            await self.backend_service.stopService()
        await self._pool.closeCachedConnections()


async def start_gateway(state_dir: str, reactor: Any = None, **config_sections: Any) -> RunningGateway:
    """A gateway in dev configuration on a free loopback port, with a debug reference backend.

    ``config_sections`` go to ``Config.replace`` (``limits={...}``, ``routes={...}``,
    ``server={"max_message_bytes": ...}``, ``stores={"kind": "redis", ...}``...); keys given
    for ``backend``, ``dev`` or ``stores`` are merged over the harness's own.
    """
    from gatewayd.devbackend.listeners import DevBackendService
    from gatewayd.devbackend.service import DevBackend
    from gatewayd.service import Gateway

    if reactor is None:
        from twisted.internet import reactor
    backend = DevBackend(reactor, fixed_code=DEV_CODE, debug=True)
    service = DevBackendService(reactor, backend, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
    await service.startService()
    http_port = service.http_port.getHost().port
    assert service.push_server is not None
    push_port = service.push_server.port_number
    own: dict[str, dict[str, Any]] = {
        "dev": {"enabled": True, "state_dir": state_dir},
        "stores": {"kind": "memory"},
        "backend": {"base_url": f"http://127.0.0.1:{http_port}",
                    "push_endpoint": f"tcp:host=127.0.0.1:port={push_port}",
                    "push_backoff_initial_s": 0.05, "push_backoff_max_s": 0.2},
    }
    for name, section in own.items():
        config_sections[name] = {**section, **config_sections.get(name, {})}
    try:
        gateway = Gateway(Config().replace(**config_sections), reactor)
    except Exception:
        await service.stopService()
        raise
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(gateway.factory)
    gateway.push.start()
    return RunningGateway(gateway, port, backend, service, f"http://127.0.0.1:{http_port}",
                          HTTPConnectionPool(reactor, persistent=False))


@asynccontextmanager
async def running_gateway(state_dir: str, *, push_connected: bool = False, reactor: Any = None,
                          **config_sections: Any) -> AsyncIterator[RunningGateway]:
    """``start_gateway(...)``, stopped on leaving the block; with ``push_connected``, entered
    once its push call is up (``RunningGateway.push_connected``)."""
    gw = await start_gateway(state_dir, reactor, **config_sections)
    try:
        if push_connected:
            await gw.push_connected()
        yield gw
    finally:
        await gw.stop()


def routes_with(extra: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The default route table plus ``{message_type: (method, path)}``, for ``start_gateway(routes=...)``."""
    from gatewayd.config import DEFAULT_ROUTES, Route

    return {**DEFAULT_ROUTES, **{t: Route(m, p) for t, (m, p) in extra.items()}}


__all__ = [
    "DEV_CODE",
    "Closer",
    "RunningGateway",
    "login",
    "new_email",
    "routes_with",
    "signed_execute_request",
    "signed_subscribe_request",
    "start_gateway",
]
