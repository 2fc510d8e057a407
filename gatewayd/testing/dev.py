"""A dev gateway for client tests: gatewayd and its reference backend inside the test's process.

``DevGateway.start()`` runs the gateway as ``twist gatewayd --dev`` does (memory stores, the
reference backend on loopback ports of its own, the fixed email code ``000000``, a generated
signing key), on the reactor it is given, and hands a test what it needs: where it listens
(``url``, ``rest_url``), the keys it signs with (``gateway_keys``), logged-in clients
(``login``), and a way into the backend to do what a real backend does on its own: push an
event (``publish``) and revoke a session (``revoke``).

``InMemoryGateway`` is the same gateway on a ``MemoryNetwork``: no sockets and no running
reactor; the test moves bytes and time itself (``result``, ``flush``, ``advance``).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Self

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.client.client import GatewayClient, Payload, encode_payload
from gatewayd.client.keys import DeviceKey
from gatewayd.testing.client import DEV_CODE, RunningGateway, new_email, start_gateway
from gatewayd.testing.memory import MemoryNetwork
from gatewayd.testing.wait import WAIT_S

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from gatewayd.devbackend.service import DevBackend

_event_ids = itertools.count(1)


class UnknownSession(LookupError):
    """The reference backend has no session with this device_session_id."""


class DevGateway:
    """A running dev gateway and its reference backend (see the module docstring).

    Every client made by ``client()`` or ``login()`` is closed by ``stop()``.
    """

    def __init__(self, running: RunningGateway, reactor: Any, own_state_dir: str | None = None) -> None:
        self.running = running
        self.reactor = reactor
        self._own_state_dir = own_state_dir
        self._clients: list[GatewayClient] = []

    @classmethod
    async def start(cls, state_dir: str | None = None, reactor: Any = None, **config_sections: Any) -> Self:
        """Start a gateway in dev configuration; fires once its push call to the backend is open.

        ``state_dir`` holds the generated signing key (a temporary folder, removed by ``stop()``,
        when not given). ``config_sections`` are ``Config.replace`` sections merged over the dev
        ones, e.g. ``limits={"session_rate": {"rate": 1.0, "burst": 2}}``.
        """
        if reactor is None:
            from twisted.internet import reactor
        own = tempfile.mkdtemp(prefix="gatewayd-dev-") if state_dir is None else None
        try:
            running = await start_gateway(state_dir or own or "", reactor, **config_sections)
        except BaseException:
            if own is not None:
                shutil.rmtree(own, ignore_errors=True)
            raise
        dev = cls(running, reactor, own)
        try:
            await running.push_connected()
        except BaseException:
            await dev.stop()
            raise
        return dev

    # -- where it is ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The gateway: gRPC, gRPC-Web and Connect, and the public REST surface, on one port."""
        return self.running.url

    @property
    def rest_url(self) -> str:
        """Where the public REST surface (PROTOCOL.md section 4) is served: ``GatewayClient``'s ``public_url``."""
        return self.running.url

    @property
    def backend_url(self) -> str:
        """The reference backend's own REST API (what the gateway calls; PROTOCOL.md sections 5 and 6)."""
        return self.running.backend_url

    @property
    def gateway_keys(self) -> dict[str, bytes]:
        """``{key_id: raw Ed25519 public key}``: what ``GET /api/v1/public/gateway-keys`` publishes."""
        return {key.key_id: key.public_key for key in self.running.gateway.keyring.published}

    @property
    def backend(self) -> DevBackend:
        """The reference backend itself (users, sessions, notes, its push bus)."""
        backend: DevBackend = self.running.backend
        return backend

    @property
    def gateway(self) -> Any:
        """The ``gatewayd.service.Gateway`` (its config, hub, pipeline...)."""
        return self.running.gateway

    # -- clients -------------------------------------------------------------------------------

    def client(self, protocol: str = "connect", **options: Any) -> GatewayClient:
        """A ``GatewayClient`` of this gateway on this reactor, not logged in (closed by ``stop()``).

        ``options`` are ``GatewayClient`` keyword arguments (``key``, ``session``, ``timeout_s``...).
        """
        client = GatewayClient(self.url, protocol, reactor=self.reactor, public_url=self.rest_url, **options)
        self._clients.append(client)
        return client

    async def login(self, email: str | None = None, protocol: str = "connect", *, key: DeviceKey | None = None,
                    **options: Any) -> GatewayClient:
        """A client logged in as ``email`` (a new user when not given) with the dev code."""
        client = self.client(protocol, key=key, **options)
        await client.login(email or new_email(), DEV_CODE)
        return client

    # -- what the backend does on its own ------------------------------------------------------

    def publish(self, event_type: str, payload: Payload = None, *,
                user_id: str | None = None, device_session_id: str | None = None,
                event_id: str | None = None) -> str:
        """Push a client event, as the backend does, to one session or to every session of a user.

        Give ``device_session_id`` (one session; its user is looked up) or ``user_id`` (every
        session of the user). ``payload`` is a JSON value or raw bytes. Returns the event_id.
        Delivery is asynchronous and at most once: a stream receives the event if it is open
        when the gateway gets it, which holds once its first event (``gateway.server_time``)
        has arrived.
        """
        if device_session_id is not None:
            session_user = self._user_of(device_session_id)
            if user_id is not None and user_id != session_user:
                raise ValueError(f"session {device_session_id!r} belongs to {session_user!r}, not {user_id!r}")
            user_id = session_user
        if user_id is None:
            raise ValueError("publish needs a user_id or a device_session_id")
        event_id = event_id if event_id is not None else f"ev_test_{next(_event_ids)}"
        self.backend.bus.publish(push_pb2.PushEvent(client_event=push_pb2.ClientEvent(
            user_id=user_id, device_session_id=device_session_id or "", event_type=event_type,
            event_id=event_id, payload_bytes=encode_payload(payload), timestamp_ms=int(self.reactor.seconds() * 1000))))
        return event_id

    def revoke(self, device_session_id: str) -> int:
        """Revoke one session, as the backend does: 1 if it was active, 0 if already revoked.

        The gateway learns of it over the push call (a ``SessionInvalidation``): the session's
        streams end with FAILED_PRECONDITION and its next calls are refused.
        """
        return self.backend.revoke_sessions(self._user_of(device_session_id), device_session_id)

    def received(self) -> list[dict[str, Any]]:
        """Every request that reached the backend's user routes, oldest first (its debug log)."""
        return list(self.backend.received)

    def _user_of(self, device_session_id: str) -> str:
        session = self.backend.session(device_session_id)
        if session is None:
            raise UnknownSession(device_session_id)
        return session.user_id

    # -- the end ---------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the gateway and the backend, close every client made here, remove a temporary state folder.

        The gateway stops first, as in a shutdown: its streams end with UNAVAILABLE.
        """
        try:
            await self.running.stop()
            for client in reversed(self._clients):
                await client.close()
            self._clients.clear()
        finally:
            if self._own_state_dir is not None:
                shutil.rmtree(self._own_state_dir, ignore_errors=True)


class InMemoryGateway(DevGateway):
    """A ``DevGateway`` on a ``MemoryNetwork``: nothing listens on a socket and time moves when told.

    ``InMemoryGateway.open()`` returns it started; async methods (``login``, clients' calls)
    return Deferreds or coroutines that ``result()`` runs to completion::

        with InMemoryGateway.open() as gateway:
            client = gateway.result(gateway.login())
            assert gateway.result(client.execute("user.profile.get")).ok
    """

    @classmethod
    def open(cls, state_dir: str | None = None, network: MemoryNetwork | None = None,
             **config_sections: Any) -> InMemoryGateway:
        """A started gateway on ``network`` (a new one by default); see ``DevGateway.start``."""
        network = network if network is not None else MemoryNetwork()
        # Starting may poll (bounded) for the push call: let the clock move as far as that needs.
        gateway: InMemoryGateway = network.result(cls.start(state_dir, network, **config_sections), within=WAIT_S)
        return gateway

    @property
    def network(self) -> MemoryNetwork:
        network: MemoryNetwork = self.reactor
        return network

    def result(self, d: Deferred[Any] | Any, within: float = 0.0) -> Any:
        """Run the network until ``d`` fires; its result (``MemoryNetwork.result``)."""
        return self.network.result(d, within)

    def flush(self) -> None:
        """Deliver every byte and run every due timer until the network is quiet."""
        self.network.flush()

    def advance(self, seconds: float) -> None:
        """Move the clock, running timers (and delivering what they write) on the way."""
        self.network.advance(seconds)

    def close(self) -> None:
        """``stop()``, run to completion."""
        self.result(self.stop())

    def __enter__(self) -> InMemoryGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DevGateway", "InMemoryGateway", "UnknownSession"]
