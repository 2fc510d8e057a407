"""TLS to the backend: its REST API over https and its push stream over HTTP/2 by ALPN (issue 11 item 7).

``BackendTLS.from_config`` reads ``backend.tls_ca_file`` (the CA bundle the backend's certificate
must chain to; empty: the platform's trust store) and ``backend.tls_client_cert`` /
``backend.tls_client_key`` (presented when the backend asks for a client certificate: mTLS). Both
sides verify the backend's name against its certificate (DNS name or IP address).

- REST: ``policy()`` is the ``BackendClient``'s TLS policy for an ``https://`` base URL; it offers
  ALPN ``http/1.1`` (the client speaks nothing else).
- Push: ``push_connector`` dials a ``tls:host=...:port=...`` push endpoint with ALPN ``h2``
  (gRPC needs it) and ``:scheme https``, and hands the connection over only once the backend
  selected ``h2`` and sent its first HTTP/2 frame: a backend that refuses our certificate (which
  TLS 1.3 tells only after the client's handshake is done), that trusts not us or we not it, or
  that speaks no HTTP/2 is a failed connect (the consumer backs off and retries; ``/readyz`` says
  push is not ready), never a call that opens and drops. Any other endpoint string is dialed as
  it is, in cleartext (h2c).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, clientFromString, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from gatewayd.config import BackendConfig, ConfigError
from gatewayd.deferreds import settle
from gatewayd.rpc.client import DEFAULT_MAX_MESSAGE_BYTES, ConnectionClosedError, H2ClientConnection
from gatewayd.tls_files import client_options, load_certificate, load_trust_root
from gatewayd.transport.nodelay import NoDelayEndpoint

PushConnect = Callable[[], "Deferred[H2ClientConnection]"]

# Keys of Twisted's own ``tls:`` client endpoint that our keys replace.
_REPLACED = {"trustRoots": "backend.tls_ca_file", "certificate": "backend.tls_client_cert",
             "privateKey": "backend.tls_client_key"}


@dataclass(frozen=True)
class BackendTLS:
    """What the gateway trusts of the backend, and the client certificate it presents (if any)."""

    trust_root: Any = None  # an IOpenSSLTrustRoot; None: the platform's trust store
    client_certificate: ssl.PrivateCertificate | None = None

    @classmethod
    def from_config(cls, backend: BackendConfig) -> BackendTLS:
        """Load the ``backend.tls_*`` files; ``ConfigError`` names the key of one that cannot be used."""
        trust_root = load_trust_root(backend.tls_ca_file, "backend.tls_ca_file") if backend.tls_ca_file else None
        client = None
        if backend.tls_client_cert:
            client = load_certificate(backend.tls_client_cert, "backend.tls_client_cert",
                                      backend.tls_client_key, "backend.tls_client_key")
        return cls(trust_root, client)

    def options(self, hostname: str, protocols: list[bytes]) -> IOpenSSLClientConnectionCreator:
        """Client TLS for ``hostname`` offering ALPN ``protocols``."""
        return client_options(hostname, self.trust_root, self.client_certificate, protocols)

    def policy(self) -> IPolicyForHTTPS:
        """The ``BackendClient``'s policy for an https base URL (ALPN ``http/1.1``)."""
        return _RestPolicy(self)


@implementer(IPolicyForHTTPS)
class _RestPolicy:
    def __init__(self, tls: BackendTLS) -> None:
        self._tls = tls

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        return self._tls.options(hostname.decode("idna"), [b"http/1.1"])


def _split_endpoint(description: str) -> tuple[list[str], dict[str, str]]:
    """A Twisted endpoint string's positional and keyword arguments (``\\`` escapes a ``:``)."""
    parts: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if equals:
            kwargs[name] = value
        else:
            args.append(part)
    return args, kwargs


