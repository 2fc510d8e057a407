"""The backend REST client: session lookups, user routes, and the public auth proxy's POSTs.

One ``BackendClient`` per process holds a persistent ``HTTPConnectionPool``
(``maxPersistentPerHost = max_connections``), so calls reuse keep-alive
connections instead of paying a TCP handshake each.

This sits directly on ``twisted.web.client.Agent`` (the layer treq wraps)
rather than on ``treq.request``: treq re-parses every URL with hyperlink,
wraps each call in cookie and redirect agents and streams bytes bodies
through a cooperator task, which is measurable at thousands of calls a
second. Here URLs are precomputed per route, the Host header is built once
(so Agent does not copy the headers) and bodies are written in one piece.

Every transport failure (refused, reset, timed out, malformed answer) becomes
``BackendUnavailable``; an HTTP status, whatever it is, is an answer.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import SplitResult, quote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from gatewayd.config import Route
from gatewayd.transport.nodelay import NoDelayEndpoint

log = Logger()

SESSIONS_PATH = "/api/v1/internal/sessions/"
USER_PATH = "/api/v1/user/"


class BackendUnavailable(Exception):
    """The backend could not be reached or did not answer in time (or answered garbage)."""


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


@dataclass(frozen=True, slots=True)
class BackendAnswer:
    """An HTTP answer from the backend: any status, the raw body."""

    status: int
    body: bytes


@implementer(IBodyProducer)
class _BytesProducer:
    """Write a bytes body in one piece (no cooperator round trips, unlike FileBodyProducer)."""

    __slots__ = ("_body", "length")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


# Characters RFC 3986 allows unescaped in a path segment besides the unreserved ones
# (session and request ids use ":"); everything else, "/" included, is percent-quoted.
_SEGMENT_SAFE = ":@!$&'()*+,;="


class _BodyReader(Protocol):
    """Collect a response body up to a limit; cancelling stops the transfer (closes the connection)."""

    def __init__(self, status: int, limit: int) -> None:
        self._status = status
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self.done: Deferred[BackendAnswer] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._chunks.clear()
            self.done.errback(BackendUnavailable("backend answer too large"))
            self._stop()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        # PotentialDataLoss: a body delimited by the connection's end, complete as far as HTTP can tell.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(BackendAnswer(self._status, b"".join(self._chunks)))
        else:
            self.done.errback(reason)

    def _cancel(self, _: Deferred[BackendAnswer]) -> None:
        self._stop()

    def _stop(self) -> None:
        # deliverBody's transport is a producer proxy: stopProducing closes the connection.
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


class _Discard(Protocol):
    def connectionMade(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()


def _quote_segment(segment: str) -> str:
    return quote(segment, safe=_SEGMENT_SAFE)


def _quote_segments(path: str) -> str:
    """Percent-quote each segment of a relative path, keeping the slashes."""
    return "/".join(_quote_segment(segment) for segment in path.split("/"))


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


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's per-connection factory, without a "Starting factory" log line per connection."""

    noisy = False


@implementer(IAgentEndpointFactory)
class _BackendEndpoint:
    """The one backend host's endpoint, built once.

    A plain Agent builds a HostnameEndpoint (IDNA-encoding the host) for every
    request, even when a pooled connection then serves it: a tenth of the
    gateway's CPU per call at thousands of calls a second.
    """

    def __init__(self, reactor: Any, parts: SplitResult) -> None:
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        endpoint: Any = HostnameEndpoint(reactor, host, port)
        if parts.scheme == "https":
            endpoint = wrapClientTLS(BrowserLikePolicyForHTTPS().creatorForNetloc(host.encode(), port), endpoint)
        self._endpoint = NoDelayEndpoint(endpoint)

    def endpointForURI(self, uri: Any) -> Any:
        return self._endpoint


