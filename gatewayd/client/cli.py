"""``gatewayctl``: log in, execute commands and follow events from a shell.

    gatewayctl [--gateway URL] [--config-dir DIR] login --email E [--code C]
    gatewayctl exec MESSAGE_TYPE [JSON] [--protocol grpc|grpc-web|connect]
    gatewayctl keys
    gatewayctl subscribe [--protocol ...]
    gatewayctl keygen --out PATH [--public-out PATH] [--force]

Exit codes: 0 success (and ``subscribe`` ended by SIGINT or SIGTERM); 1 the
gateway refused the call (the RPC code is printed); 2 usage; 3 not logged in,
unusable config folder, or a file ``keygen`` would write exists (without
``--force``) or cannot be written; 4 an answer failed verification; 5 the
gateway cannot be reached; 6 ``exec`` was answered, with a result_code other
than ``ok``; 130 any other command interrupted by SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn, TextIO

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewayd.client.client import GatewayClient
from gatewayd.client.config_dir import (
    ConfigDir,
    ConfigDirError,
    StoredSession,
    default_config_dir,
    write_new_file,
)
from gatewayd.client.errors import (
    GatewayUnreachableError,
    NotLoggedInError,
    PublicApiError,
    RpcCallError,
    VerificationError,
)
from gatewayd.client.verify import VerifiedEvent
from gatewayd.client.wire import PROTOCOLS
from gatewayd.signing import GatewayKey

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
ENV_GATEWAY = "GATEWAYCTL_GATEWAY"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_VERIFICATION = 4
EXIT_UNREACHABLE = 5
EXIT_NOT_OK = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C'd command

_log = Logger()


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

    keygen = commands.add_parser("keygen", help="write a new gateway signing key (for keys.signing_key); "
                                                "prints its key_id and public key")
    keygen.add_argument("--out", required=True, help="the signing key file to write (base64 seed, mode 0600)")
    keygen.add_argument("--public-out", help="also write the public key file (for keys.published, mode 0644)")
    keygen.add_argument("--force", action="store_true", help="replace files that already exist")
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
        #: True while the main thread blocks outside the reactor (the login code prompt): a signal
        #: must then interrupt the read itself, since the reactor cannot run the interruption.
        self.reading_stdin = False

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
        handler = {"login": self.login, "exec": self.execute, "keys": self.keys, "subscribe": self.subscribe,
                   "keygen": self.keygen}
        return int(await handler[self.args.command]())

    async def login(self) -> int:
        client = self.client(need_session=False)
        try:
            challenge = await client.request_email_code(self.args.email)
            code = self.args.code
            if not code:
                self.stderr.write(f"a code was sent to {self.args.email}; code: ")
                self.stderr.flush()
                with self._blocking_read():
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

    @contextmanager
    def _blocking_read(self) -> Iterator[None]:
        self.reading_stdin = True
        try:
            yield
        except KeyboardInterrupt:
            raise CliExit(EXIT_INTERRUPTED, "interrupted") from None
        finally:
            self.reading_stdin = False

    async def keys(self) -> int:
        client = self.client(need_session=False)
        try:
            keys = await client.fetch_gateway_keys()
        finally:
            await client.close()
        self.print_json({"gateway": client.base_url, "keys": [
            {"key_id": k, "public_key": base64.b64encode(v).decode()} for k, v in keys.items()]})
        return EXIT_OK

    async def subscribe(self) -> int:
        client = self.client(self.args.protocol)

        def on_event(event: VerifiedEvent) -> None:
            self.print_json(event.as_json())

        # Runs until the server ends the stream or the command is interrupted (Invocation.interrupt
        # cancels the await below, which cancels the stream; the finally still closes the client).
        try:
            await client.subscribe(on_event)
        finally:
            await client.close()
        return EXIT_OK

    async def keygen(self) -> int:
        """A new gateway key: the seed in ``--out`` (0600), optionally the public key in ``--public-out``."""
        key = GatewayKey.generate()
        out = _path(self.args.out)
        public_out = _path(self.args.public_out) if self.args.public_out else None
        if public_out is not None and public_out.resolve() == out.resolve():
            raise CliExit(EXIT_USAGE, "--out and --public-out name the same file")
        public_b64 = base64.b64encode(key.public_key).decode()
        if not self.args.force:  # refuse before writing anything, so no half-made pair is left behind
            for path in (out, public_out):
                if path is not None and (path.exists() or path.is_symlink()):
                    raise CliExit(EXIT_CONFIG, f"{path} exists; use --force to replace it")
        write_new_file(out, key.save, mode=0o600, replace=self.args.force)
        if public_out is not None:
            write_new_file(public_out, lambda p: p.write_text(public_b64 + "\n"), mode=0o644,
                           replace=self.args.force)
        answer = {"key_id": key.key_id, "public_key": public_b64, "signing_key": str(out)}
        if public_out is not None:
            answer["public_key_file"] = str(public_out)
        self.print_json(answer)
        return EXIT_OK


def _path(value: str) -> Path:
    return Path(value).expanduser()


def exit_code_for(failure: Failure) -> tuple[int, str]:
    """The exit code and message for what ended a command."""
    value = failure.value
    if isinstance(value, CliExit):
        return value.code, value.message
    if isinstance(value, GatewayUnreachableError):
        return EXIT_UNREACHABLE, str(value)
    if isinstance(value, RpcCallError):
        return EXIT_REFUSED, f"the gateway refused the call: {value}"  # with "(retry after N s)" when told
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


class Invocation:
    """One gatewayctl command in flight.

    ``done`` fires when the command has ended, with ``None`` for exit 0 or
    ``SystemExit(code)`` otherwise; the message for a non-zero code is already
    on ``stderr``. ``interrupt()`` is what SIGINT and SIGTERM do: the command's
    pending step is cancelled, it closes its connections, and ``subscribe``
    ends with exit 0, any other command with ``EXIT_INTERRUPTED``.
    """

    def __init__(self, argv: Sequence[str], reactor: Any, stdout: TextIO = sys.stdout,
                 stderr: TextIO = sys.stderr, stdin: TextIO = sys.stdin) -> None:
        self.interrupted = False
        self.command: Command | None = None
        self._stderr = stderr
        try:
            args = build_parser().parse_args(list(argv))
        except SystemExit as e:
            self.done: defer.Deferred[None] = defer.fail(e)
            return
        self.command = Command(args, reactor, stdout, stderr, stdin)
        self.done = defer.Deferred.fromCoroutine(self._main(self.command))

    async def _main(self, command: Command) -> None:
        try:
            code = await command.run()
        except defer.CancelledError:
            if not self.interrupted:
                code, message = exit_code_for(Failure())
                self._stderr.write(f"gatewayctl: {message}\n")
            elif command.args.command == "subscribe":
                code = EXIT_OK  # following events until told to stop is how subscribe succeeds
            else:
                code = EXIT_INTERRUPTED
                self._stderr.write("gatewayctl: interrupted\n")
        except Exception:
            code, message = exit_code_for(Failure())
            self._stderr.write(f"gatewayctl: {message}\n")
        if code:
            raise SystemExit(code)

    def interrupt(self) -> None:
        """End the command early (idempotent; nothing once it has ended)."""
        if self.done.called or self.interrupted:
            return
        self.interrupted = True
        self.done.cancel()


def run(argv: Sequence[str], reactor: Any, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
        stdin: TextIO = sys.stdin) -> defer.Deferred[None]:
    """Run one command on ``reactor``; the Deferred fails with ``SystemExit(code)`` unless it succeeded.

    To interrupt it as a signal would, use ``Invocation`` and its ``interrupt()``.
    """
    return Invocation(argv, reactor, stdout, stderr, stdin).done


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to stop: a lookup thread finishes on its own and its answer is dropped."""


