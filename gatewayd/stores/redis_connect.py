"""How the gateway's Redis connections are made: one server, or the primary Sentinel names; plain or TLS.

``open_factory(config, reactor)`` returns a txredisapi factory keeping
``pool_size`` connections up in the background; ``stores/redis.py`` runs the
commands. What the ``[stores]`` keys select:

- ``redis_url`` alone: connections to that host and port.
- ``redis_sentinels`` (``["host:port", ...]``): before every connection the
  sentinels are asked, in order, for the address of the primary of
  ``redis_sentinel_service`` (``SENTINEL GET-MASTER-ADDR-BY-NAME``); the one
  that answers moves to the front. The new connection sends ``ROLE`` and is
  dropped unless the server says ``master``, so a stale answer never gets a
  write to a replica. ``redis_url`` then gives only the scheme, credentials
  and database; its host and port are not used.
- ``rediss://``: every connection, to Redis and to the sentinels, is TLS,
  verified against ``redis_tls_ca`` (PEM bundle; empty: the system's trust
  store) for ``redis_tls_server_name`` (empty: the host connected to, a name
  or an IP address), with the client certificate ``redis_tls_certificate`` /
  ``redis_tls_private_key`` when set (mutual TLS).

Failing over: a connection to a primary that died is lost at once and every
call fails closed (``StoreUnavailable``) until a connection is up again; each
slot reconnects (first at once, then backing off from
``reconnect_initial_s`` to ``reconnect_max_s``), asking the sentinels again
every time, so calls succeed again as soon as the sentinels have promoted a
replica. A connection whose command is refused with ``READONLY`` (its server
was turned into a replica while connected) is dropped too, so its slot
reconnects to whatever is primary now; when a rediscovery finds a different
primary, the connections still open to the old one are dropped.

Not txredisapi's own ``Sentinel``: while no sentinel reports a healthy
primary (during a failover) its discovery waits a fixed 10 s before
failing, so calls would stay refused for 10 s after the failover finished;
and its primary connections cannot use TLS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer, error, protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import PrivateCertificate
from twisted.logger import Logger
from zope.interface import implementer

from gatewayd.config import ConfigError, StoresConfig
from gatewayd.stores.resp import encode_command
from gatewayd.tls_files import client_options, load_certificate, load_trust_root

log = Logger()


def split_host_port(value: str, key: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` as (host, port); ``ConfigError`` naming ``key`` otherwise."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return host, int(port)


@dataclass(frozen=True)
class RedisTarget:
    """What ``[stores]`` says about reaching Redis, checked: every error is a ``ConfigError`` naming its key."""

    host: str  # "" with sentinels
    port: int
    db: int
    username: str | None
    password: str | None
    sentinels: tuple[tuple[str, int], ...]
    service: str
    sentinel_username: str | None
    sentinel_password: str | None
    tls: bool
    tls_server_name: str
    trust_root: Any = None  # twisted's IOpenSSLTrustRoot; None: the platform's
    client_certificate: PrivateCertificate | None = None

    @classmethod
    def from_config(cls, config: StoresConfig) -> RedisTarget:
        """Parse ``redis_url`` and the ``redis_sentinel*`` / ``redis_tls*`` keys; read the TLS files."""
        sentinels = tuple(
            split_host_port(s, f"stores.redis_sentinels[{i}]") for i, s in enumerate(config.redis_sentinels)
        )
        parts = urlsplit(config.redis_url)
        try:
            port = parts.port or 6379
        except ValueError:
            port = 0
        path = parts.path.strip("/")
        if (
            parts.scheme not in ("redis", "rediss")
            or not (parts.hostname or sentinels)
            or not port
            or not (path.isdigit() or not path)
        ):
            raise ConfigError(
                f"stores.redis_url: expected redis://[user:password@]host[:port][/db] or rediss://..., "
                f"got {config.redis_url!r}"
            )
        if sentinels and not config.redis_sentinel_service:
            raise ConfigError("stores.redis_sentinel_service: must not be empty with redis_sentinels")
        tls = parts.scheme == "rediss"
        tls_keys = ("redis_tls_ca", "redis_tls_certificate", "redis_tls_private_key", "redis_tls_server_name")
        if not tls:
            for name in tls_keys:
                if getattr(config, name):
                    raise ConfigError(f"stores.{name}: set, but stores.redis_url is not rediss:// (no TLS)")
        if bool(config.redis_tls_certificate) != bool(config.redis_tls_private_key):
            raise ConfigError("stores.redis_tls_certificate and stores.redis_tls_private_key: set both or neither")
        trust_root = load_trust_root(config.redis_tls_ca, "stores.redis_tls_ca") if config.redis_tls_ca else None
        client_certificate = None
        if config.redis_tls_certificate:
            client_certificate = load_certificate(
                config.redis_tls_certificate, "stores.redis_tls_certificate",
                config.redis_tls_private_key, "stores.redis_tls_private_key",
            )
        return cls(
            host=parts.hostname or "",
            port=port,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            sentinels=sentinels,
            service=config.redis_sentinel_service,
            sentinel_username=config.redis_sentinel_username or None,
            sentinel_password=config.redis_sentinel_password or None,
            tls=tls,
            tls_server_name=config.redis_tls_server_name,
            trust_root=trust_root,
            client_certificate=client_certificate,
        )

    @property
    def name(self) -> str:
        """For logs: ``host:port``, or ``sentinel:service``."""
        return f"sentinel:{self.service}" if self.sentinels else f"{self.host}:{self.port}"

    def endpoint(self, reactor: Any, host: str, port: int, timeout_s: float) -> IStreamClientEndpoint:
        """A client endpoint to ``host:port``, TLS when the URL says ``rediss://``."""
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout_s)
        if self.tls:
            options = client_options(self.tls_server_name or host, self.trust_root, self.client_certificate)
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint


