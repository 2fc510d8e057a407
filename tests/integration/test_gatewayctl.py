"""gatewayctl end to end: in-process against an in-process gateway (every command and exit code),
and as console scripts against a real ``twist gatewayd --dev`` subprocess."""

from __future__ import annotations

import io
import json
import os
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

from gatewayd.client.cli import (
    EXIT_CONFIG,
    EXIT_NOT_OK,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    run,
)
from gatewayd.testing.client import RunningGateway, routes_with, start_gateway

BIN = Path(sys.executable).parent


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    gw = await start_gateway(str(tmp_path / "state"), routes=routes_with({"debug.status.409": ("POST",
                                                                                              "debug/status/409")}))
    try:
        yield gw
    finally:
        await gw.stop()


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
        code, out, err = await ctl("exec", "user.notes.create", json.dumps({"text": proto}), "--protocol", proto)
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


# --- console scripts against `twist gatewayd --dev` ----------------------------------------


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


async def _console_round_trip(env: dict[str, str], email: str) -> None:
    """login, exec over each protocol, subscribe until SIGINT: each a gatewayctl process."""
    code, out, err = await _gatewayctl(env, "login", "--email", email, "--code", "000000")
    assert code == EXIT_OK, err
    assert json.loads(out)["device_session_id"]
    for proto in ("grpc", "grpc-web", "connect"):
        code, out, err = await _gatewayctl(env, "exec", "user.profile.get", "--protocol", proto)
        assert code == EXIT_OK, err
        answer = json.loads(out)
        assert (answer["result_code"], answer["payload"]["email"]) == ("ok", email)

    # subscribe prints gateway.server_time, then stops cleanly on SIGINT.
    sub, sub_transport = _spawn([str(BIN / "gatewayctl"), "subscribe", "--protocol", "grpc"], env)
    first_line: defer.Deferred[None] = defer.Deferred()

    def on_line() -> None:
        if not first_line.called:
            first_line.callback(None)

    sub.on_line = on_line
    first_line.addTimeout(10, reactor)
    try:
        await first_line
    finally:
        sub_transport.signalProcess("INT")
        sub_code = await sub.ended
    assert json.loads(sub.out.splitlines()[0])["event_type"] == "gateway.server_time"
    assert sub_code == EXIT_OK, sub.err.decode(errors="replace")


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
        await _console_round_trip(env, "twist@example.com")
    finally:
        if not server.ended.called:
            server_transport.signalProcess(signal.SIGTERM)
        exit_code = await server.ended
    assert exit_code == 0, server.err.decode(errors="replace")[-2000:]