_FAMILIES = {None: socket.AF_UNSPEC, frozenset([IPv4Address]): socket.AF_INET,
             frozenset([IPv6Address]): socket.AF_INET6,
             frozenset([IPv4Address, IPv6Address]): socket.AF_UNSPEC}


@implementer(IHostnameResolver)
class DaemonThreadResolver:
    """Resolves IP literals at once, in the reactor thread, and other names with ``getaddrinfo`` on a
    daemon thread of their own.

    Why: Twisted's default resolver runs ``getaddrinfo`` on the reactor's thread pool,
    which reactor shutdown joins; a Ctrl-C during that join (or behind a hung lookup)
    ended gatewayctl with a KeyboardInterrupt traceback. A literal address needs no
    thread, and a daemon thread is never joined.
    """

    def __init__(self, reactor: Any, getaddrinfo: Any = socket.getaddrinfo) -> None:
        self._reactor = reactor
        self._getaddrinfo = getaddrinfo

    def resolveHostName(self, resolutionReceiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Sequence[type] | None = None,
                        transportSemantics: str = "TCP") -> IHostResolution:
        resolution = _Resolution(hostName)
        family = _FAMILIES.get(None if addressTypes is None else frozenset(addressTypes), socket.AF_UNSPEC)
        protocol: Literal["TCP", "UDP"] = "UDP" if transportSemantics == "UDP" else "TCP"
        kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
        resolutionReceiver.resolutionBegan(resolution)

        def deliver(names: list[Any]) -> None:
            for af, _kind, _proto, _canon, sockaddr in names:
                if af in (socket.AF_INET, socket.AF_INET6):
                    address_type = IPv4Address if af == socket.AF_INET else IPv6Address
                    resolutionReceiver.addressResolved(address_type(protocol, *sockaddr))
            resolutionReceiver.resolutionComplete()

        try:
            # AI_NUMERICHOST never touches DNS: it answers at once for a literal and fails for a name.
            deliver(self._getaddrinfo(hostName, portNumber, family, kind, 0, socket.AI_NUMERICHOST))
            return resolution
        except OSError:
            pass

        def lookup() -> None:
            try:
                names = self._getaddrinfo(hostName, portNumber, family, kind)
            except OSError:
                names = []
            self._reactor.callFromThread(deliver, names)

        threading.Thread(target=lookup, name=f"gatewayctl-resolve-{hostName}", daemon=True).start()
        return resolution


