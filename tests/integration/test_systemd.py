"""systemd: the unit files pass ``systemd-analyze verify``; socket activation serves.

Socket activation is done here the way systemd does it, without systemd:
the test binds and listens, and a small wrapper puts the socket at fd 3,
sets ``LISTEN_FDS=1``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` to its own pid
(the pid ``twist`` will have: it is exec'd, not forked) and execs
``twist gatewayd`` with ``server.listen = "systemd:domain=INET:index=0"``.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.signing import GatewayKey
from gatewayd.testing.redis import free_port

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TWIST = str(Path(sys.executable).with_name("twist"))
#: Where conf/gatewayd.service expects the installed virtualenv.
INSTALLED_TWIST = "/opt/gatewayd/bin/twist"
SD_LISTEN_FDS_START = 3

# Runs in the child: fd 3 = the socket whose number is argv[1], LISTEN_* for this very pid, exec twist.
WRAPPER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="gatewayd.socket", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def _systemd_analyze() -> str:
    """The systemd-analyze binary, installed with apt when missing and installable; else skip."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("systemd-analyze is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "systemd"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
        if result.returncode != 0:
            pytest.skip(f"cannot install systemd ({' '.join(command)}): {result.stderr.strip()[-300:]}")
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("systemd installed but systemd-analyze is not on PATH")
    return found


def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    service = (CONF / "gatewayd.service").read_text()
    # verify checks that ExecStart's program exists: point it at this checkout's twist, nothing else changed.
    assert service.count(INSTALLED_TWIST) == 1, "ExecStart should name the installed twist exactly once"
    (tmp_path / "gatewayd.service").write_text(service.replace(INSTALLED_TWIST, TWIST))
    shutil.copy(CONF / "gatewayd.socket", tmp_path / "gatewayd.socket")
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "gatewayd.service"), str(tmp_path / "gatewayd.socket")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    # verify exits 0 on unknown keys and unparsable values ("..., ignoring"): any output is a finding.
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_documented_instance_template_passes_verify(tmp_path: Path) -> None:
    """docs/operations.md: gatewayd@.service = the unit plus Sockets=; the socket activates instance 1."""
    analyze = _systemd_analyze()
    service = (CONF / "gatewayd.service").read_text().replace(INSTALLED_TWIST, TWIST)
    template = service.replace("[Service]\n", "[Service]\nSockets=gatewayd.socket\n", 1)
    assert template != service
    (tmp_path / "gatewayd@1.service").write_text(template)
    socket_unit = (CONF / "gatewayd.socket").read_text()
    socket_unit = socket_unit.replace("[Socket]\n", "[Socket]\nService=gatewayd@1.service\n", 1)
    (tmp_path / "gatewayd.socket").write_text(socket_unit)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "gatewayd.socket"), str(tmp_path / "gatewayd@1.service")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_unit_logs_only_redacted_json_lines(tmp_path: Path) -> None:
    """ExecStart as written (paths swapped): stdout is gatewayd's JSON lines, nothing of twist's own log.

    twist's JSON format (RFC 7464 records, every event field copied) or text format on stdout
    would bypass the redaction of ``--log-json``.
    """
    (line,) = [x for x in (CONF / "gatewayd.service").read_text().splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == INSTALLED_TWIST and "gatewayd" in argv
    twist_options, gatewayd_options = argv[1:argv.index("gatewayd")], argv[argv.index("gatewayd") + 1:]
    assert twist_options == ["--log-file=/dev/null"], twist_options
    assert gatewayd_options[-2:] == ["--log-json", "-"], gatewayd_options

    key = tmp_path / "gateway.key"
    GatewayKey.generate().save(key)
    config = tmp_path / "gatewayd.toml"
    port = free_port()
    config.write_text(f'[server]\nlisten = "tcp:{port}:interface=127.0.0.1"\n[keys]\nsigning_key = "{key}"\n')
    argv = [TWIST if a == INSTALLED_TWIST else str(config) if a == "/etc/gatewayd/gatewayd.toml" else a
            for a in argv]
    environment = [x.removeprefix("Environment=") for x in (CONF / "gatewayd.service").read_text().splitlines()
                   if x.startswith("Environment=")]
    assert environment == ["GATEWAYD_ACCESS_LOG_TARGET=-"]  # the access log's own writer, to the journal
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYD_")}
    env.update(x.split("=", 1) for x in environment)
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                                   cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 20
        while "gatewayd listening on" not in out.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.05)
        # One recorded request (an unknown RPC path: refused before any backend is needed).
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/no.Such/Method", b"{}", {"content-type": "application/json"})
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        _stop(process)
    assert process.stderr is not None
    assert process.stderr.read() == b""
    lines = out.read_bytes().splitlines()
    assert len(lines) >= 2
    for raw in lines:
        assert not raw.startswith(b"\x1e"), raw  # an RFC 7464 record: twist's own JSON observer
        record = json.loads(raw)
        assert {"time", "level", "namespace", "message"} <= set(record), record
        assert "log_format" not in record, record  # twist's observer copies the format string and fields
    assert any("gatewayd stopped" in json.loads(raw)["message"] for raw in lines)
    [access] = [json.loads(raw) for raw in lines if json.loads(raw)["namespace"] == "gatewayd.access"]
    assert (access["level"], access["kind"], access["method"], access["stage"]) == (
        "info", "rpc", "/no.Such/Method", "request")


