"""The dev backend's HTTP surface: one leaf ``Resource`` dispatching on (path, method).

A dict lookup per request instead of klein's routing or a ``getChild`` walk:
the gateway's benchmark drives thousands of requests a second through here.

Routes (PROTOCOL.md sections 4-6, plus the debug surface when enabled):

- ``POST /api/v1/public/auth/send-email-code``, ``POST …/confirm-email-code``
- ``GET /api/v1/internal/sessions/{device_session_id}``
- ``GET|PATCH /api/v1/user/profile``, ``GET|POST /api/v1/user/notes``,
  ``POST /api/v1/user/sessions/revoke`` (need X-User-Id, X-Device-Session-Id, X-Request-Id)
- debug: ``GET|POST /api/v1/user/debug/status/{code}`` answers with that status;
  ``GET|DELETE /api/v1/internal/debug/received`` lists or clears the log of every request
  under ``/api/v1/user/``: ``[{"method", "path", "user_id", "device_session_id",
  "request_id", "body"}]`` (headers absent: null; body as UTF-8 text).

Every answer is JSON; errors are ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from gatewayd.devbackend.errors import ApiError, invalid_argument, not_found

if TYPE_CHECKING:
    from gatewayd.devbackend.service import DevBackend

Answer = tuple[int, Any]
Handler = Callable[[Request], Answer]
UserHandler = Callable[[Request, str, bytes], Answer]

USER_PREFIX = b"/api/v1/user/"
SESSIONS_PREFIX = b"/api/v1/internal/sessions/"
DEBUG_STATUS_PREFIX = b"/api/v1/user/debug/status/"
DEBUG_RECEIVED_PATH = b"/api/v1/internal/debug/received"
MAX_ID_CHARS = 128

_log = Logger()
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class DevBackendResource(Resource):
    """Serves a ``DevBackend``; debug routes only when ``backend.debug`` is on."""

    isLeaf = True

    def __init__(self, backend: DevBackend) -> None:
        super().__init__()
        self._backend = backend
        user = self._user_route
        self._routes: dict[bytes, dict[bytes, Handler]] = {
            b"/api/v1/public/auth/send-email-code": {b"POST": self._send_email_code},
            b"/api/v1/public/auth/confirm-email-code": {b"POST": self._confirm_email_code},
            b"/api/v1/user/profile": {b"GET": user(self._get_profile), b"PATCH": user(self._patch_profile)},
            b"/api/v1/user/notes": {b"GET": user(self._list_notes), b"POST": user(self._create_note)},
            b"/api/v1/user/sessions/revoke": {b"POST": user(self._revoke)},
        }
        self._session_routes: dict[bytes, Handler] = {b"GET": self._get_session}
        self._debug_status_routes: dict[bytes, Handler] = {}
        if backend.debug:
            self._routes[DEBUG_RECEIVED_PATH] = {
                b"GET": self._get_received,
                b"DELETE": self._clear_received,
            }
            status = user(self._debug_status)
            self._debug_status_routes = {b"GET": status, b"POST": status}

    def render(self, request: Request) -> bytes:
        path: bytes = request.path
        method: bytes = request.method
        by_method = self._routes.get(path)
        if by_method is None:
            if path.startswith(SESSIONS_PREFIX):
                by_method = self._session_routes
            elif path.startswith(DEBUG_STATUS_PREFIX) and self._debug_status_routes:
                by_method = self._debug_status_routes
        if self._backend.debug and path.startswith(USER_PREFIX):
            # Every request under /api/v1/user/, routed or not: tests prove a rejected call never got here.
            self._record(request)
        try:
            if by_method is None:
                raise not_found("no such route")
            handler = by_method.get(method)
            if handler is None:
                raise ApiError(405, "unimplemented", "method not allowed")
            status, body = handler(request)
        except ApiError as e:
            status, body = e.status, {"error": {"code": e.code, "message": e.message}}
        except Exception:
            _log.failure("dev backend: {method} {path} failed", method=method, path=path)
            status, body = 500, {"error": {"code": "internal", "message": "internal error"}}
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return _dumps(body).encode()

    # -- public auth ----------------------------------------------------------

    def _send_email_code(self, request: Request) -> Answer:
        fields = parse_object(_read(request), {"email": str}, required=("email",))
        return 200, {"challenge_id": self._backend.send_email_code(fields["email"])}

    def _confirm_email_code(self, request: Request) -> Answer:
        fields = parse_object(
            _read(request),
            {"challenge_id": str, "code": str, "client_public_key": str},
            required=("challenge_id", "code", "client_public_key"),
        )
        session = self._backend.confirm_email_code(
            fields["challenge_id"], fields["code"], fields["client_public_key"]
        )
        return 200, {"device_session_id": session.device_session_id, "user_id": session.user_id}

    # -- internal ---------------------------------------------------------------

    def _get_session(self, request: Request) -> Answer:
        device_session_id = request.path[len(SESSIONS_PREFIX) :].decode("utf-8", "replace")
        session = self._backend.session(device_session_id)
        if session is None:
            raise not_found("unknown session")
        return 200, session.as_json()

    def _get_received(self, request: Request) -> Answer:
        return 200, list(self._backend.received)

    def _clear_received(self, request: Request) -> Answer:
        self._backend.received.clear()
        return 200, {"cleared": True}

    # -- user routes --------------------------------------------------------------

    def _user_route(self, handler: UserHandler) -> Handler:
        """Wrap a user route: require the gateway's headers, hand it the body."""

        def route(request: Request) -> Answer:
            body = _read(request)
            user_id = _header(request, b"x-user-id")
            device_session_id = _header(request, b"x-device-session-id")
            request_id = _header(request, b"x-request-id")
            if not user_id or not device_session_id or not request_id:
                raise invalid_argument("X-User-Id, X-Device-Session-Id and X-Request-Id are required")
            return handler(request, user_id, body)

        return route

    def _record(self, request: Request) -> None:
        body = _read(request)
        if request.content is not None:
            request.content.seek(0)  # the route reads it again
        self._backend.record(
            {
                "method": request.method.decode("ascii", "replace"),
                "path": request.path.decode("utf-8", "replace"),
                "user_id": _header(request, b"x-user-id"),
                "device_session_id": _header(request, b"x-device-session-id"),
                "request_id": _header(request, b"x-request-id"),
                "body": body.decode("utf-8", "replace"),
            }
        )

    def _get_profile(self, request: Request, user_id: str, body: bytes) -> Answer:
        return 200, self._backend.profile(user_id)

    def _patch_profile(self, request: Request, user_id: str, body: bytes) -> Answer:
        fields = parse_object(body, {"display_name": str}, required=("display_name",))
        return 200, self._backend.update_profile(user_id, fields["display_name"])

    def _create_note(self, request: Request, user_id: str, body: bytes) -> Answer:
        fields = parse_object(body, {"text": str}, required=("text",))
        return 200, self._backend.create_note(user_id, fields["text"])

    def _list_notes(self, request: Request, user_id: str, body: bytes) -> Answer:
        return 200, {"notes": self._backend.list_notes(user_id)}

    def _revoke(self, request: Request, user_id: str, body: bytes) -> Answer:
        # The gateway sends payload_bytes as the body and an empty payload is allowed: same as {}.
        fields = parse_object(body, {"device_session_id": str}) if body.strip() else {}
        target: str | None = fields.get("device_session_id")
        if target is not None and not 1 <= len(target) <= MAX_ID_CHARS:
            raise invalid_argument("device_session_id must be 1 to 128 characters")
        return 200, {"revoked": self._backend.revoke_sessions(user_id, target)}

    def _debug_status(self, request: Request, user_id: str, body: bytes) -> Answer:
        raw = request.path[len(DEBUG_STATUS_PREFIX) :]
        status = int(raw) if raw.isdigit() and len(raw) == 3 else 0
        # 204 and 304 cannot carry the JSON body every answer here has.
        if not 200 <= status <= 599 or status in (204, 304):
            raise invalid_argument("status must be 200..599 (not 204 or 304)")
        return status, {"status": status}


def _read(request: Request) -> bytes:
    content = request.content
    return content.read() if content is not None else b""


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("utf-8", "replace") if value is not None else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


# Built once: json.loads with keyword arguments builds a new decoder per call.
_decoder = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def parse_object(body: bytes, fields: dict[str, type], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parse ``body`` as one strict JSON object with only ``fields`` (name → type), ``required`` present.

    Strict: UTF-8, no NaN/Infinity, no duplicate keys, no unknown keys, exact
    types (``true`` is not an int). Raises ``ApiError`` 400 otherwise.
    """
    try:
        value = _decoder.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise invalid_argument("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise invalid_argument("body must be a JSON object")
    for name, item in value.items():
        expected = fields.get(name)
        if expected is None:
            raise invalid_argument(f"unknown field {name[:40]!r}")
        if type(item) is not expected:
            raise invalid_argument(f"{name} has the wrong type")
    for name in required:
        if name not in value:
            raise invalid_argument(f"{name} is required")
    return value