class RedisConnection(txredisapi.RedisProtocol):
    """A pool connection; dropped when its server refuses a write with ``READONLY``.

    The server was made a replica while we were connected (a failover, a
    ``REPLICAOF``): the command fails (fail closed) and the slot reconnects,
    which with sentinels finds the new primary.
    """

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        return encode_command(args)  # txredisapi's bytes, at a fraction of the cost

    def replyReceived(self, reply: Any) -> None:
        super().replyReceived(reply)
        if isinstance(reply, txredisapi.ResponseError) and "READONLY" in str(reply) and self.transport:
            log.warn("redis: {peer} is read-only (a replica now); reconnecting", peer=self.transport.getPeer())
            self.transport.loseConnection()


class PrimaryConnection(RedisConnection):
    """A pool connection that is usable only once ``ROLE`` says its server is the primary."""

    password: str | None  # set by txredisapi's constructor

    @defer.inlineCallbacks
    def connectionMade(self) -> Any:
        try:
            if self.password is not None:
                yield self.auth(self.password, self.username)
            role = yield self.role()
        except Exception as e:  # an error reply, a timeout, a lost connection
            log.warn("redis: dropping a new connection: AUTH or ROLE failed: {error}", error=e)
            self.transport.loseConnection()
            return
        if not role or role[0] != "master":
            log.warn("redis: {peer} is not the primary (ROLE {role}); asking the sentinels again",
                     peer=self.transport.getPeer(), role=role[0] if role else None)
            self.transport.loseConnection()
            return
        self.password = None  # authenticated above; the base class would send AUTH again
        yield super().connectionMade()


class _KeepTryingFactory(txredisapi.RedisFactory):
    """A RedisFactory that never gives up reconnecting.

    txredisapi stops reconnecting for good when AUTH or SELECT fails on a new
    connection, and a timeout counts as failing: one slow moment of Redis
    during a reconnect would leave the gateway without a store until
    restarted. Here the connection is dropped and tried again with backoff.
    ``disconnect()`` (the stores' ``close``) still stops everything.
    """

    def stopTrying(self) -> Deferred[None]:
        return defer.succeed(None)


