"""Test harness for the public surface: the reference backend on a real port, the gateway's own
listener serving ``PublicApp``, and one-request helpers over the raw clients (``http1`` and
``http1_raw`` on ``RawHttp1``, ``h2c``: HTTP/2 prior knowledge on ``RawH2Client``), so tests
speak to it exactly as clients do.

The backend's Site is wrapped in ``RecordingResource``, which logs every
request the backend receives over the wire: "the backend received nothing"
is asserted on that log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gatewayd.backend.rest import BackendClient
from gatewayd.config import Budget, PublicConfig, ServerConfig
from gatewayd.devbackend.service import DevBackend
from gatewayd.public.app import PublicApp, ReadinessCheck
from gatewayd.public.readiness import backend_reachable
from gatewayd.signing import GatewayKey, Keyring
from gatewayd.stores.base import RateLimiter
from gatewayd.stores.memory import MemoryRateLimiter
from gatewayd.testing.raw_h2 import RawH2Client
from gatewayd.testing.raw_http1 import RawHttp1, parse_http1_response, send_http1
from gatewayd.testing.server import RunningServer, serve
from gatewayd.transport.cors import CorsPolicy

DEV_CODE = "000000"
_ROOMY = Budget(rate=1000.0, burst=100_000)


@dataclass
class Answer:
    """An HTTP answer: status, lowercase headers (repeats joined by ", "), body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingResource(Resource):
    """Serves ``inner`` and records ``(method, path)`` of every request that reached it."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.received: list[tuple[str, str]] = []

    def render(self, request: Request) -> Any:
        self.received.append((request.method.decode(), request.path.decode("latin-1")))
        return self.inner.render(request)


# -- one request on a fresh connection, over the raw clients ------------------------------------


def parse_http1(raw: bytes) -> Answer:
    """Parse one HTTP/1.1 response (Content-Length or chunked body; else read to close)."""
    response = parse_http1_response(raw)
    return Answer(response.status, response.headers, response.body)


async def http1_raw(port: int, data: bytes, reactor: Any = None) -> Answer:
    """Send raw request bytes (they should ask ``Connection: close``), parse the one answer."""
    reactor = reactor or default_reactor
    client = RawHttp1(reactor)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return parse_http1((await send_http1(client, data)).raw)


async def http1(
    port: int, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> Answer:
    """One HTTP/1.1 request on a fresh connection (closed after the answer)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return await http1_raw(port, data)


