"""gatewayctl end to end: in-process against an in-process gateway (every command and exit code),
and as console scripts against a real ``twist gatewayd --dev`` subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from gatewayd.client.cli import (
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    DaemonThreadResolver,
    Invocation,
    run,
)
from gatewayd.signing import GatewayKey, load_public_key
from gatewayd.testing.client import RunningGateway, routes_with, running_gateway, start_gateway

BIN = Path(sys.executable).parent


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    routes = routes_with({"debug.status.409": ("POST", "debug/status/409")})
    async with running_gateway(str(tmp_path / "state"), routes=routes) as gw:
        yield gw


class Ctl:
    """Runs gatewayctl commands in-process, with one config folder."""

    def __init__(self, gateway_url: str, config_dir: Path) -> None:
        self.gateway_url = gateway_url
        self.config_dir = config_dir

    async def __call__(self, *argv: str, stdin: str = "", gateway: str | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = ["--gateway", gateway or self.gateway_url, "--config-dir", str(self.config_dir),
                "--timeout", "5", *argv]
        try:
            await run(args, reactor, out, err, io.StringIO(stdin))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ctl(gateway: RunningGateway, tmp_path: Path) -> Ctl:
    return Ctl(gateway.url, tmp_path / "ctl")


@pytest_twisted.ensureDeferred
async def test_login_then_exec_over_every_protocol(gateway: RunningGateway, ctl: Ctl) -> None:
    code, out, err = await ctl("login", "--email", "cli@example.com", "--code", "000000")
    assert (code, err) == (EXIT_OK, "")
    session = json.loads(out)
    assert session["device_session_id"] and session["user_id"]
    for proto in ("grpc", "grpc-web", "connect"):
        payload = json.dumps({"text": proto})
        code, out, err = await ctl("exec", "user.notes.create", payload, "--protocol", proto)
        assert (code, err) == (EXIT_OK, "")
        answer = json.loads(out)
        assert (answer["result_code"], answer["payload"]["text"]) == ("ok", proto)
        assert answer["key_id"] == gateway.gateway.keyring.signer.key_id
    received = await gateway.received()
    assert {r["device_session_id"] for r in received} == {session["device_session_id"]}
    assert len(received) == 3


@pytest_twisted.ensureDeferred
async def test_config_folder_is_private(ctl: Ctl) -> None:
    code, _, _ = await ctl("login", "--email", "private@example.com", "--code", "000000")
    assert code == EXIT_OK
    assert stat.S_IMODE(ctl.config_dir.stat().st_mode) == 0o700
    files = sorted(p.name for p in ctl.config_dir.iterdir())
    assert files == ["device.key", "session.json"]
    for path in ctl.config_dir.iterdir():
        assert (path.name, stat.S_IMODE(path.stat().st_mode)) == (path.name, 0o600)


@pytest_twisted.ensureDeferred
async def test_login_reads_the_code_from_stdin(ctl: Ctl) -> None:
    code, out, err = await ctl("login", "--email", "prompt@example.com", stdin="000000\n")
    assert code == EXIT_OK, err
    assert "code:" in err
    assert json.loads(out)["user_id"]


@pytest_twisted.ensureDeferred
async def test_wrong_code_is_refused(ctl: Ctl) -> None:
    code, out, err = await ctl("login", "--email", "wrong@example.com", "--code", "123456")
    assert (code, out) == (EXIT_REFUSED, "")
    assert "gatewayctl: the gateway refused" in err
    assert not (ctl.config_dir / "session.json").exists()


@pytest_twisted.ensureDeferred
async def test_exit_codes(ctl: Ctl, gateway: RunningGateway) -> None:
    code, _, err = await ctl("exec", "user.profile.get")
    assert code == EXIT_CONFIG and "not logged in" in err
    assert (await ctl("login", "--email", "codes@example.com", "--code", "000000"))[0] == EXIT_OK
    code, out, err = await ctl("exec", "debug.status.409", "{}")
    assert (code, json.loads(out)["result_code"]) == (EXIT_NOT_OK, "already_exists")
    code, out, err = await ctl("exec", "user.nothing.here", "{}")
    assert (code, out) == (EXIT_REFUSED, "")
    assert "unimplemented" in err
    code, _, err = await ctl("exec", "user.notes.create", "{not json")
    assert code == EXIT_USAGE and "not JSON" in err
    code, _, err = await ctl("exec", "user.profile.get", gateway=f"http://127.0.0.1:{_free_port()}")
    assert code == EXIT_UNREACHABLE, err
    with pytest.raises(SystemExit) as info:
        await run(["no-such-command"], reactor, io.StringIO(), io.StringIO())
    assert info.value.code == EXIT_USAGE


@pytest_twisted.ensureDeferred
async def test_keys_prints_the_published_keys(ctl: Ctl, gateway: RunningGateway) -> None:
    code, out, _ = await ctl("keys")
    assert code == EXIT_OK
    keys = json.loads(out)["keys"]
    assert [k["key_id"] for k in keys] == [gateway.gateway.keyring.signer.key_id]


@pytest_twisted.ensureDeferred
async def test_interrupted_subscribe_ends_ok_and_closes_its_stream(ctl: Ctl, gateway: RunningGateway) -> None:
    assert (await ctl("login", "--email", "interrupt@example.com", "--code", "000000"))[0] == EXIT_OK
    out, err = io.StringIO(), io.StringIO()
    invocation = Invocation(["--config-dir", str(ctl.config_dir), "--gateway", gateway.url, "subscribe",
                             "--protocol", "grpc"], reactor, out, err, io.StringIO())
    await _poll(lambda: out.getvalue().count("\n") >= 1, "the first event")
    hub = gateway.gateway.hub
    assert len(hub) == 1
    invocation.interrupt()
    await invocation.done  # exit 0: the Deferred fails with SystemExit otherwise
    assert (err.getvalue(), json.loads(out.getvalue())["event_type"]) == ("", "gateway.server_time")
    await _poll(lambda: len(hub) == 0, "the hub to drop the stream")


@pytest_twisted.ensureDeferred
async def test_interrupted_exec_exits_130(ctl: Ctl, gateway: RunningGateway) -> None:
    assert (await ctl("login", "--email", "silent@example.com", "--code", "000000"))[0] == EXIT_OK
    received: list[bytes] = []

    class Silent(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    factory = protocol.ServerFactory()
    factory.protocol = Silent
    silent = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        err = io.StringIO()
        address = silent.getHost()
        assert isinstance(address, IPv4Address)
        invocation = Invocation(["--config-dir", str(ctl.config_dir), "--gateway", f"http://127.0.0.1:{address.port}",
                                 "exec", "user.profile.get"], reactor, io.StringIO(), err, io.StringIO())
        await _poll(lambda: b"".join(received).count(b"\r\n\r\n") >= 1, "the request")  # never answered
        assert not invocation.done.called
        invocation.interrupt()
        with pytest.raises(SystemExit) as info:
            await invocation.done
        assert (info.value.code, err.getvalue()) == (EXIT_INTERRUPTED, "gatewayctl: interrupted\n")
    finally:
        await defer.maybeDeferred(silent.stopListening)


# --- keygen ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_keygen_writes_a_loadable_key_pair(ctl: Ctl, tmp_path: Path) -> None:
    out, pub = tmp_path / "keys" / "gateway-2.key", tmp_path / "keys" / "gateway-2.pub"
    code, stdout, err = await ctl("keygen", "--out", str(out), "--public-out", str(pub))
    assert (code, err) == (EXIT_OK, "")
    printed = json.loads(stdout)
    key, published = GatewayKey.load(out), load_public_key(pub)
    assert printed["key_id"] == key.key_id == published.key_id
    assert printed["public_key"] == published.as_json()["public_key"]
    assert published.public_key == key.public_key
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["gateway-2.key", "gateway-2.pub"]  # no temp files
    # The key signs what the published key verifies.
    from gatewayd.signing import verify

    assert verify(published.public_key, b"rotation", key.sign(b"rotation"))


@pytest_twisted.ensureDeferred
async def test_keygen_refuses_to_overwrite_unless_forced(ctl: Ctl, tmp_path: Path) -> None:
    out, pub = tmp_path / "gateway.key", tmp_path / "gateway.pub"
    assert (await ctl("keygen", "--out", str(out)))[0] == EXIT_OK
    assert not pub.exists()
    first = out.read_text()
    pub.write_text("not mine\n")
    for argv in (["--out", str(out)], ["--out", str(tmp_path / "other.key"), "--public-out", str(pub)]):
        code, stdout, err = await ctl("keygen", *argv)
        assert (code, stdout) == (EXIT_CONFIG, "")
        assert "exists; use --force" in err
    assert (out.read_text(), pub.read_text()) == (first, "not mine\n")
    assert not (tmp_path / "other.key").exists()  # nothing half-made

    os.chmod(out, 0o644)
    code, stdout, _ = await ctl("keygen", "--out", str(out), "--public-out", str(pub), "--force")
    assert code == EXIT_OK
    assert GatewayKey.load(out).key_id == json.loads(stdout)["key_id"] == load_public_key(pub).key_id
    assert out.read_text() != first
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # a replaced key file does not keep a wider mode

    code, _, err = await ctl("keygen", "--out", str(out), "--public-out", str(out), "--force")
    assert code == EXIT_USAGE and "same file" in err


# --- the resolver gatewayctl installs -------------------------------------------------------


@implementer(IResolutionReceiver)
class _Receiver:
    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.complete = defer.Deferred[None]()

    def resolutionBegan(self, resolution: Any) -> None:
        self.name = resolution.name

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.complete.callback(None)


def test_resolver_answers_ip_literals_at_once_without_a_thread() -> None:
    def no_lookup(*args: Any) -> Any:
        if len(args) < 6:
            raise AssertionError(f"a name lookup for a literal: {args}")
        return socket.getaddrinfo(*args)

    resolver = DaemonThreadResolver(reactor, getaddrinfo=no_lookup)
    for host, kind in (("127.0.0.1", "IPv4Address"), ("::1", "IPv6Address")):
        receiver = _Receiver()
        resolver.resolveHostName(receiver, host, 8080)
        assert receiver.complete.called  # synchronously: no thread, no reactor turn
        assert [(type(a).__name__, a.host, a.port) for a in receiver.addresses] == [(kind, host, 8080)]


@pytest_twisted.ensureDeferred
async def test_resolver_looks_names_up_on_a_daemon_thread() -> None:
    threads: list[Any] = []

    def lookup(host: str, port: int, *args: Any) -> Any:
        if len(args) > 2 and args[3] & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "not numeric")
        import threading

        threads.append(threading.current_thread())
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", port))]

    receiver = _Receiver()
    DaemonThreadResolver(reactor, getaddrinfo=lookup).resolveHostName(receiver, "gateway.example", 443)
    await receiver.complete.addTimeout(5, reactor)
    assert [(a.host, a.port) for a in receiver.addresses] == [("192.0.2.7", 443)]
    assert len(threads) == 1 and threads[0].daemon


# --- console scripts against `twist gatewayd --dev` ----------------------------------------


async def _poll(condition: Any, what: str, timeout_s: float = 5.0) -> None:
    deadline = reactor.seconds() + timeout_s
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Process(protocol.ProcessProtocol):
    """Collects output; ``ended`` fires with the exit code; ``lines`` get each stdout line."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.on_line: Any = None

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.on_line is not None and b"\n" in self.out:
            self.on_line()

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        self.ended.callback(value.exitCode if value.signal is None else -value.signal)


