"""``twist gatewayd --dev`` listens on loopback only unless told, by name, to accept the risk.

The dev email code logs anyone in as any user, so dev mode on an address other machines can
reach (``--listen tcp:8080`` is every interface) must refuse to start, exit 1 and say why;
``--dev-insecure-allow-remote-logins`` accepts it (with a warning). Each case is a real
``twist`` process; the listen address may come from ``--listen``, the config file or the
environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gatewayd.testing.devprocess import TWIST, answers
from gatewayd.testing.procs import child_env
from gatewayd.testing.redis import free_port
from tests.integration.test_systemd import WRAPPER

FLAG = "--dev-insecure-allow-remote-logins"
START_TIMEOUT_S = 30.0


def twist(args: list[str], tmp_path: Path) -> list[str]:
    return [TWIST, "--log-format=text", "gatewayd", "--dev", "--state-dir", str(tmp_path / "state"), *args]


def run_refused(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(twist(args, tmp_path), capture_output=True, text=True, timeout=START_TIMEOUT_S,
                          cwd=tmp_path, stdin=subprocess.DEVNULL, env=env or child_env())


def serve_until_healthy(args: list[str], tmp_path: Path, host: str, port: int) -> tuple[int, str]:
    """Start the gateway, wait until ``host:port`` answers /healthz, SIGTERM it; (exit code, output)."""
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        process = subprocess.Popen(twist(args, tmp_path), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=tmp_path, env=child_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(port, "/healthz", host):
            text = log.read_text(errors="replace")
            assert process.poll() is None and time.monotonic() < deadline, f"not serving:\n{text}"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=START_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, log.read_text(errors="replace")


@pytest.mark.parametrize("listen", ["tcp:{port}", "tcp:{port}:interface=0.0.0.0", r"tcp6:{port}:interface=\:\:",
                                    "reuseport:{port}"])
def test_dev_mode_on_every_interface_refuses_to_start_and_says_why(tmp_path: Path, listen: str) -> None:
    port = free_port()
    result = run_refused(["--listen", listen.format(port=port)], tmp_path)
    assert result.returncode == 1, result
    assert "refusing to start" in result.stderr and "log in as any user" in result.stderr, result.stderr
    assert "every interface" in result.stderr and FLAG in result.stderr, result.stderr
    assert "Starting reactor" not in result.stdout + result.stderr  # it never ran, so never listened
    assert not answers(port, "/healthz")


def test_the_address_from_the_config_file_or_the_environment_is_checked_too(tmp_path: Path) -> None:
    config = tmp_path / "dev.toml"
    config.write_text(f'[server]\nlisten = "tcp:{free_port()}:interface=0.0.0.0"\n')
    from_file = run_refused(["--config", str(config)], tmp_path)
    assert from_file.returncode == 1 and "refusing to start" in from_file.stderr, from_file
    from_env = run_refused([], tmp_path, env=child_env(GATEWAYD_SERVER_LISTEN=f'"tcp:{free_port()}"'))
    assert from_env.returncode == 1 and "every interface" in from_env.stderr, from_env


def test_the_flag_is_refused_without_dev(tmp_path: Path) -> None:
    result = subprocess.run([TWIST, "gatewayd", "--config", os.devnull, FLAG], capture_output=True, text=True,
                            timeout=START_TIMEOUT_S, cwd=tmp_path, stdin=subprocess.DEVNULL, env=child_env())
    assert result.returncode != 0 and "only applies to --dev" in result.stdout + result.stderr, result


def test_any_loopback_address_is_fine(tmp_path: Path) -> None:
    port = free_port()
    code, text = serve_until_healthy(["--listen", f"tcp:{port}:interface=127.0.0.2"], tmp_path, "127.0.0.2", port)
    assert code == 0, text
    assert "reachable from other machines" not in text


def test_the_flag_accepts_the_risk_with_a_warning(tmp_path: Path) -> None:
    port = free_port()
    code, text = serve_until_healthy(["--listen", f"tcp:{port}", FLAG], tmp_path, "127.0.0.1", port)
    assert code == 0, text
    assert "dev mode is reachable from other machines" in text and "every interface" in text, text


def test_a_socket_from_systemd_is_judged_by_its_address(tmp_path: Path) -> None:
    """Socket activation as systemd does it (see test_systemd.py), with the socket on every interface."""
    config = tmp_path / "dev.toml"
    config.write_text('[server]\nlisten = "systemd:domain=INET:index=0"\n')
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(8)
        result = subprocess.run(
            [sys.executable, "-c", WRAPPER, str(sock.fileno()), *twist(["--config", str(config)], tmp_path)],
            pass_fds=(sock.fileno(),), capture_output=True, text=True, timeout=START_TIMEOUT_S, cwd=tmp_path,
            stdin=subprocess.DEVNULL, env=child_env())
    assert result.returncode == 1, result
    assert "refusing to start" in result.stderr and "bound to 0.0.0.0" in result.stderr, result.stderr