class _OneShotFactory(protocol.ClientFactory):
    """Builds the one short-lived connection that asks a sentinel."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def buildProtocol(self, addr: Any) -> txredisapi.RedisProtocol:
        conn = txredisapi.RedisProtocol(replyTimeout=self.timeout_s, convertNumbers=False)
        conn.factory = self
        return conn


class NoPrimaryKnown(error.ConnectError):
    """No sentinel answered with the primary's address."""


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects to the primary the sentinels name at the time of each ``connect``.

    Each sentinel is asked over a connection of its own, closed after the
    answer; a sentinel that is down, slow (``timeout_s`` to connect and again
    to answer) or does not know the service is skipped. ``on_primary`` is told
    each address found, before connecting to it.
    """

    def __init__(
        self,
        reactor: Any,
        target: RedisTarget,
        timeout_s: float,
        on_primary: Callable[[tuple[str, int]], None] = lambda address: None,
    ) -> None:
        self._reactor = reactor
        self._target = target
        self._sentinels: list[tuple[str, int]] = list(target.sentinels)
        self._timeout_s = timeout_s
        self._on_primary = on_primary

    @property
    def sentinels(self) -> Sequence[tuple[str, int]]:
        """In the order they are asked: the last one that answered first."""
        return tuple(self._sentinels)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocol_factory: IProtocolFactory) -> Any:
        host, port = await self.discover()
        self._on_primary((host, port))
        return await self._target.endpoint(self._reactor, host, port, self._timeout_s).connect(protocol_factory)

    async def discover(self) -> tuple[str, int]:
        """The primary's address per the first sentinel that knows it; ``NoPrimaryKnown`` when none does."""
        problems = []
        for sentinel in list(self._sentinels):
            try:
                address = await self._ask(*sentinel)
            except defer.CancelledError:
                raise
            except Exception as e:
                problems.append(f"{sentinel[0]}:{sentinel[1]}: {e}")
                continue
            if address is None:
                problems.append(f"{sentinel[0]}:{sentinel[1]}: does not know {self._target.service!r}")
                continue
            # Redis' guidelines for Sentinel clients: the sentinel that answered is asked first next time.
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
            return address
        raise NoPrimaryKnown(string=f"no sentinel named the primary of {self._target.service!r}: "
                             + "; ".join(problems))

    async def _ask(self, host: str, port: int) -> tuple[str, int] | None:
        endpoint = self._target.endpoint(self._reactor, host, port, self._timeout_s)
        conn: Any = await endpoint.connect(_OneShotFactory(self._timeout_s))
        try:
            if self._target.sentinel_password is not None:
                await conn.auth(self._target.sentinel_password, self._target.sentinel_username)
            reply = await conn.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._target.service)
        finally:
            conn.transport.loseConnection()
        if not reply:
            return None
        primary_host, primary_port = reply
        return str(primary_host), int(primary_port)


def open_factory(
    config: StoresConfig,
    reactor: IReactorTime,
    *,
    pool_size: int = 2,
    reconnect_initial_s: float = 0.1,
    reconnect_max_s: float = 2.0,
) -> txredisapi.RedisFactory:
    """A txredisapi factory connecting ``pool_size`` connections as ``config`` says, in the background.

    Commands time out after ``config.timeout_s`` (so does each connection
    attempt and each question to a sentinel). ``disconnect()`` on the factory
    stops everything. Raises ``ConfigError`` for a config that cannot work.
    """
    target = RedisTarget.from_config(config)
    factory = _KeepTryingFactory(
        target.name,
        target.db or None,  # no SELECT for the default database: one less step that can fail
        pool_size,
        isLazy=True,
        password=target.password,
        username=target.username,
        replyTimeout=config.timeout_s,
    )
    factory.initialDelay = reconnect_initial_s
    factory.maxDelay = reconnect_max_s
    # A lazy pool's "all connected" Deferred has no listener; a failed
    # connection would errback it and log an unhandled error.
    factory.deferred.addErrback(lambda _: None)
    endpoint: IStreamClientEndpoint
    if target.sentinels:
        factory.protocol = PrimaryConnection
        endpoint = SentinelEndpoint(reactor, target, config.timeout_s, _drop_others_on_change(factory))
    else:
        factory.protocol = RedisConnection
        endpoint = target.endpoint(reactor, target.host, target.port, config.timeout_s)
    factory.endpoint = endpoint  # for tests and debugging: where connections go
    factory.startConnecting(endpoint)
    return factory


def _drop_others_on_change(factory: txredisapi.RedisFactory) -> Callable[[tuple[str, int]], None]:
    """When the sentinels name a new primary, close the connections still open to the old one."""
    current: list[tuple[str, int]] = []

    def on_primary(address: tuple[str, int]) -> None:
        if current and current[0] != address:
            log.info("redis: the sentinels name a new primary {host}:{port}", host=address[0], port=address[1])
            for conn in list(factory.pool):
                conn.transport.loseConnection()
        current[:] = [address]

    return on_primary


__all__ = [
    "NoPrimaryKnown",
    "PrimaryConnection",
    "RedisConnection",
    "RedisTarget",
    "SentinelEndpoint",
    "open_factory",
    "split_host_port",
]