def run_process(reactor: Any, argv: Sequence[str], stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
                stdin: TextIO = sys.stdin) -> int:
    """Run one command as the whole process on a reactor not yet running; return its exit code.

    Unlike ``twisted.internet.task.react``, the reactor runs without Twisted's
    signal handlers: SIGINT and SIGTERM interrupt the *command*, which then
    closes its connections and ends with its own exit code, instead of stopping
    the reactor under it (that lost the connections as errors: "unavailable",
    exit 5, on SIGTERM). Our handlers stay in place until the process exits, so a
    signal during shutdown is never a KeyboardInterrupt traceback.
    """
    reactor.installNameResolver(DaemonThreadResolver(reactor))
    invocation = Invocation(argv, reactor, stdout, stderr, stdin)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        command = invocation.command
        if command is not None and command.reading_stdin:
            raise KeyboardInterrupt  # the reactor is blocked in the read; end the read itself
        reactor.callFromThread(invocation.interrupt)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    code = EXIT_OK

    def finished(result: Any) -> None:
        nonlocal code
        if isinstance(result, Failure):
            if isinstance(result.value, SystemExit):
                code = int(result.value.code or 0)
            else:
                _log.failure("gatewayctl failed", result)
                code = EXIT_REFUSED
        reactor.callWhenRunning(reactor.stop)

    invocation.done.addBoth(finished)
    reactor.run(installSignalHandlers=False)
    # The command is over: a late signal must not kill the exiting interpreter (Python's finalization
    # puts SIG_DFL back in place of a Python handler, never of SIG_IGN).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    return code


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``gatewayctl`` console script."""
    from twisted.internet import reactor

    sys.exit(run_process(reactor, sys.argv[1:] if argv is None else argv))
