"""A production-mode gateway for the benchmarks: dev backend, optional private Redis, config file, sessions.

Layout (see bench/README.md): the gateway alone on core 0; the reference
backend, Redis and the load generator on core 1. Budgets are raised far above
the offered load so the rate-limit stage runs (store round trips included)
but never rejects: we measure the pipeline, not the budgets. The access log is on, as in
production: through its own writer to ``access.log`` in the work folder (``[access_log] target``,
what the systemd unit sets up); ``GATEWAYD_ACCESS_LOG_TARGET='""'`` in the environment puts it
back through twist's log (the default, and what was measured before 2026-12-03 session 4).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from bench._common import CLIENT_CORE, PYTHON, ROOT, SERVER_CORE, TWIST, Proc, free_port, start, wait_port
from gatewayd.signing import GatewayKey

BIG = "{ rate = 1000000.0, burst = 1000000 }"


@dataclass
class Stack:
    """The running processes of one benchmark setup; ``stop`` ends them in reverse start order."""

    work: Path
    port: int = 0
    procs: list[Proc] = field(default_factory=list)
    gateway: Proc | None = None
    backend: Proc | None = None
    backend_http: int = 0

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def start_backend(work: Path, kind: str, core: str, twist: list[str] | None = None) -> tuple[Proc, int, int]:
    """The backend process: ``dev`` (``twist gatewayd-devbackend``) or ``ref`` (``bench/ref_backend.py``,
    aiohttp); returns it with its HTTP and push ports once it listens."""
    http, push = free_port(), free_port()
    if kind == "ref":
        argv = [PYTHON, "-m", "bench.ref_backend", "--http", str(http), "--push", str(push)]
    else:
        argv = [*(twist or [TWIST]), "gatewayd-devbackend", "--no-debug",
                "--http", f"tcp:{http}:interface=127.0.0.1", "--push", f"tcp:{push}:interface=127.0.0.1"]
    proc = start(f"{kind}backend", argv, core, work)
    wait_port(http, proc=proc.popen)
    wait_port(push, proc=proc.popen)
    return proc, http, push


def start_stack(work: Path, stores: str = "memory", max_streams: int = 100, nodelay: bool = False,
                backend_timeout_s: float = 5.0, backend: str = "dev", backend_core: str = CLIENT_CORE,
                wrapper: str = "", env: dict[str, str] | None = None) -> Stack:
    """Start redis (when ``stores == "redis"``), the backend and the gateway; wait until ready.

    ``nodelay``: run both Twisted processes through ``bench/twist_nodelay.py`` (TCP_NODELAY everywhere).
    ``backend``: ``dev`` (the project's reference backend) or ``ref`` (``bench/ref_backend.py``, aiohttp),
    pinned to ``backend_core``. ``wrapper``: a ``twist`` replacement script in bench/ for the gateway
    (e.g. ``twist_observe.py``), ``env`` extra environment for the gateway.
    """
    twist = [PYTHON, str(ROOT / "bench" / "twist_nodelay.py")] if nodelay else [TWIST]
    gateway_twist = [PYTHON, str(ROOT / "bench" / wrapper)] if wrapper else twist
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(work)
    try:
        redis_url = ""
        if stores == "redis":
            rport = free_port()
            proc = start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(work)], CLIENT_CORE, work)
            stack.procs.append(proc)
            wait_port(rport, proc=proc.popen)
            redis_url = f'redis_url = "redis://127.0.0.1:{rport}/0"'
        proc, http, push = start_backend(work, backend, backend_core, twist)
        stack.procs.append(proc)
        stack.backend, stack.backend_http = proc, http
        key = work / "gateway.key"
        if not key.exists():
            GatewayKey.generate().save(key)
        stack.port = free_port()
        config = work / "gatewayd.toml"
        config.write_text(f"""
[server]
listen = "tcp:{stack.port}:interface=127.0.0.1"
max_concurrent_streams = {max_streams}
[backend]
base_url = "http://127.0.0.1:{http}"
push_endpoint = "tcp:host=127.0.0.1:port={push}"
timeout_s = {backend_timeout_s}
[keys]
signing_key = "{key}"
[stores]
kind = "{stores}"
{redis_url}
[limits]
ip = {BIG}
session = {BIG}
user = {BIG}
message_type = {BIG}
[public]
login_ip = {BIG}
send_email = {BIG}
confirm_challenge = {BIG}
[access_log]
target = "{work / 'access.log'}"
""")
        stack.gateway = start("gatewayd", [*gateway_twist, "gatewayd", "--config", str(config)], SERVER_CORE, work,
                              env)
        stack.procs.append(stack.gateway)
        wait_port(stack.port, proc=stack.gateway.popen)
        wait_ready(stack.port)
    except BaseException:
        stack.stop()
        raise
    return stack


def wait_ready(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("gateway not ready")


def _post(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/public/auth/{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def login(port: int, n: int, emails: int = 1, email: str | None = None) -> list[dict[str, str]]:
    """``n`` device sessions over the public API (dev code 000000), spread over ``emails`` users
    (or all of the one user ``email``)."""
    sessions = []
    for i in range(n):
        key = SigningKey.generate()
        email_i = email or f"bench{i % emails}@example.com"
        challenge = _post(port, "send-email-code", {"email": email_i})["challenge_id"]
        answer = _post(port, "confirm-email-code", {
            "challenge_id": challenge, "code": "000000",
            "client_public_key": base64.b64encode(bytes(key.verify_key)).decode()})
        sessions.append({"device_session_id": answer["device_session_id"], "user_id": answer["user_id"],
                         "seed_hex": bytes(key).hex()})
    return sessions