def _spawn(argv: list[str], env: dict[str, str]) -> tuple[_Process, Any]:
    proc = _Process()
    transport = reactor.spawnProcess(proc, argv[0], argv, env=env)
    return proc, transport


async def _wait_for_port(port: int, server: _Process, timeout_s: float = 20.0) -> None:
    deadline = reactor.seconds() + timeout_s
    while True:
        if server.ended.called:
            raise AssertionError(f"gatewayd exited early: {server.err.decode(errors='replace')[-2000:]}")
        try:
            endpoint = protocol.ClientCreator(reactor, protocol.Protocol)
            connected = await endpoint.connectTCP("127.0.0.1", port, timeout=1)
            connected.transport.loseConnection()
            return
        except error.ConnectError:
            if reactor.seconds() > deadline:
                raise AssertionError("gatewayd did not listen in time") from None
            await task.deferLater(reactor, 0.05, lambda: None)


async def _gatewayctl(env: dict[str, str], *argv: str) -> tuple[int | None, str, str]:
    proc, _ = _spawn([str(BIN / "gatewayctl"), *argv], env)
    code = await proc.ended
    return code, proc.out.decode(), proc.err.decode()


async def _subscribe_until_signal(env: dict[str, str], protocol_name: str, signame: str,
                                  gateway: str | None = None) -> None:
    """``gatewayctl subscribe`` prints gateway.server_time, then ends on ``signame`` quietly, with exit 0."""
    argv = [str(BIN / "gatewayctl"), *(["--gateway", gateway] if gateway else []), "subscribe",
            "--protocol", protocol_name]
    sub, sub_transport = _spawn(argv, env)
    first_line: defer.Deferred[None] = defer.Deferred()

    def on_line() -> None:
        if not first_line.called:
            first_line.callback(None)

    sub.on_line = on_line
    first_line.addTimeout(10, reactor)
    try:
        await first_line
    finally:
        sub_transport.signalProcess(signame)
        sub_code = await sub.ended
    case = (protocol_name, signame, gateway)
    assert json.loads(sub.out.splitlines()[0])["event_type"] == "gateway.server_time", case
    assert (case, sub_code, sub.err.decode(errors="replace")) == (case, EXIT_OK, "")