def push_connector(reactor: Any, description: str, tls: BackendTLS | None,
                   max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """What ``PushConsumer`` dials for ``backend.push_endpoint``: an endpoint (cleartext), or for a
    ``tls:`` description a ``PushConnect`` (TLS with ALPN h2, handed over once the backend answered).

    ``tls`` (``BackendTLS.from_config``) is required for a ``tls:`` description.
    """
    if not description.startswith("tls:"):
        return clientFromString(reactor, description)
    if tls is None:
        raise ValueError("a tls: push endpoint needs BackendTLS")
    args, kwargs = _split_endpoint(description)
    for name, key in _REPLACED.items():
        if name in kwargs:
            raise ConfigError(f"backend.push_endpoint: {name}= is not read here; set {key}")
    unknown = set(kwargs) - {"host", "port", "timeout", "bindAddress"}
    if unknown or len(args) > 2:
        raise ConfigError(f"backend.push_endpoint: tls: takes host, port, timeout and bindAddress, "
                          f"got {description!r}")
    host = kwargs.get("host") or (args[0] if args else "")
    try:
        port = int(kwargs.get("port") or (args[1] if len(args) > 1 else "443"))
        timeout = float(kwargs.get("timeout", "30"))
    except ValueError:
        raise ConfigError(f"backend.push_endpoint: port and timeout must be numbers in {description!r}") from None
    if not host:
        raise ConfigError(f"backend.push_endpoint: tls: needs a host, got {description!r}")
    bind = kwargs.get("bindAddress")
    endpoint = NoDelayEndpoint(wrapClientTLS(
        tls.options(host, [b"h2"]),
        HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=(bind, 0) if bind else None),
    ))
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def connect() -> Deferred[H2ClientConnection]:
        protocol = _TLSH2(authority, scheme="https", max_message_bytes=max_message_bytes, reactor=reactor)
        return _when_accepted(connectProtocol(endpoint, protocol), protocol, reactor, timeout)

    return connect


@implementer(IHandshakeListener)  # Twisted's TLS layer then tells it when the handshake is done
class _TLSH2(H2ClientConnection):
    """An HTTP/2 client connection over TLS that knows when the backend accepted it.

    ``accepted`` fires on the backend's first bytes (its SETTINGS frame): under TLS 1.3 the
    client's handshake is done before the server has checked the client's certificate, so only
    an answer proves the backend took us. It errbacks when the connection ends first, or at once
    when the handshake selected anything but ``h2``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted: Deferred[None] = Deferred()
        self._refusal: str | None = None

    def handshakeCompleted(self) -> None:
        selected = getattr(self.transport, "negotiatedProtocol", None)
        if selected != b"h2":
            self._refusal = f"the backend's push endpoint did not select h2 by ALPN (got {selected!r})"
            self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if not self.accepted.called:
            self.accepted.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            super().connectionLost()
        else:
            super().connectionLost(reason)
        if not self.accepted.called:
            detail = reason.getErrorMessage() if reason is not None else "connection lost"
            self.accepted.errback(ConnectionClosedError(self._refusal or f"TLS to the backend failed: {detail}"))


def _when_accepted(connecting: Deferred[Any], protocol: _TLSH2, reactor: Any,
                   timeout_s: float) -> Deferred[H2ClientConnection]:
    """Fire with ``protocol`` once the backend accepted it (``_TLSH2.accepted``), within ``timeout_s``."""

    def abort() -> None:
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]

    def cancel(_: Deferred[H2ClientConnection]) -> None:
        if not connecting.called:
            connecting.cancel()
        abort()

    done: Deferred[H2ClientConnection] = Deferred(cancel)
    # Connected, handshaken and answered within the endpoint's timeout, else the attempt is dropped.
    timer = reactor.callLater(timeout_s, cancel, done)

    def settled(result: Any) -> None:
        if timer.active():
            timer.cancel()
        settle(done, result if isinstance(result, Failure) else protocol)

    connecting.addCallback(lambda _: protocol.accepted).addBoth(settled)
    return done
