"""Scale-out: several ``twist gatewayd`` processes on one ``reuseport:`` port, sharing one Redis.

Which process answered a call is told by the key that signed its response:
each process gets its own signing key and publishes the other's public key
(as during a key rotation), so every response verifies wherever it came
from, and ``envelope.key_id`` names the process. Over HTTP/1.1 keep-alive a
connection stays with the process that accepted it, so a call that carries
no key_id (an ALREADY_EXISTS rejection) is attributed by a signed call sent
right after it on the same connection.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import endpoints, error, protocol
from twisted.internet import reactor as default_reactor

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse
from gatewayd.client.keys import DeviceKey
from gatewayd.client.sign import sign_request
from gatewayd.client.verify import verify_response
from gatewayd.endpoints import ReusePortParser, ReusePortServerEndpoint
from gatewayd.signing import GatewayKey
from gatewayd.testing.redis import RedisServer, free_port

TWIST = str(Path(sys.executable).with_name("twist"))
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
EXECUTE = "/gateway.v1.Gateway/ExecuteCommand"


# --- the endpoint itself, in-process -------------------------------------------------------


def test_parser_reads_port_interface_backlog_and_ipv6only() -> None:
    e = ReusePortParser().parseStreamServer(
        default_reactor, "8080", interface="::1", backlog="7", ipv6only="yes"
    )
    assert (e.port, e.interface, e.backlog, e.ipv6only) == (8080, "::1", 7, True)
    with pytest.raises(ValueError, match="unknown option"):
        ReusePortParser().parseStreamServer(default_reactor, "8080", nodelay="yes")


def test_endpoint_string_is_found_through_the_plugin() -> None:
    endpoint = endpoints.serverFromString(default_reactor, r"reuseport:0:interface=127.0.0.1")
    assert isinstance(endpoint, ReusePortServerEndpoint)
    assert endpoint.interface == "127.0.0.1"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("interface", ["127.0.0.1", "::1"])
@pytest_twisted.inlineCallbacks
def test_two_listeners_share_a_port_where_tcp_cannot(interface: str) -> None:
    if interface == "::1" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    factory = protocol.Factory.forProtocol(protocol.Protocol)
    first = yield ReusePortServerEndpoint(default_reactor, 0, interface).listen(factory)
    port = first.getHost().port
    try:
        second = yield ReusePortServerEndpoint(default_reactor, port, interface).listen(factory)
        try:
            assert second.getHost().port == port
            # Without SO_REUSEPORT the same bind is refused: the option is what makes sharing work.
            plain = endpoints.serverFromString(default_reactor, f"tcp:{port}:interface={_escape(interface)}")
            with pytest.raises(error.CannotListenError):
                yield plain.listen(factory)
        finally:
            yield second.stopListening()
    finally:
        yield first.stopListening()


def _escape(interface: str) -> str:
    return interface.replace(":", "\\:")


# --- two real gateway processes -------------------------------------------------------------


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _spawn(args: list[str], log: Path) -> Proc:
    out = log.open("wb")
    try:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    finally:
        out.close()
    return Proc(process, log)


def _stop(proc: Proc) -> None:
    if proc.process.poll() is None:
        proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()


def _wait_for(predicate, what: str, procs: list[Proc], timeout: float = START_TIMEOUT_S) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.process.poll() is not None:
                raise AssertionError(
                    f"{p.process.args} exited {p.process.returncode} before {what}:\n{p.text()}"
                )
        time.sleep(0.02)
    logs = "\n---\n".join(p.text()[-3000:] for p in procs)
    raise AssertionError(f"timed out waiting for {what}:\n{logs}")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class Cluster:
    port: int
    keys: dict[str, GatewayKey]  # key_id -> the key of one gateway process
    gateways: list[Proc]


def _gateway_config(
    path: Path, port: int, key: Path, other_public: Path, redis_url: str, http: int, push: int
) -> None:
    path.write_text(
        f'[server]\nlisten = "reuseport:{port}:interface=127.0.0.1"\ndrain_timeout_s = 2.0\n'
        f'[backend]\nbase_url = "http://127.0.0.1:{http}"\npush_endpoint = "tcp:host=127.0.0.1:port={push}"\n'
        f'[keys]\nsigning_key = "{key}"\npublished = ["{other_public}"]\n'
        f'[stores]\nkind = "redis"\nredis_url = "{redis_url}"\nkey_prefix = "scaleout:"\n'
    )


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[Cluster]:
    """The reference backend, and two production-mode gateways on one reuseport port and one Redis."""
    http, push, port = free_port(), free_port(), free_port()
    procs: list[Proc] = []
    try:
        backend = _spawn(
            [
                TWIST,
                "--log-format=text",
                "gatewayd-devbackend",
                "--http",
                f"tcp:{http}:interface=127.0.0.1",
                "--push",
                f"tcp:{push}:interface=127.0.0.1",
            ],
            tmp_path / "backend.log",
        )
        procs.append(backend)
        _wait_for(lambda: _accepts(http) and _accepts(push), "the backend to listen", procs)
        keys = [GatewayKey.generate(), GatewayKey.generate()]
        for i, key in enumerate(keys):
            key.save(tmp_path / f"gw{i}.key")
            (tmp_path / f"gw{i}.pub").write_text(key.published().as_json()["public_key"] + "\n")
        gateways = []
        for i in range(2):
            config = tmp_path / f"gw{i}.toml"
            _gateway_config(
                config,
                port,
                tmp_path / f"gw{i}.key",
                tmp_path / f"gw{1 - i}.pub",
                redis_server.url,
                http,
                push,
            )
            gateway = _spawn(
                [TWIST, "--log-format=text", "gatewayd", "--config", str(config)], tmp_path / f"gw{i}.log"
            )
            procs.append(gateway)
            gateways.append(gateway)
        # Each logs this line only once its reuseport listener is bound (a failed bind never logs it).
        _wait_for(
            lambda: all("gatewayd listening on" in g.text() for g in gateways),
            "both gateways to listen",
            procs,
        )
        yield Cluster(port, {k.key_id: k for k in keys}, gateways)
    finally:
        for p in reversed(procs):
            _stop(p)


def _login(port: int, email: str) -> tuple[DeviceKey, str]:
    key = DeviceKey.generate()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"}
        # A gateway listens before its Redis connection is up and fails closed (503) until then:
        # that is what /readyz tells a balancer. Here, retry within a bound.
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            conn.request("POST", "/api/v1/public/auth/send-email-code", json.dumps({"email": email}), headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status == 200, answer
        challenge = json.loads(answer)["challenge_id"]
        body = {"challenge_id": challenge, "code": "000000", "client_public_key": key.public_key_b64}
        conn.request("POST", "/api/v1/public/auth/confirm-email-code", json.dumps(body), headers)
        return key, json.loads(_read(conn, 200))["device_session_id"]
    finally:
        conn.close()


def _read(conn: http.client.HTTPConnection, expected: int) -> bytes:
    response = conn.getresponse()
    body = response.read()
    assert response.status == expected, (response.status, body)
    return body


class WallClock:
    def seconds(self) -> float:
        return time.time()


def _request(key: DeviceKey, session: str) -> ExecuteCommandRequest:
    return sign_request(key, session, "user.profile.get", b"", clock=WallClock())


def _execute(conn: http.client.HTTPConnection, request: ExecuteCommandRequest) -> tuple[int, bytes]:
    """One Connect unary call on ``conn`` (kept alive): the HTTP status and the body."""
    conn.request(
        "POST",
        EXECUTE,
        request.SerializeToString(),
        {"Content-Type": "application/proto", "Connect-Protocol-Version": "1"},
    )
    response = conn.getresponse()
    return response.status, response.read()


def _signer(cluster: Cluster, session: str, request: ExecuteCommandRequest, body: bytes) -> str:
    """The key_id of a verified OK response: which process answered."""
    response = ExecuteCommandResponse()
    response.ParseFromString(body)
    key = cluster.keys[response.envelope.key_id]
    verified = verify_response(response, session, request.envelope.request_id, key.public_key)
    assert verified.ok, verified.result_code
    return verified.key_id


def test_two_processes_share_one_port_and_one_replay_store(cluster: Cluster) -> None:
    key, session = _login(cluster.port, "scale@example.com")

    # 1. Both processes accept connections on the shared port: fresh connections reach both.
    # (UNAVAILABLE, HTTP 503, only while a process's Redis connection is still coming up.)
    seen: dict[str, int] = {}
    deadline = time.monotonic() + START_TIMEOUT_S
    for _ in range(400):
        conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
        try:
            request = _request(key, session)
            status, body = _execute(conn, request)
            if status == 503 and time.monotonic() < deadline:
                continue
            assert status == 200, body
            signer = _signer(cluster, session, request, body)
            seen[signer] = seen.get(signer, 0) + 1
        finally:
            conn.close()
        if len(seen) == 2:
            break
    assert set(seen) == set(cluster.keys), f"only {seen} answered in 400 fresh connections"

    # 2. A request accepted by one process is ALREADY_EXISTS at the other (the replay store is Redis).
    replayed = _request(key, session)
    first = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    try:
        status, body = _execute(first, replayed)
        assert status == 200, body
        accepted_by = _signer(cluster, session, replayed, body)
    finally:
        first.close()
    rejected_by: set[str] = set()
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
        try:
            status, body = _execute(conn, replayed)
            assert status == 409, (status, body)  # Connect: already_exists is HTTP 409
            assert json.loads(body)["code"] == "already_exists"
            probe = _request(key, session)  # same connection, so the same process
            probe_status, probe_body = _execute(conn, probe)
            assert probe_status == 200, probe_body
            rejected_by.add(_signer(cluster, session, probe, probe_body))
        finally:
            conn.close()
        if rejected_by - {accepted_by}:
            break
    assert rejected_by - {accepted_by}, "the other process never answered the replayed request"
    for gateway in cluster.gateways:
        assert gateway.process.poll() is None, gateway.text()
