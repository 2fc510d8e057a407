"""``gatewayctl``: log in, execute commands and follow events from a shell.

    gatewayctl [--gateway URL] [--config-dir DIR] login --email E [--code C]
    gatewayctl exec MESSAGE_TYPE [JSON] [--protocol grpc|grpc-web|connect]
    gatewayctl keys
    gatewayctl subscribe [--protocol ...]

Exit codes: 0 success; 1 the gateway refused the call (the RPC code is
printed); 2 usage; 3 not logged in or unusable config folder; 4 an answer
failed verification; 5 the gateway cannot be reached; 6 ``exec`` was
answered, with a result_code other than ``ok``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from twisted.internet import defer, error
from twisted.internet.task import react
from twisted.python.failure import Failure

from gatewayd.client.client import GatewayClient
from gatewayd.client.config_dir import ConfigDir, ConfigDirError, StoredSession, default_config_dir
from gatewayd.client.errors import (
    GatewayUnreachableError,
    NotLoggedInError,
    PublicApiError,
    RpcCallError,
    VerificationError,
)
from gatewayd.client.verify import VerifiedEvent
from gatewayd.client.wire import PROTOCOLS

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
ENV_GATEWAY = "GATEWAYCTL_GATEWAY"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_VERIFICATION = 4
EXIT_UNREACHABLE = 5
EXIT_NOT_OK = 6


class CliExit(Exception):
    """End the command with ``code`` after printing ``message`` to stderr."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayctl", description="A command-line client of gatewayd.")
    parser.add_argument("--gateway", help=f"gateway base URL (default: ${ENV_GATEWAY}, the URL used at "
                                          f"login, or {DEFAULT_GATEWAY})")
    parser.add_argument("--config-dir", help="folder for the device key and session "
                                             "(default: $GATEWAYCTL_CONFIG_DIR or ~/.config/gatewayctl)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = commands.add_parser("login", help="log in by email code; keeps the session in the config folder")
    login.add_argument("--email", required=True)
    login.add_argument("--code", help="the email code (asked for on stdin when absent)")

    execute = commands.add_parser("exec", help="execute a command; prints the verified answer as JSON")
    execute.add_argument("message_type")
    execute.add_argument("json", nargs="?", default=None, help="the payload as JSON (default: empty)")
    execute.add_argument("--protocol", choices=PROTOCOLS, default="connect")

    commands.add_parser("keys", help="print the gateway's published signing keys")

    subscribe = commands.add_parser("subscribe", help="print verified events as JSON lines until interrupted")
    subscribe.add_argument("--protocol", choices=PROTOCOLS, default="connect")
    return parser


class Command:
    """One gatewayctl run: parsed options, config folder, output streams."""

    def __init__(self, args: argparse.Namespace, reactor: Any, stdout: TextIO, stderr: TextIO,
                 stdin: TextIO) -> None:
        self.args = args
        self.reactor = reactor
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self.config = ConfigDir(default_config_dir() if not args.config_dir else _path(args.config_dir))

    def gateway_url(self, stored: StoredSession | None) -> str:
        if self.args.gateway:
            return str(self.args.gateway)
        if os.environ.get(ENV_GATEWAY):
            return os.environ[ENV_GATEWAY]
        if stored is not None:
            return stored.gateway
        return DEFAULT_GATEWAY

    def client(self, protocol: str = "connect", need_session: bool = True) -> GatewayClient:
        stored = self.config.load_session()
        if need_session and stored is None:
            raise CliExit(EXIT_CONFIG, f"not logged in (no session in {self.config.path}): "
                                       "run `gatewayctl login --email ...` first")
        key = self.config.device_key(create=not need_session)
        if need_session and key is None:
            raise CliExit(EXIT_CONFIG, f"no device key in {self.config.path}: log in again")
        return GatewayClient(self.gateway_url(stored), protocol, key=key,
                             session=stored.session if stored and need_session else None,
                             reactor=self.reactor, timeout_s=self.args.timeout)

    def print_json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.stdout.flush()

    async def run(self) -> int:
        handler = {"login": self.login, "exec": self.execute, "keys": self.keys, "subscribe": self.subscribe}
        return int(await handler[self.args.command]())

    async def login(self) -> int:
        client = self.client(need_session=False)
        try:
            challenge = await client.request_email_code(self.args.email)
            code = self.args.code
            if not code:
                self.stderr.write(f"a code was sent to {self.args.email}; code: ")
                self.stderr.flush()
                code = self.stdin.readline().strip()
                if not code:
                    raise CliExit(EXIT_USAGE, "no code given")
            session = await client.confirm_email_code(challenge, code)
        finally:
            await client.close()
        self.config.save_session(StoredSession(client.base_url, session, self.args.email))
        self.print_json({"device_session_id": session.device_session_id, "user_id": session.user_id,
                         "gateway": client.base_url})
        return EXIT_OK

    async def execute(self) -> int:
        raw = b""
        if self.args.json is not None:
            try:
                json.loads(self.args.json)
            except ValueError as e:
                raise CliExit(EXIT_USAGE, f"the payload is not JSON: {e}") from None
            raw = self.args.json.encode()
        client = self.client(self.args.protocol)
        try:
            response = await client.execute(self.args.message_type, raw)
        finally:
            await client.close()
        try:
            payload: Any = response.json()
        except ValueError:
            payload = response.payload_bytes.decode("utf-8", "replace")
        self.print_json({"result_code": response.result_code, "payload": payload,
                         "request_id": response.request_id, "key_id": response.key_id})
        return EXIT_OK if response.ok else EXIT_NOT_OK

    async def keys(self) -> int:
        client = self.client(need_session=False)
        try:
            keys = await client.fetch_gateway_keys()
        finally:
            await client.close()
        import base64

        self.print_json({"gateway": client.base_url, "keys": [
            {"key_id": k, "public_key": base64.b64encode(v).decode()} for k, v in keys.items()]})
        return EXIT_OK

    async def subscribe(self) -> int:
        client = self.client(self.args.protocol)

        def on_event(event: VerifiedEvent) -> None:
            self.print_json(event.as_json())

        stream = client.subscribe(on_event)
        interrupted: list[int] = []

        def interrupt(signum: int, _frame: Any) -> None:
            interrupted.append(signum)
            self.reactor.callFromThread(stream.cancel)

        previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            await stream
        except defer.CancelledError:
            if not interrupted:
                raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            await client.close()
        return EXIT_OK


def _path(value: str) -> Any:
    from pathlib import Path

    return Path(value).expanduser()


def exit_code_for(failure: Failure) -> tuple[int, str]:
    """The exit code and message for what ended a command."""
    value = failure.value
    if isinstance(value, CliExit):
        return value.code, value.message
    if isinstance(value, GatewayUnreachableError):
        return EXIT_UNREACHABLE, str(value)
    if isinstance(value, RpcCallError):
        extra = f" (retry after {value.metadata['retry-after']} s)" if "retry-after" in value.metadata else ""
        return EXIT_REFUSED, f"the gateway refused the call: {value}{extra}"
    if isinstance(value, PublicApiError):
        return EXIT_REFUSED, f"the gateway refused: {value}"
    if isinstance(value, VerificationError):
        return EXIT_VERIFICATION, f"verification failed, answer discarded: {value}"
    if isinstance(value, NotLoggedInError | ConfigDirError):
        return EXIT_CONFIG, str(value)
    if failure.check(error.ConnectError, error.ConnectionLost, error.DNSLookupError, error.TimeoutError,
                     defer.TimeoutError) or getattr(value, "reasons", None):
        return EXIT_UNREACHABLE, f"cannot reach the gateway: {failure.getErrorMessage()}"
    return EXIT_REFUSED, f"unexpected error: {failure.getErrorMessage()}"


def run(argv: Sequence[str], reactor: Any, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
        stdin: TextIO = sys.stdin) -> defer.Deferred[None]:
    """Run one command on ``reactor``; the Deferred fails with ``SystemExit(code)`` unless it succeeded."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return defer.fail(e)

    async def main() -> None:
        try:
            code = await Command(args, reactor, stdout, stderr, stdin).run()
        except Exception:
            code, message = exit_code_for(Failure())
            stderr.write(f"gatewayctl: {message}\n")
        if code:
            raise SystemExit(code)

    return defer.ensureDeferred(main())


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``gatewayctl`` console script."""
    react(lambda reactor: run(sys.argv[1:] if argv is None else argv, reactor))