def test_unit_reloads_with_sighup() -> None:
    """``systemctl reload`` sends SIGHUP, which re-reads the config (tests/integration/test_reload.py)."""
    lines = (CONF / "gatewayd.service").read_text().splitlines()
    directives = [line for line in lines if line.strip() and not line.lstrip().startswith(("#", ";"))]
    assert [line for line in directives if "HUP" in line] == ["ExecReload=/bin/kill -HUP $MAINPID"]


def test_socket_unit_holds_the_port_for_several_instances() -> None:
    socket_unit = (CONF / "gatewayd.socket").read_text()
    assert "ListenStream=8080" in socket_unit
    assert "ReusePort=true" in socket_unit


# --- socket activation ----------------------------------------------------------------------


@pytest.fixture
def activation_socket() -> Iterator[socket.socket]:
    """A listening loopback socket, as systemd would hold it for gatewayd.socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        yield sock
    finally:
        sock.close()


def _activated(sock: socket.socket, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    config = tmp_path / f"{name}.toml"
    config.write_text('[server]\nlisten = "systemd:domain=INET:index=0"\ndrain_timeout_s = 2.0\n')
    log = (tmp_path / f"{name}.log").open("wb")
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRAPPER,
                str(sock.fileno()),
                TWIST,
                "--log-format=text",
                "gatewayd",
                "--dev",
                "--config",
                str(config),
                "--state-dir",
                str(tmp_path / name),
            ],
            pass_fds=(sock.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    finally:
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Return once ``pid`` is stopped (state T in /proc), so it can no longer accept."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop")
        time.sleep(0.01)


def _get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_gateway_serves_on_the_socket_systemd_passes(
    activation_socket: socket.socket, tmp_path: Path
) -> None:
    port = activation_socket.getsockname()[1]
    process = _activated(activation_socket, tmp_path, "one")
    try:
        # As with systemd, the kernel queues this connection on the socket before the gateway
        # runs; it is answered once the gateway adopts the socket (the timeout bounds the wait).
        status, body = _get(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"}), (tmp_path / "one.log").read_text()
        assert f"gatewayd listening on 127.0.0.1:{port}" in (tmp_path / "one.log").read_text()
    finally:
        _stop(process)
    # The process ended and the socket is still ours: a restarted instance would be served the same port.
    assert process.returncode is not None
    assert activation_socket.getsockname()[1] == port


def test_two_instances_share_one_activation_socket(activation_socket: socket.socket, tmp_path: Path) -> None:
    """Several instances with the same socket (``Sockets=gatewayd.socket``) all accept from it.

    Each dev-mode instance has its own generated key, listed first at
    /api/v1/public/gateway-keys, which tells which instance answered. Which
    process the kernel hands a connection to is up to it, so each instance is
    shown serving while the other is frozen (SIGSTOP): only it can accept then.
    """
    port = activation_socket.getsockname()[1]
    processes = [_activated(activation_socket, tmp_path, name) for name in ("a", "b")]
    try:
        signers: list[str] = []
        for frozen in processes:
            frozen.send_signal(signal.SIGSTOP)
            _wait_stopped(frozen.pid)
            try:
                status, body = _get(port, "/api/v1/public/gateway-keys")
            finally:
                frozen.send_signal(signal.SIGCONT)
            assert status == 200, body
            signers.append(json.loads(body)["keys"][0]["key_id"])
        assert len(set(signers)) == 2, f"the same instance answered both times: {signers}"
    finally:
        for process in processes:
            _stop(process)
