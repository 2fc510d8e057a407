"""The backend REST client: session lookups, user routes, and the public auth proxy's POSTs.

Session lookups and user routes, the per-call hot path, go through a bounded
pool of keep-alive HTTP/1.1 connections (``gatewayd.backend.pool``, parsed by
``httptools``): requests are built as bytes and written in one piece, URLs
are precomputed per route, and calls beyond ``max_connections`` wait for a
pooled connection (at most ``max_waiting`` of them, within the timeout)
instead of opening throwaway connections.

The public auth proxy's POSTs (a few a second at most: every one is behind
a login budget) use treq over ``twisted.web.client.Agent``, as DESIGN.md
says: there the per-call cost does not matter (docs/architecture.md,
"Deviations").

Every transport failure (refused, reset, timed out, malformed answer) becomes
``BackendUnavailable``; an HTTP status, whatever it is, is an answer. A
caller cancelling its Deferred gets ``CancelledError`` and the connection in
use is closed.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from gatewayd.backend.answers import BackendAnswer, BackendUnavailable
from gatewayd.backend.pool import ConnectionPool, PoolStats
from gatewayd.config import Route
from gatewayd.request_body import request_body
from gatewayd.transport.nodelay import NoDelayEndpoint

__all__ = ["BackendAnswer", "BackendClient", "BackendUnavailable", "Session", "parse_session"]

SESSIONS_PATH = "/api/v1/internal/sessions/"
USER_PATH = "/api/v1/user/"


@dataclass(frozen=True, slots=True)
class Session:
    """A device session as the backend knows it."""

    device_session_id: str
    user_id: str
    client_public_key: bytes
    status: str

    @property
    def active(self) -> bool:
        return self.status == "active"


# Characters RFC 3986 allows unescaped in a path segment besides the unreserved ones
# (session and request ids use ":"); everything else, "/" included, is percent-quoted.
_SEGMENT_SAFE = ":@!$&'()*+,;="


def _quote_segment(segment: str) -> str:
    return quote(segment, safe=_SEGMENT_SAFE)


def _quote_segments(path: str) -> str:
    """Percent-quote each segment of a relative path, keeping the slashes."""
    return "/".join(_quote_segment(segment) for segment in path.split("/"))


def _header_text(value: str) -> str:
    """A header value that cannot end the header or the head (as twisted.web's Headers sanitizes)."""
    return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


#: Route heads kept (one per Route object; a reload makes new ones).
_MAX_ROUTE_HEADS = 1024


def _decode_key(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        # Tolerate the URL-safe alphabet; a wrong key simply fails signature checks later.
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def parse_session(body: bytes) -> Session:
    """A ``Session`` from the backend's JSON; ``ValueError`` when it is not one."""
    try:
        data: Any = json.loads(body)
    except RecursionError:
        raise ValueError("session answer nests too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("session answer is not a JSON object")
    fields = ("device_session_id", "user_id", "client_public_key", "status")
    if not all(isinstance(data.get(name), str) for name in fields):
        raise ValueError("session answer lacks a field")
    try:
        key = _decode_key(data["client_public_key"])
    except (binascii.Error, ValueError):
        raise ValueError("session client_public_key is not base64") from None
    return Session(data["device_session_id"], data["user_id"], key, data["status"])


def backend_endpoint(reactor: Any, parts: SplitResult, timeout_s: float, tls: IPolicyForHTTPS | None = None) -> Any:
    """The backend's client endpoint, with TCP_NODELAY, TLS for https (``tls``, default: the
    platform's trust store), built once."""
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=max(1, round(timeout_s)))
    if parts.scheme == "https":
        policy: Any = tls or BrowserLikePolicyForHTTPS()
        endpoint = wrapClientTLS(policy.creatorForNetloc(host.encode(), port), endpoint)
    return NoDelayEndpoint(endpoint)


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """The one backend endpoint for Agent (a plain Agent builds and IDNA-encodes one per request)."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


class _QuietPool(HTTPConnectionPool):
    """Agent's pool for the public proxy, without a "Starting factory" log line per connection."""

    def __init__(self, reactor: Any, max_persistent: int) -> None:
        super().__init__(reactor, persistent=True)
        self.maxPersistentPerHost = max_persistent
        factory = self._factory

        class Quiet(factory):  # type: ignore[valid-type, misc]
            noisy = False

        self._factory = Quiet


BackendObserver = Callable[[str, float, "Failure | None"], None]
"""``observer(operation, seconds, failure)``: one finished backend request; ``operation`` is
``session``, ``route`` or ``public``, ``failure`` None when an answer (any status) came."""


class BackendClient:
    """HTTP calls to the backend of PROTOCOL.md section 5 (see the module docstring).

    ``observer``, when given, hears of every request once it is settled. ``tls`` makes the
    connections of an https ``base_url`` (``gatewayd.backend.tls``: CA bundle, client
    certificate); without it the platform's trust store verifies the backend.
    """

    def __init__(
        self,
        reactor: Any,
        base_url: str,
        timeout_s: float,
        max_connections: int,
        max_body_bytes: int = 4 * 1024 * 1024,
        max_waiting: int = 1024,
        observer: BackendObserver | None = None,
        timer: Callable[[], float] = time.perf_counter,
        tls: IPolicyForHTTPS | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend base_url must be an http(s) URL, got {base_url!r}")
        self._reactor = reactor
        self._observer = observer
        self._timer = timer
        self._timeout_s = timeout_s
        # A bigger answer could not be sent back anyway (the default message limit is 4 MiB).
        self._max_body_bytes = max_body_bytes
        self._base = base_url.rstrip("/")
        self._path_base = parts.path.rstrip("/")
        endpoint = backend_endpoint(reactor, parts, timeout_s, tls)
        # The pool tells the observer of session lookups and routes (no callback per request here).
        self.pool = ConnectionPool(
            reactor, endpoint, max_connections=max_connections, max_waiting=max_waiting,
            timeout_s=timeout_s, max_body_bytes=max_body_bytes, observer=observer, timer=timer,
        )
        # Built once: every request's fixed header lines.
        host = parts.netloc.encode("ascii")
        self._session_head = b" HTTP/1.1\r\nHost: " + host + b"\r\nAccept: application/json\r\n"
        self._route_head = (
            b" HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
        )
        self._route_heads: dict[int, tuple[Route, bytes, bool]] = {}  # id(route) -> (route, head, is GET)
        self._public_pool = _QuietPool(reactor, max_persistent=max_connections)
        agent = Agent.usingEndpointFactory(reactor, _OneEndpoint(endpoint), pool=self._public_pool)
        self._public = HTTPClient(agent, data_to_body_producer=lambda data: request_body(reactor, data))

    @property
    def stats(self) -> PoolStats:
        """The hot-path pool's connections and waiting requests (for ``/metrics``)."""
        return self.pool.stats

    # --- public API -----------------------------------------------------------------

    def get_session(self, device_session_id: str, headers: bytes = b"") -> Deferred[Session | None]:
        """The session, ``None`` when the backend answers 404; ``BackendUnavailable`` otherwise.

        ``headers``: extra header lines, each ending in CRLF, values already safe (trace context).
        """
        target = self._path_base + SESSIONS_PATH + _quote_segment(device_session_id)
        request = b"".join((b"GET ", target.encode("ascii"), self._session_head, headers, b"\r\n"))
        return self.pool.request(request, True, "session").addCallback(self._session_answer)

    def call_route(
        self, route: Route, payload: bytes, user_id: str, device_session_id: str, request_id: str,
        headers: bytes = b"",
    ) -> Deferred[BackendAnswer]:
        """Call a user route with the caller's identity headers; the payload is the JSON body.

        ``headers``: extra header lines, each ending in CRLF, values already safe (trace context).
        """
        prepared = self._route_heads.get(id(route))
        if prepared is None or prepared[0] is not route:
            prepared = self._prepare(route)
        identity = f"X-User-Id: {user_id}\r\nX-Device-Session-Id: {device_session_id}\r\nX-Request-Id: {request_id}\r\n"
        if identity.count("\r") != 3 or identity.count("\n") != 3:
            # A value that could end the header or the head (as twisted.web's Headers sanitizes).
            identity = (f"X-User-Id: {_header_text(user_id)}\r\nX-Device-Session-Id: {_header_text(device_session_id)}"
                        f"\r\nX-Request-Id: {_header_text(request_id)}\r\n")
        if prepared[2]:  # A GET carries no body (and so no Content-Length), as Agent sent it.
            return self.pool.request(b"".join((prepared[1], headers, identity.encode(), b"\r\n")), True, "route")
        return self.pool.request(
            b"".join((prepared[1], headers, identity.encode(), b"Content-Length: %d\r\n\r\n" % len(payload), payload)),
            False, "route",
        )

    def _prepare(self, route: Route) -> tuple[Route, bytes, bool]:
        """``route``'s request line and fixed headers, built once (by identity: routes are not hashed per call)."""
        if len(self._route_heads) >= _MAX_ROUTE_HEADS:
            self._route_heads.clear()  # reloads made new Route objects: start over, bounded
        target = self._path_base + USER_PATH + _quote_segments(route.path)
        line = route.method.encode("ascii") + b" " + target.encode("ascii")
        prepared = self._route_heads[id(route)] = (route, line + self._route_head, route.method == "GET")
        return prepared

    def post_json(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Deferred[BackendAnswer]:
        """POST ``body`` (already JSON) to ``path`` (absolute, e.g. ``/api/v1/public/auth/...``)."""
        start = self._timer()
        url = self._base + "/" + _quote_segments(path.lstrip("/"))
        all_headers: dict[bytes | str, bytes | str] = {"Content-Type": "application/json",
                                                       "Accept": "application/json"}
        all_headers.update(headers or {})
        d: Deferred[Any] = self._public.post(url, data=body, headers=all_headers)
        d.addCallback(self._read_public)
        d.addTimeout(self._timeout_s, self._reactor)
        d.addErrback(_unavailable)
        if self._observer is not None:
            self._observe(d, "public", start)
        return d

    def close(self) -> Deferred[None]:
        """Close the idle connections (call once, at shutdown)."""
        closed = self.pool.close()
        return closed.addCallback(lambda _: self._public_pool.closeCachedConnections())

    # --- internals ------------------------------------------------------------------

    def _observe(self, d: Deferred[Any], operation: str, start: float) -> None:
        observer, timer = self._observer, self._timer

        def settled(result: Any) -> Any:
            if observer is not None:
                observer(operation, timer() - start, result if isinstance(result, Failure) else None)
            return result  # unchanged: the caller sees exactly what it would have seen

        d.addBoth(settled)

    def _read_public(self, response: Any) -> Deferred[BackendAnswer]:  # an IResponse
        from treq import collect

        limit = self._max_body_bytes
        length = response.length
        chunks: list[bytes] = []
        size = 0

        def add(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > limit:
                raise BackendUnavailable("backend answer too large")
            chunks.append(data)

        if isinstance(length, int) and length > limit:
            response.deliverBody(_Discard())
            raise BackendUnavailable("backend answer too large")
        done: Deferred[Any] = collect(response, add)
        return done.addCallback(lambda _: BackendAnswer(response.code, b"".join(chunks)))

    @staticmethod
    def _session_answer(answer: BackendAnswer) -> Session | None:
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise BackendUnavailable(f"session lookup answered HTTP {answer.status}")
        try:
            return parse_session(answer.body)
        except ValueError:
            raise BackendUnavailable("session lookup answered a malformed body") from None


def _unavailable(failure: Failure) -> Failure:
    """A public proxy failure in the client's shapes: cancellation, or ``BackendUnavailable``."""
    if failure.check(BackendUnavailable, CancelledError):
        return failure
    if failure.check(TimeoutError):
        return Failure(BackendUnavailable("backend timed out"))
    return Failure(BackendUnavailable(f"backend unavailable: {type(failure.value).__name__}"))


class _Discard(Protocol):
    """A body protocol that stops the transfer at once (closing the connection)."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.stopProducing()
