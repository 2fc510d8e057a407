"""A reference backend on aiohttp (PROTOCOL.md sections 5 and 6), for the benchmarks only.

``python -m bench.ref_backend --http PORT --push PORT``

Both servers of ``bench/bench_reference.py`` (gatewayd and the grpc.aio reference
pipeline) talk to their own copy of this process, so only the server differs.
Everything is in memory: users, sessions, notes. Routes:

- ``POST /api/v1/public/auth/send-email-code`` and ``…/confirm-email-code`` (code ``000000``);
- ``GET /api/v1/internal/sessions/{device_session_id}``;
- ``GET|PATCH /api/v1/user/profile``, ``GET|POST /api/v1/user/notes``, ``POST /api/v1/user/sessions/revoke``
  (need ``X-User-Id``, ``X-Device-Session-Id``, ``X-Request-Id``).

``push.v1.Push/SubscribePush`` is served by ``grpc.aio`` in the same event loop:
notes and profile updates go to every open push stream as ``ClientEvent``s,
revocations as ``SessionInvalidation``s. Loopback only; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web

from gatewayd._proto.push.v1 import push_pb2

DEV_CODE = "000000"
Handler = Callable[[web.Request, "User", bytes], Awaitable[web.Response]]


@dataclass
class User:
    user_id: str
    email: str
    display_name: str = ""
    notes: list[dict[str, str]] = field(default_factory=list)

    def profile(self) -> dict[str, str]:
        return {"user_id": self.user_id, "email": self.email, "display_name": self.display_name}


def _token() -> str:
    return base64.urlsafe_b64encode(os.urandom(15)).decode()


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error": {"code": code, "message": message}})


async def _object(request: web.Request) -> dict[str, Any] | None:
    try:
        value = json.loads(await request.read() or b"null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Backend:
    """The state and the HTTP handlers; ``events`` feeds the open push streams."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.users_by_email: dict[str, User] = {}
        self.challenges: dict[str, str] = {}  # challenge_id -> email
        self.sessions: dict[str, dict[str, str]] = {}
        self.push_queues: list[asyncio.Queue[push_pb2.PushEvent]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/public/auth/send-email-code", self.send_email_code)
        app.router.add_post("/api/v1/public/auth/confirm-email-code", self.confirm_email_code)
        app.router.add_get("/api/v1/internal/sessions/{device_session_id}", self.get_session)
        app.router.add_get("/api/v1/user/profile", self._user(self.get_profile))
        app.router.add_patch("/api/v1/user/profile", self._user(self.patch_profile))
        app.router.add_get("/api/v1/user/notes", self._user(self.list_notes))
        app.router.add_post("/api/v1/user/notes", self._user(self.create_note))
        app.router.add_post("/api/v1/user/sessions/revoke", self._user(self.revoke))
        return app

    # -- public auth ------------------------------------------------------------------------------

    async def send_email_code(self, request: web.Request) -> web.Response:
        body = await _object(request)
        if body is None or not isinstance(body.get("email"), str) or "@" not in body["email"]:
            return _error(400, "invalid_argument", "email is required")
        challenge = _token()
        self.challenges[challenge] = body["email"].lower()
        return _json(200, {"challenge_id": challenge})

    async def confirm_email_code(self, request: web.Request) -> web.Response:
        body = await _object(request)
        if body is None or not all(isinstance(body.get(k), str) for k in ("challenge_id", "code",
                                                                          "client_public_key")):
            return _error(400, "invalid_argument", "challenge_id, code and client_public_key are required")
        try:
            key = base64.b64decode(body["client_public_key"], validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            return _error(400, "invalid_argument", "client_public_key must be a base64 Ed25519 key")
        email = self.challenges.pop(body["challenge_id"], None)
        if email is None or body["code"] != DEV_CODE:
            return _error(401, "unauthenticated", "wrong code or unknown challenge")
        user = self.users_by_email.get(email)
        if user is None:
            user = User(f"u-{_token()}", email)
            self.users[user.user_id] = self.users_by_email[email] = user
        session_id = f"s-{_token()}"
        self.sessions[session_id] = {"device_session_id": session_id, "user_id": user.user_id,
                                     "client_public_key": base64.b64encode(key).decode(), "status": "active"}
        return _json(200, {"device_session_id": session_id, "user_id": user.user_id})

    # -- internal ---------------------------------------------------------------------------------

    async def get_session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["device_session_id"])
        if session is None:
            return _error(404, "not_found", "unknown session")
        return _json(200, session)

    # -- user routes ------------------------------------------------------------------------------

    def _user(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            headers = request.headers
            user_id = headers.get("X-User-Id")
            if not user_id or not headers.get("X-Device-Session-Id") or not headers.get("X-Request-Id"):
                return _error(400, "invalid_argument", "X-User-Id, X-Device-Session-Id and X-Request-Id are required")
            user = self.users.get(user_id)
            if user is None:
                return _error(404, "not_found", "unknown user")
            return await handler(request, user, await request.read())

        return route

    async def get_profile(self, request: web.Request, user: User, body: bytes) -> web.Response:
        return _json(200, user.profile())

    async def patch_profile(self, request: web.Request, user: User, body: bytes) -> web.Response:
        fields = await _object(request)
        if fields is None or not isinstance(fields.get("display_name"), str):
            return _error(400, "invalid_argument", "display_name is required")
        user.display_name = fields["display_name"][:100]
        self._publish(user.user_id, "user.profile.updated", user.profile())
        return _json(200, user.profile())

    async def list_notes(self, request: web.Request, user: User, body: bytes) -> web.Response:
        return _json(200, {"notes": user.notes[-100:]})

    async def create_note(self, request: web.Request, user: User, body: bytes) -> web.Response:
        fields = await _object(request)
        if fields is None or not isinstance(fields.get("text"), str):
            return _error(400, "invalid_argument", "text is required")
        note = {"note_id": f"n-{_token()}", "text": fields["text"][:4096]}
        user.notes.append(note)
        self._publish(user.user_id, "user.note.created", note)
        return _json(200, note)

    async def revoke(self, request: web.Request, user: User, body: bytes) -> web.Response:
        fields = (await _object(request) or {}) if body.strip() else {}
        target = fields.get("device_session_id")
        revoked = 0
        for session in self.sessions.values():
            if session["user_id"] == user.user_id and session["status"] == "active" and target in (None, session[
                    "device_session_id"]):
                session["status"] = "revoked"
                revoked += 1
        self._push(push_pb2.PushEvent(session_invalidation=push_pb2.SessionInvalidation(
            user_id=user.user_id, device_session_id=target or "", reason="revoked")))
        return _json(200, {"revoked": revoked})

    # -- push -------------------------------------------------------------------------------------

    def _publish(self, user_id: str, event_type: str, payload: dict[str, str]) -> None:
        self._push(push_pb2.PushEvent(client_event=push_pb2.ClientEvent(
            user_id=user_id, event_type=event_type, event_id=f"e-{_token()}",
            payload_bytes=json.dumps(payload, separators=(",", ":")).encode(), timestamp_ms=int(time.time() * 1000))))

    def _push(self, event: push_pb2.PushEvent) -> None:
        for queue in self.push_queues:
            queue.put_nowait(event)

    async def subscribe_push(self, request: push_pb2.SubscribePushRequest,
                             context: grpc.aio.ServicerContext) -> AsyncIterator[push_pb2.PushEvent]:
        queue: asyncio.Queue[push_pb2.PushEvent] = asyncio.Queue()
        self.push_queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.push_queues.remove(queue)


async def serve(http_port: int, push_port: int) -> None:
    backend = Backend()
    runner = web.AppRunner(backend.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()  # aiohttp's default listen backlog (128)
    push = grpc.aio.server()
    push.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("push.v1.Push", {
        "SubscribePush": grpc.unary_stream_rpc_method_handler(
            backend.subscribe_push, request_deserializer=push_pb2.SubscribePushRequest.FromString,
            response_serializer=push_pb2.PushEvent.SerializeToString)}),))
    push.add_insecure_port(f"127.0.0.1:{push_port}")
    await push.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await push.stop(0)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, required=True)
    parser.add_argument("--push", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.http, args.push))


if __name__ == "__main__":
    main()
