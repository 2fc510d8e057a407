"""The public REST surface (PROTOCOL.md sections 4 and 7) as a klein application.

Routes:

- ``POST /api/v1/public/auth/send-email-code`` and ``.../confirm-email-code``:
  checked in this order, the first failure deciding the answer: Content-Type
  ``application/json`` (415), body size (413), strict JSON shape (400),
  budgets (429 with ``Retry-After``; 503 when the rate store fails: fail
  closed); only then forwarded to the backend, whose answer is passed on
  sanitized (``gatewayd.public.backend_answers``); unreachable: 503.
- ``GET /api/v1/public/gateway-keys``: the published gateway keys, cacheable 60 s.
- ``GET /healthz``: 200 while the process serves. ``GET /readyz``: 200 when
  every dependency check says ready within its timeout, else 503.
- ``OPTIONS`` on the public paths: CORS preflight; every answer carries the
  CORS headers for an allowed ``Origin``.

Every error is ``{"error": {"code", "message"}}`` JSON with a matching status.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from klein import Klein
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from gatewayd.backend.rest import BackendAnswer, BackendUnavailable
from gatewayd.config import PublicConfig
from gatewayd.observability.access import mark_rest_stage
from gatewayd.observability.propagation import request_trace_context
from gatewayd.public.abuse import CONFIRM_EMAIL_CODE_PATH, SEND_EMAIL_CODE_PATH, AbuseGuard, RequestKind
from gatewayd.public.backend_answers import answer_error, success_body, unavailable
from gatewayd.public.validation import (
    ConfirmEmailCode,
    PublicError,
    SendEmailCode,
    check_content_type,
    check_size,
    error_body,
    parse_confirm_email_code,
    parse_send_email_code,
)
from gatewayd.signing import Keyring
from gatewayd.stores.base import RateLimiter
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.server import peer_resolver

GATEWAY_KEYS_PATH = "/api/v1/public/gateway-keys"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
KEYS_MAX_AGE_S = 60
DEFAULT_READINESS_TIMEOUT_S = 2.0

#: A dependency's readiness: a constant, or a callable answering (now or later) True when ready.
ReadinessCheck = bool | Callable[[], "Deferred[bool] | bool"]

_log = Logger()
_JSON = b"application/json"


class AuthBackend(Protocol):
    """What the public surface needs of the backend client (``gatewayd.backend.rest.BackendClient``)."""

    def post_json(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Deferred[BackendAnswer]:
        ...


class _PeerView:
    """A twisted.web request in the shape ``peer_resolver`` reads: ``.peer`` and lowercase ``.headers``."""

    __slots__ = ("headers", "peer")

    def __init__(self, request: Request) -> None:
        address = request.getClientAddress()
        self.peer: str = getattr(address, "host", "") or ""
        self.headers: dict[str, str] = {
            name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
            for name, values in request.requestHeaders.getAllRawHeaders()
        }


class PublicApp:
    """The public REST surface; ``resource()`` is what the listener serves for non-RPC paths.

    ``readiness`` maps a dependency name (``backend``, ``stores``, ``push``...)
    to its check; each check gets ``readiness_timeout_s`` and checks run
    concurrently. ``trusted_proxies`` (addresses or networks) are the peers
    whose ``X-Forwarded-For`` is believed when telling the client's IP.
    """

    app = Klein()

    def __init__(
        self,
        *,
        backend: AuthBackend,
        rate: RateLimiter,
        keyring: Keyring,
        clock: IReactorTime,
        config: PublicConfig | None = None,
        cors: CorsPolicy | None = None,
        trusted_proxies: Iterable[str] = (),
        readiness: Mapping[str, ReadinessCheck] | None = None,
        readiness_timeout_s: float = DEFAULT_READINESS_TIMEOUT_S,
    ) -> None:
        self._backend = backend
        self._keyring = keyring
        self._clock = clock
        self._config = config or PublicConfig()
        self._rate = rate
        self._guard = AbuseGuard(rate, self._config)
        self._cors = cors or CorsPolicy()
        self._resolve_peer = peer_resolver(trusted_proxies)
        self._readiness = dict(readiness or {})
        self._readiness_timeout_s = readiness_timeout_s

    def reconfigure(self, keyring: Keyring, config: PublicConfig) -> None:
        """Publish ``keyring`` and apply ``config``'s budgets and limits to requests from now on (SIGHUP)."""
        self._keyring = keyring
        self._config = config
        self._guard = AbuseGuard(self._rate, config)

    def resource(self) -> IResource:
        """The twisted.web resource serving every route of this surface."""
        resource: IResource = self.app.resource()
        return resource

    def client_ip(self, request: Request) -> str:
        """The client's IP: the socket peer, or what a trusted proxy forwarded."""
        return self._resolve_peer(_PeerView(request))  # type: ignore[arg-type]

    # -- auth ------------------------------------------------------------------------

    @app.route(SEND_EMAIL_CODE_PATH, methods=["POST"])
    def send_email_code(self, request: Request) -> Deferred[bytes]:
        return self._auth(request, RequestKind.SEND_EMAIL_CODE, parse_send_email_code)

    @app.route(CONFIRM_EMAIL_CODE_PATH, methods=["POST"])
    def confirm_email_code(self, request: Request) -> Deferred[bytes]:
        return self._auth(request, RequestKind.CONFIRM_EMAIL_CODE, parse_confirm_email_code)

    def _auth(
        self,
        request: Request,
        kind: RequestKind,
        parse: Callable[[bytes], SendEmailCode | ConfirmEmailCode],
    ) -> Deferred[bytes]:
        return defer.ensureDeferred(self._auth_steps(request, kind, parse))

    async def _auth_steps(
        self,
        request: Request,
        kind: RequestKind,
        parse: Callable[[bytes], SendEmailCode | ConfirmEmailCode],
    ) -> bytes:
        self._common_headers(request)
        request.setHeader(b"cache-control", b"no-store")
        mark_rest_stage(request, "content_type")
        content_types = request.requestHeaders.getRawHeaders(b"content-type") or []
        if len(content_types) > 1:
            raise PublicError(415, "invalid_argument", "exactly one Content-Type, application/json")
        check_content_type(content_types[0].decode("latin-1") if content_types else None)
        mark_rest_stage(request, "body_size")
        body = _read_body(request, self._config.max_body_bytes)
        check_size(body, self._config.max_body_bytes)
        mark_rest_stage(request, "validation")
        parsed = parse(body)
        mark_rest_stage(request, "rate_limit")
        await self._guard.admit(kind, self.client_ip(request), parsed)
        mark_rest_stage(request, "backend")
        try:
            answer = await self._backend.post_json(kind.path, parsed.as_json(), request_trace_context(request))
        except BackendUnavailable:
            raise unavailable() from None
        if 200 <= answer.status <= 299:
            return _json(request, 200, success_body(kind, answer.body))
        raise answer_error(answer.status, answer.body)

    # -- keys and health ---------------------------------------------------------------

    @app.route(GATEWAY_KEYS_PATH, methods=["GET"])
    def gateway_keys(self, request: Request) -> bytes:
        self._common_headers(request)
        request.setHeader(b"cache-control", b"public, max-age=%d" % KEYS_MAX_AGE_S)
        return _json(request, 200, _dumps(self._keyring.as_json()))

    @app.route(HEALTHZ_PATH, methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        self._common_headers(request)
        request.setHeader(b"cache-control", b"no-store")
        return _json(request, 200, b'{"status":"ok"}')

    @app.route(READYZ_PATH, methods=["GET"])
    def readyz(self, request: Request) -> Deferred[bytes]:
        self._common_headers(request)
        request.setHeader(b"cache-control", b"no-store")

        def answer(checks: dict[str, str]) -> bytes:
            ready = all(state == "ok" for state in checks.values())
            body = {"status": "ready" if ready else "not_ready", "checks": checks}
            return _json(request, 200 if ready else 503, _dumps(body))

        return self.readiness().addCallback(answer)

    def readiness(self) -> Deferred[dict[str, str]]:
        """Each dependency's state: ``ok``, ``not_ready``, ``timeout`` or ``error``; never errbacks."""
        names = list(self._readiness)
        checks = [self._check(name, self._readiness[name]) for name in names]
        d: Deferred[list[str]] = defer.gatherResults(checks)
        return d.addCallback(lambda states: dict(zip(names, states, strict=True)))

    def _check(self, name: str, check: ReadinessCheck) -> Deferred[str]:
        d: Deferred[Any] = defer.succeed(check) if isinstance(check, bool) else defer.maybeDeferred(check)
        d.addTimeout(self._readiness_timeout_s, self._clock)

        def failed(failure: Failure) -> str:
            if failure.check(DeferredTimeoutError):
                return "timeout"
            _log.failure("readiness check {name} failed", failure, name=name)
            return "error"

        return d.addCallbacks(lambda ready: "ok" if ready is True else "not_ready", failed)

    # -- CORS preflight ------------------------------------------------------------------

    @app.route(SEND_EMAIL_CODE_PATH, methods=["OPTIONS"], endpoint="preflight_send")
    @app.route(CONFIRM_EMAIL_CODE_PATH, methods=["OPTIONS"], endpoint="preflight_confirm")
    @app.route(GATEWAY_KEYS_PATH, methods=["OPTIONS"], endpoint="preflight_keys")
    def preflight(self, request: Request) -> bytes:
        origin = _header(request, b"origin")
        headers = self._cors.preflight_headers(origin, _header(request, b"access-control-request-headers"))
        if headers is None:
            raise PublicError(403, "permission_denied", "origin not allowed")
        for name, value in headers:
            request.setHeader(name, value)
        request.setResponseCode(204)
        return b""

    # -- errors ----------------------------------------------------------------------------

    # klein passes an IRequest; these are twisted.web Requests (hence ``Any``).
    @app.handle_errors(PublicError)
    def public_error(self, request: Any, failure: Failure) -> bytes:
        error: PublicError = failure.value  # type: ignore[assignment]
        self._common_headers(request)
        if error.retry_after_s is not None:
            request.setHeader(b"retry-after", b"%d" % error.retry_after_s)
        return _json(request, error.status, error.body())

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Failure) -> bytes:
        self._common_headers(request)
        return _json(request, 404, error_body("not_found", "no such route"))

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: Any, failure: Failure) -> bytes:
        self._common_headers(request)
        allowed = getattr(failure.value, "valid_methods", None) or []
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return _json(request, 405, error_body("unimplemented", "method not allowed"))

    @app.handle_errors(HTTPException)
    def http_exception(self, request: Any, failure: Failure) -> bytes:
        self._common_headers(request)
        status = int(getattr(failure.value, "code", None) or 400)
        return _json(request, status, error_body("invalid_argument", "bad request"))

    @app.handle_errors(Exception)
    def internal_error(self, request: Any, failure: Failure) -> bytes | None:
        if failure.check(defer.CancelledError):
            return None  # the client went away; nothing to answer
        _log.failure("public: {path} failed", failure, path=request.path)
        self._common_headers(request)
        return _json(request, 500, error_body("internal", "internal error"))

    # -- helpers ---------------------------------------------------------------------------

    def _common_headers(self, request: Request) -> None:
        for name, value in self._cors.response_headers(_header(request, b"origin")):
            request.setHeader(name, value)
        request.setHeader(b"x-content-type-options", b"nosniff")


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _read_body(request: Request, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the body: enough to tell it is too large."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(limit + 1)
    return data


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json(request: Request, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", _JSON)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


__all__ = ["AuthBackend", "PublicApp", "ReadinessCheck"]