async def h2c(
    port: int, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> Answer:
    """One request over a fresh HTTP/2 prior-knowledge connection (status 0: reset before any answer)."""
    extra = [(name.lower(), value) for name, value in (headers or {}).items()]
    if body:
        extra.append(("content-length", str(len(body))))
    client = RawH2Client(reactor=default_reactor)
    await connectProtocol(TCP4ClientEndpoint(default_reactor, "127.0.0.1", port), client)
    try:
        sid = client.open_stream(path, content_type=None, body=body, extra=extra, method=method)
        response = client.responses[sid]
        await client.wait(lambda: response.done or client.closed, f"the answer to {method} {path}")
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
    headers_in = {k: v for k, v in (response.headers or {}).items() if not k.startswith(":")}
    return Answer(response.status if response.headers else 0, headers_in, response.data)


# -- the whole setup -----------------------------------------------------------------------------


def public_key_b64(seed: bytes | None = None) -> str:
    """A base64 Ed25519 public key (random unless ``seed``)."""
    import base64

    from nacl.signing import SigningKey

    key = SigningKey(seed or os.urandom(32))
    return base64.b64encode(bytes(key.verify_key)).decode()


@dataclass
class PublicHarness:
    """A reference backend on a loopback port and ``PublicApp`` behind gatewayd's own listener."""

    backend: DevBackend
    recorder: RecordingResource
    backend_port: Any
    client: BackendClient
    app: PublicApp
    server: RunningServer
    keyring: Keyring
    extra: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def backend_received(self) -> list[tuple[str, str]]:
        return self.recorder.received

    @classmethod
    async def start(
        cls,
        *,
        config: PublicConfig | None = None,
        rate: RateLimiter | None = None,
        trusted_proxies: Iterable[str] = (),
        cors: CorsPolicy | None = None,
        readiness: Mapping[str, ReadinessCheck] | None = None,
        readiness_timeout_s: float = 1.0,
        backend_site: Site | None = None,
        backend_timeout_s: float = 5.0,
        check_backend: bool = False,
    ) -> PublicHarness:
        """Start both; ``check_backend`` adds ``backend_reachable`` as the ``backend`` readiness check."""
        from gatewayd.devbackend.http import DevBackendResource

        backend = DevBackend(default_reactor, fixed_code=DEV_CODE, debug=True)
        recorder = RecordingResource(DevBackendResource(backend))
        site = backend_site or Site(recorder)
        site.noisy = False
        backend_port = default_reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        base_url = f"http://127.0.0.1:{backend_port.getHost().port}"  # type: ignore[attr-defined]
        client = BackendClient(default_reactor, base_url, timeout_s=backend_timeout_s, max_connections=8)
        keyring = Keyring.of(GatewayKey.generate())
        checks = dict(readiness or {})
        if check_backend:
            checks["backend"] = backend_reachable(client)
        app = PublicApp(
            backend=client,
            rate=rate if rate is not None else MemoryRateLimiter(default_reactor),
            keyring=keyring,
            clock=default_reactor,
            config=config,
            cors=cors,
            trusted_proxies=trusted_proxies,
            readiness=checks,
            readiness_timeout_s=readiness_timeout_s,
        )
        server_config = ServerConfig(trusted_proxies=tuple(trusted_proxies))
        server = await serve(methods=[], config=server_config, web_resource=app.resource(), cors=cors)
        return cls(backend, recorder, backend_port, client, app, server, keyring)

    async def stop(self) -> None:
        await self.server.stop()
        await self.client.close()
        await defer.maybeDeferred(self.backend_port.stopListening)

    async def login(
        self,
        email: str,
        *,
        over_h2: bool = False,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
    ) -> tuple[Answer, Answer]:
        """send-email-code then confirm-email-code with the dev code; both answers."""
        request = h2c if over_h2 else http1
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        sent = await request(
            self.port,
            "POST",
            "/api/v1/public/auth/send-email-code",
            all_headers,
            json.dumps({"email": email}).encode(),
        )
        if sent.status != 200:
            return sent, sent
        body = {
            "challenge_id": sent.json()["challenge_id"],
            "code": DEV_CODE,
            "client_public_key": key or public_key_b64(),
        }
        confirmed = await request(
            self.port,
            "POST",
            "/api/v1/public/auth/confirm-email-code",
            all_headers,
            json.dumps(body).encode(),
        )
        return sent, confirmed


# -- a harness in its own process (for synchronous drivers such as Hypothesis) ---------------------


def main() -> None:
    """``python -m gatewayd.testing.public``: serve a harness with roomy budgets until stdin closes.

    Prints one JSON line ``{"port": N}`` once listening. Budgets are roomy so
    that a fuzzer meets the validation rules, not the rate limits.
    """
    import sys

    from twisted.internet.stdio import StandardIO

    roomy = PublicConfig(login_ip=_ROOMY, send_email=_ROOMY, confirm_challenge=_ROOMY)

    class _UntilEOF(Protocol):
        def connectionLost(self, reason: Failure | None = None) -> None:
            reactor.stop()

    async def run() -> None:
        harness = await PublicHarness.start(config=roomy, trusted_proxies=["127.0.0.1"])
        sys.stdout.write(json.dumps({"port": harness.port}) + "\n")
        sys.stdout.flush()

    def failed(failure: Failure) -> None:
        failure.printTraceback()
        reactor.stop()

    reactor: Any = default_reactor
    StandardIO(_UntilEOF())
    Deferred.fromCoroutine(run()).addErrback(failed)
    reactor.run()


if __name__ == "__main__":
    main()
