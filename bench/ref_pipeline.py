"""The reference: PROTOCOL.md section 3 written plainly on ``grpc.aio`` with an ``aiohttp`` client.

``python -m bench.ref_pipeline --port P --backend http://127.0.0.1:B --key FILE``

What a competent team would write in an afternoon instead of gatewayd, to
measure gatewayd against (issue 13). ``ExecuteCommand`` only, the same stages
in the same order and with the same codes as the gateway:

1. envelope (version first, then every field);
2. session: ``GET /api/v1/internal/sessions/{id}`` through an ``aiohttp``
   keep-alive pool, cached for 5 s, one lookup in flight per session;
3. payload hash; 4. Ed25519 verify (pynacl); 5. freshness (300 s), then replay
   (in-memory, kept 600 s); 6. four in-memory token buckets (IP, session, user,
   message_type per user); 7. routing over the same pool (``backend.max_connections``
   = 64 like the gateway's; calls beyond it wait for a connection) and a response
   signed over gatewayd's signing input with the gateway key.

Budgets are as large as the bench's gateway config (1,000,000/s): they run, they
never refuse. Loopback only; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse, ResponseEnvelope
from gatewayd.pipeline.result_codes import result_code_for_status
from gatewayd.signing import GatewayKey, request_signing_input, response_signing_input

IDENTIFIER = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch
MESSAGE_TYPE = re.compile(r"[!-~]{1,128}").fullmatch
ROUTES = {
    "user.profile.get": ("GET", "profile"),
    "user.profile.update": ("PATCH", "profile"),
    "user.notes.create": ("POST", "notes"),
    "user.notes.list": ("GET", "notes"),
    "user.sessions.revoke": ("POST", "sessions/revoke"),
}
FRESHNESS_S = 300.0
SESSION_TTL_S = 5.0
BUDGET_RATE, BUDGET_BURST = 1_000_000.0, 1_000_000.0


class Rejected(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class Session:
    device_session_id: str
    user_id: str
    key: VerifyKey
    active: bool


class Pipeline:
    def __init__(self, backend_url: str, key: GatewayKey, max_connections: int) -> None:
        self.backend_url = backend_url.rstrip("/")
        self.key = key
        self.max_connections = max_connections
        self.http: aiohttp.ClientSession | None = None
        self.sessions: dict[str, tuple[float, Session | None]] = {}
        self.lookups: dict[str, asyncio.Future[Session | None]] = {}
        self.replay: dict[str, float] = {}
        self.buckets: dict[str, list[float]] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=60)
        self.http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5))

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    # -- stage 2: session lookup with a cache -----------------------------------------------------

    async def session(self, session_id: str) -> Session | None:
        now = time.monotonic()
        cached = self.sessions.get(session_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self.lookups.get(session_id)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(session_id))
            self.lookups[session_id] = pending
            pending.add_done_callback(lambda _: self.lookups.pop(session_id, None))
        return await asyncio.shield(pending)

    async def _lookup(self, session_id: str) -> Session | None:
        assert self.http is not None
        try:
            async with self.http.get(f"{self.backend_url}/api/v1/internal/sessions/{session_id}") as r:
                if r.status == 404:
                    session = None
                elif r.status == 200:
                    body = await r.json()
                    session = Session(body["device_session_id"], body["user_id"],
                                      VerifyKey(base64.b64decode(body["client_public_key"])),
                                      body["status"] == "active")
                else:
                    raise Rejected(grpc.StatusCode.UNAVAILABLE, "session backend unavailable")
        except (TimeoutError, aiohttp.ClientError):
            raise Rejected(grpc.StatusCode.UNAVAILABLE, "session backend unavailable") from None
        if len(self.sessions) > 100_000:
            self.sessions.clear()
        self.sessions[session_id] = (time.monotonic() + SESSION_TTL_S, session)
        return session

    # -- stage 6: token buckets --------------------------------------------------------------------

    def spend(self, key: str, now: float) -> bool:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = [BUDGET_BURST, now]
        tokens = min(BUDGET_BURST, bucket[0] + (now - bucket[1]) * BUDGET_RATE)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    # -- the stages in order -----------------------------------------------------------------------

    async def execute(self, request: ExecuteCommandRequest, peer: str) -> ExecuteCommandResponse:
        # 1. envelope
        if not request.HasField("envelope"):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "missing envelope")
        env = request.envelope
        if env.protocol_version != 1:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, "protocol_version must be 1")
        if (not IDENTIFIER(env.device_session_id) or not IDENTIFIER(env.request_id) or env.timestamp_ms <= 0
                or not MESSAGE_TYPE(env.message_type) or len(env.payload_hash) != 32
                or len(request.signature) != 64):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "malformed envelope")
        # 2. session
        session = await self.session(env.device_session_id)
        if session is None or not session.active:
            raise Rejected(grpc.StatusCode.UNAUTHENTICATED, "unknown or inactive session")
        # 3. payload hash
        if hashlib.sha256(request.payload_bytes).digest() != env.payload_hash:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "payload_hash does not match")
        # 4. signature
        try:
            session.key.verify(request_signing_input(env.protocol_version, env.device_session_id, env.request_id,
                                                     env.timestamp_ms, env.message_type, env.payload_hash),
                               request.signature)
        except BadSignatureError:
            raise Rejected(grpc.StatusCode.UNAUTHENTICATED, "bad signature") from None
        # 5. freshness, then replay
        now = time.time()
        if abs(now * 1000 - env.timestamp_ms) > FRESHNESS_S * 1000:
            raise Rejected(grpc.StatusCode.FAILED_PRECONDITION, f"stale request; gateway time {int(now * 1000)}")
        replay_key = f"{env.device_session_id}:{env.request_id}"
        if self.replay.get(replay_key, 0.0) > now:
            raise Rejected(grpc.StatusCode.ALREADY_EXISTS, "request_id already used")
        self.replay[replay_key] = now + 2 * FRESHNESS_S
        # 6. rate budgets (all four are spent, like the gateway)
        host = peer.rsplit(":", 1)[0]
        mono = time.monotonic()
        allowed = [self.spend(f"ip:{host}", mono), self.spend(f"session:{env.device_session_id}", mono),
                   self.spend(f"user:{session.user_id}", mono),
                   self.spend(f"type:{session.user_id}:{env.message_type}", mono)]
        if not all(allowed):
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")
        # 7. routing
        route = ROUTES.get(env.message_type)
        if route is None:
            raise Rejected(grpc.StatusCode.UNIMPLEMENTED, "no route for message_type")
        assert self.http is not None
        method, path = route
        headers = {"X-User-Id": session.user_id, "X-Device-Session-Id": env.device_session_id,
                   "X-Request-Id": env.request_id}
        if method != "GET":
            headers["Content-Type"] = "application/json"
        try:
            async with self.http.request(method, f"{self.backend_url}/api/v1/user/{path}", headers=headers,
                                         data=None if method == "GET" else request.payload_bytes) as r:
                status, body = r.status, await r.read()
        except (TimeoutError, aiohttp.ClientError):
            raise Rejected(grpc.StatusCode.UNAVAILABLE, "backend unavailable") from None
        # the signed response
        result_code = result_code_for_status(status)
        payload_hash = hashlib.sha256(body).digest()
        timestamp = int(time.time() * 1000)
        signature = self.key.sign(response_signing_input(1, env.device_session_id, env.request_id, timestamp,
                                                         result_code, payload_hash, self.key.key_id))
        return ExecuteCommandResponse(
            envelope=ResponseEnvelope(protocol_version=1, request_id=env.request_id, timestamp_ms=timestamp,
                                      result_code=result_code, payload_hash=payload_hash, key_id=self.key.key_id),
            payload_bytes=body, signature=signature)

    async def purge(self) -> None:
        """Drop expired replay reservations every 10 s (a plain sweep)."""
        while True:
            await asyncio.sleep(10)
            now = time.time()
            for k in [k for k, t in self.replay.items() if t <= now]:
                del self.replay[k]


async def serve(port: int, backend_url: str, key: GatewayKey, max_connections: int) -> None:
    pipeline = Pipeline(backend_url, key, max_connections)
    await pipeline.start()

    async def execute(request: ExecuteCommandRequest, context: grpc.aio.ServicerContext) -> ExecuteCommandResponse:
        try:
            return await pipeline.execute(request, context.peer())
        except Rejected as e:
            await context.abort(e.code, e.message)
            raise  # unreachable: abort raises

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("gateway.v1.Gateway", {
        "ExecuteCommand": grpc.unary_unary_rpc_method_handler(
            execute, request_deserializer=ExecuteCommandRequest.FromString,
            response_serializer=ExecuteCommandResponse.SerializeToString)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    purge = asyncio.ensure_future(pipeline.purge())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    purge.cancel()
    await server.stop(1)
    await pipeline.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="base URL of the backend, http://127.0.0.1:PORT")
    parser.add_argument("--key", type=Path, required=True, help="gateway signing key file (base64 seed)")
    parser.add_argument("--max-connections", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.backend, GatewayKey.load(args.key), args.max_connections))


if __name__ == "__main__":
    main()