class BackendClient:
    """HTTP calls to the backend of PROTOCOL.md section 5 over a persistent connection pool."""

    def __init__(
        self,
        reactor: Any,
        base_url: str,
        timeout_s: float,
        max_connections: int,
        max_body_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend base_url must be an http(s) URL, got {base_url!r}")
        self._reactor: IReactorTime = reactor
        self._timeout_s = timeout_s
        # A bigger answer could not be sent back anyway (the default message limit is 4 MiB).
        self._max_body_bytes = max_body_bytes
        self._base = base_url.rstrip("/")
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool._factory = _QuietClientFactory
        self._pool.maxPersistentPerHost = max_connections
        self._agent = Agent.usingEndpointFactory(reactor, _BackendEndpoint(reactor, parts), pool=self._pool)
        # Built once: a Host header present up front spares Agent a copy of the headers per call.
        self._host = parts.netloc.encode("ascii")
        self._json = [b"application/json"]
        self._get_headers = Headers({b"host": [self._host], b"accept": self._json})
        self._route_urls: dict[Route, bytes] = {}

    # --- public API -----------------------------------------------------------------

    def get_session(self, device_session_id: str) -> Deferred[Session | None]:
        """The session, ``None`` when the backend answers 404; ``BackendUnavailable`` otherwise."""
        url = (self._base + SESSIONS_PATH + _quote_segment(device_session_id)).encode("ascii")
        d = self._request(b"GET", url, self._get_headers, None)
        return d.addCallback(self._session_answer)

    def call_route(
        self, route: Route, payload: bytes, user_id: str, device_session_id: str, request_id: str
    ) -> Deferred[BackendAnswer]:
        """Call a user route with the caller's identity headers; the payload is the JSON body."""
        url = self._route_urls.get(route)
        if url is None:
            url = (self._base + USER_PATH + _quote_segments(route.path)).encode("ascii")
            self._route_urls[route] = url
        headers = Headers(
            {
                b"host": [self._host],
                b"content-type": self._json,
                b"accept": self._json,
                b"x-user-id": [user_id.encode()],
                b"x-device-session-id": [device_session_id.encode()],
                b"x-request-id": [request_id.encode()],
            }
        )
        method = route.method.encode("ascii")
        body = None if method == b"GET" else _BytesProducer(payload)
        return self._request(method, url, headers, body)

    def post_json(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Deferred[BackendAnswer]:
        """POST ``body`` (already JSON) to ``path`` (absolute, e.g. ``/api/v1/public/auth/...``)."""
        raw = Headers({b"host": [self._host], b"content-type": self._json, b"accept": self._json})
        for name, value in (headers or {}).items():
            raw.setRawHeaders(name.encode("ascii"), [value.encode()])
        url = (self._base + "/" + _quote_segments(path.lstrip("/"))).encode("ascii")
        return self._request(b"POST", url, raw, _BytesProducer(body))

    def close(self) -> Deferred[None]:
        """Close the pool's cached connections (call once, at shutdown)."""
        return self._pool.closeCachedConnections()

    # --- internals ------------------------------------------------------------------

    def _request(
        self, method: bytes, url: bytes, headers: Headers, body: _BytesProducer | None
    ) -> Deferred[BackendAnswer]:
        inner: Deferred[Any] = self._agent.request(method, url, headers, cast(IBodyProducer | None, body))
        inner.addCallback(self._read)
        # The caller's cancellation surfaces from Agent in several shapes (ConnectingCancelledError,
        # ResponseNeverReceived, ...), as does a timeout; only these flags tell them apart.
        cancelled = timed_out = False

        def expire() -> None:
            nonlocal timed_out
            # Not inner.called: that is already true while inner waits on Agent's inner steps.
            if not outer.called:
                timed_out = True
                inner.cancel()  # aborts the connection

        # One timeout for connect + request + body. Timers run before the reactor reads its
        # sockets, so on a saturated reactor an answer already waiting in a socket would lose
        # to its own timeout: expire one turn later, after the next read.
        reactor: Any = self._reactor
        timer = reactor.callLater(self._timeout_s, reactor.callLater, 0, expire)

        def cancel(_: Deferred[BackendAnswer]) -> None:
            nonlocal cancelled
            cancelled = True
            inner.cancel()

        outer: Deferred[BackendAnswer] = Deferred(cancel)

        def settle(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if outer.called:
                return
            if not isinstance(result, Failure):
                outer.callback(result)
            elif cancelled:
                outer.errback(Failure(CancelledError()))
            elif timed_out:
                log.warn("backend request timed out after {timeout_s}s", timeout_s=self._timeout_s)
                outer.errback(BackendUnavailable("backend timed out"))
            elif result.check(BackendUnavailable):
                outer.errback(result)
            else:
                outer.errback(BackendUnavailable(f"backend unavailable: {type(result.value).__name__}"))

        inner.addBoth(settle)
        return outer

    def _read(self, response: Any) -> Deferred[BackendAnswer]:  # an IResponse
        length = response.length
        if isinstance(length, int) and length > self._max_body_bytes:
            response.deliverBody(_Discard())
            raise BackendUnavailable("backend answer too large")
        reader = _BodyReader(response.code, self._max_body_bytes)
        response.deliverBody(reader)
        return reader.done

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