async def _console_round_trip(env: dict[str, str], email: str,
                              signals: tuple[tuple[str, str], ...] = (("grpc", "INT"),)) -> None:
    """login, exec over each protocol, subscribe until each of ``signals``: each a gatewayctl process."""
    code, out, err = await _gatewayctl(env, "login", "--email", email, "--code", "000000")
    assert code == EXIT_OK, err
    assert json.loads(out)["device_session_id"]
    for proto in ("grpc", "grpc-web", "connect"):
        code, out, err = await _gatewayctl(env, "exec", "user.profile.get", "--protocol", proto)
        assert code == EXIT_OK, err
        answer = json.loads(out)
        assert (answer["result_code"], answer["payload"]["email"]) == ("ok", email)

    for protocol_name, signame in signals:
        await _subscribe_until_signal(env, protocol_name, signame)


@pytest_twisted.ensureDeferred
async def test_console_script_against_an_in_process_gateway(gateway: RunningGateway, tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAYCTL_CONFIG_DIR": str(tmp_path / "ctl"), "GATEWAYCTL_GATEWAY": gateway.url}
    await _console_round_trip(env, "script@example.com")
    assert len(await gateway.received()) == 3


@pytest_twisted.ensureDeferred
async def test_gatewayctl_against_twist_gatewayd_dev(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "GATEWAYCTL_CONFIG_DIR": str(tmp_path / "ctl"),
           "GATEWAYCTL_GATEWAY": f"http://127.0.0.1:{port}"}
    server, server_transport = _spawn(
        [str(BIN / "twist"), "gatewayd", "--dev", "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--state-dir", str(tmp_path / "state")], env)
    try:
        await _wait_for_port(port, server)
        # SIGTERM used to stop the reactor under the stream ("unavailable", exit 5).
        signals = (("grpc", "INT"), ("grpc", "TERM"), ("grpc-web", "INT"), ("connect", "TERM"))
        await _console_round_trip(env, "twist@example.com", signals)
        # A host name is looked up off the reactor's thread pool (whose join at shutdown a Ctrl-C
        # interrupted with a KeyboardInterrupt traceback).
        await _subscribe_until_signal(env, "connect", "INT", gateway=f"http://localhost:{port}")
    finally:
        if not server.ended.called:
            server_transport.signalProcess(signal.SIGTERM)
        exit_code = await server.ended
    assert exit_code == 0, server.err.decode(errors="replace")[-2000:]


@pytest_twisted.ensureDeferred
async def test_a_spent_budget_says_when_to_retry(tmp_path: Path) -> None:
    from gatewayd.config import Budget

    gw = await start_gateway(str(tmp_path / "state"), limits={"session": Budget(rate=0.01, burst=1)})
    try:
        ctl = Ctl(gw.url, tmp_path / "ctl")
        assert (await ctl("login", "--email", "budget@example.com", "--code", "000000"))[0] == EXIT_OK
        assert (await ctl("exec", "user.profile.get", "--protocol", "grpc"))[0] == EXIT_OK
        for proto in ("grpc", "grpc-web", "connect"):
            code, out, err = await ctl("exec", "user.profile.get", "--protocol", proto)
            assert (code, out) == (EXIT_REFUSED, ""), (proto, err)
            # The RetryInfo detail, to the millisecond: at most 100 s for one unit at 0.01/s.
            said = re.search(r"resource_exhausted: rate limit exceeded \(retry after (\d+(?:\.\d{1,3})?) s\)", err)
            assert said and 90 < float(said.group(1)) <= 100, (proto, err)
    finally:
        await gw.stop()
