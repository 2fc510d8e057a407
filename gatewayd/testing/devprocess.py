"""A real ``twist gatewayd --dev`` process on a free loopback port, for tests that need the whole daemon."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.testing.loopback import OnLoopback
from gatewayd.testing.redis import free_port

ROOT = Path(__file__).resolve().parents[2]
TWIST = str(Path(sys.executable).with_name("twist"))
START_TIMEOUT_S = 30.0


@dataclass
class DevGatewayProcess(OnLoopback):
    """The process, its port, its state folder and the file its output goes to."""

    process: subprocess.Popen[bytes]
    port: int
    state_dir: Path
    log: Path
    json_log: Path | None = None
    config: Path | None = None
    argv: list[str] = field(default_factory=list)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def json_text(self) -> str:
        return self.json_log.read_text(errors="replace") if self.json_log is not None else ""

    def sighup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


def answers(port: int, path: str = "/readyz", host: str = "127.0.0.1") -> bool:
    """``GET path`` on ``host:port`` answers 200 (``/readyz``: backend, stores and push stream up)."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def ready(port: int) -> bool:
    """``/readyz`` on the loopback ``port`` answers 200."""
    return answers(port)


def start_dev_process(tmp_path: Path, config_text: str | None = None, json_log: bool = False,
                      extra_args: tuple[str, ...] = ()) -> DevGatewayProcess:
    """Start ``twist gatewayd --dev`` (with ``--config`` when ``config_text`` is given); return it once ready."""
    port = free_port()
    log = tmp_path / "gatewayd.log"
    argv = [TWIST, "--log-format=text", "gatewayd", "--dev", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--state-dir", str(tmp_path / "state"), *extra_args]
    config = None
    if config_text is not None:
        config = tmp_path / "gatewayd.toml"
        config.write_text(config_text)
        argv += ["--config", str(config)]
    json_path = tmp_path / "gatewayd.jsonl" if json_log else None
    if json_path is not None:
        argv += ["--log-json", str(json_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYD_")}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=env)
    gateway = DevGatewayProcess(process, port, tmp_path / "state", log, json_path, config, argv)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready(port):
        if process.poll() is not None or time.monotonic() > deadline:
            gateway.stop()
            raise AssertionError(f"gateway not ready (exit {process.poll()}):\n{gateway.text()}")
        time.sleep(0.05)  # polling a child process with a bound, not standing in for an event
    return gateway
