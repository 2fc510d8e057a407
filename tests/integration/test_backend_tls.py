"""TLS to the backend (issue 11 item 7): the reference backend serves its REST API and its push stream
over TLS with a test CA; the gateway reaches REST over https and the push stream over HTTP/2 by
ALPN, verifying the backend against ``backend.tls_ca_file``, and presents a client certificate
when the backend requires one (mTLS). A gateway without it, or trusting another CA, is not ready.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl as pyssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import endpoints, reactor, threads
from twisted.internet import ssl as twisted_ssl

from gatewayd.client import GatewayClient, VerifiedEvent
from gatewayd.config import Config, ConfigError, from_mapping
from gatewayd.devbackend.listeners import DevBackendService
from gatewayd.devbackend.service import DevBackend
from gatewayd.devbackend.tls import server_tls_options
from gatewayd.service import Gateway, StartupError
from gatewayd.testing.client import DEV_CODE, login, new_email
from gatewayd.testing.wait import bounded, until

# --- a test CA ----------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@dataclass
class TestCA:
    __test__ = False
    folder: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, folder: Path, name: str) -> TestCA:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        ca = cls(folder, name, key, cert)
        _write(folder, name, cert, key)
        return ca

    @property
    def pem_path(self) -> str:
        return str(self.folder / f"{self.name}.pem")

    def issue(self, stem: str, *, server: bool) -> tuple[str, str]:
        """A certificate for ``localhost`` and 127.0.0.1 (server) or a client; its PEM and key paths."""
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name("localhost" if server else stem))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return _write(self.folder, stem, builder.sign(self.key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca: TestCA
    other_ca: TestCA
    server: tuple[str, str]
    client: tuple[str, str]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCA.create(tmp_path, "ca")
    return Pki(ca, TestCA.create(tmp_path, "other-ca"), ca.issue("backend", server=True),
               ca.issue("gateway", server=False))


# --- a TLS reference backend and a gateway reaching it --------------------------------------


@dataclass
class Stack:
    gateway: Gateway
    port: Any
    backend: DevBackend
    service: DevBackendService

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        response = await treq.get(self.url + "/readyz")
        return int(response.code), await response.json()

    async def stop(self) -> None:
        self.gateway.factory.accepting = False
        await self.port.stopListening()
        for protocol in list(self.gateway.factory.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        await self.gateway.push.stop()
        await self.gateway.backend.close()
        await self.gateway.stores.close()
        if self.service.running:
            await self.service.stopService()


class Stacks:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[Stack] = []

    async def start(self, server_tls: twisted_ssl.CertificateOptions, **backend: Any) -> Stack:
        """A TLS reference backend, and a gateway reaching it with ``backend`` keys (besides the URLs)."""
        devbackend = DevBackend(reactor, fixed_code=DEV_CODE, debug=True)
        service = DevBackendService(reactor, devbackend, "tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1",
                                    tls=server_tls)
        await service.startService()
        assert service.push_server is not None
        config = Config().replace(
            dev={"enabled": True, "state_dir": str(self.tmp_path / "state")}, stores={"kind": "memory"},
            backend={"base_url": f"https://localhost:{service.http_port.getHost().port}",
                     "push_endpoint": f"tls:host=localhost:port={service.push_server.port_number}",
                     "push_backoff_initial_s": 0.05, "push_backoff_max_s": 0.2, "timeout_s": 5.0, **backend},
        )
        gateway = Gateway(config, reactor)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(gateway.factory)
        stack = Stack(gateway, port, devbackend, service)
        self.running.append(stack)
        gateway.push.start()
        return stack


@pytest_twisted.async_yield_fixture
async def stacks(tmp_path: Path) -> AsyncIterator[Stacks]:
    made = Stacks(tmp_path)
    try:
        yield made
    finally:
        for stack in made.running:
            await stack.stop()


async def _round_trip(stack: Stack) -> None:
    """Login (public REST over https), a routed command (https) and its push event (HTTP/2 over TLS)."""
    await bounded(stack.gateway.push.when_connected())
    await until(lambda: stack.backend.bus.subscriber_count == 1, "the backend to see the push call")
    connection = stack.gateway.push.connection
    assert connection is not None and connection.transport.negotiatedProtocol == b"h2"  # type: ignore[attr-defined]
    key, session = await login(stack.url, new_email("tls"))
    client = GatewayClient(stack.url, "grpc", key=key, session=session, timeout_s=5.0)
    try:
        events: list[VerifiedEvent] = []
        stream = client.subscribe(events.append)
        await until(lambda: len(events) >= 1, "gateway.server_time")
        created = await client.execute("user.notes.create", {"text": "over tls"})
        assert created.result_code == "ok"
        await until(lambda: any(e.event_type == "user.note.created" for e in events), "the pushed user.note.created")
        stream.cancel()
    finally:
        await client.close()
    status, body = await stack.readyz()
    assert status == 200 and body["checks"] == {"backend": "ok", "stores": "ok", "push": "ok"}


# --- tests ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rest_over_https_and_push_over_h2_by_alpn_with_a_ca_bundle(stacks: Stacks, pki: Pki) -> None:
    stack = await stacks.start(server_tls_options(*pki.server), tls_ca_file=pki.ca.pem_path)
    await _round_trip(stack)


@pytest_twisted.ensureDeferred
async def test_mtls_the_gateway_presents_its_client_certificate(stacks: Stacks, pki: Pki) -> None:
    server_tls = server_tls_options(*pki.server, client_ca=pki.ca.pem_path)
    stack = await stacks.start(server_tls, tls_ca_file=pki.ca.pem_path, tls_client_cert=pki.client[0],
                               tls_client_key=pki.client[1])
    await _round_trip(stack)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("case", ["no client certificate", "another CA"])
async def test_a_gateway_the_backend_cannot_trust_or_that_cannot_trust_it_is_not_ready(
        stacks: Stacks, pki: Pki, case: str) -> None:
    server_tls = server_tls_options(*pki.server, client_ca=pki.ca.pem_path)
    if case == "no client certificate":
        stack = await stacks.start(server_tls, tls_ca_file=pki.ca.pem_path)
    else:
        stack = await stacks.start(server_tls, tls_ca_file=pki.other_ca.pem_path, tls_client_cert=pki.client[0],
                                   tls_client_key=pki.client[1])
    push = stack.gateway.push
    states: list[str] = []
    original = push._set_state

    def record(new: Any, reason: str = "", delay: float | None = None) -> None:
        states.append(new)
        original(new, reason, delay)

    push._set_state = record  # type: ignore[method-assign]
    # Several attempts, each refused in its handshake: the call never opens.
    await until(lambda: states.count("backoff") >= 3, "three failed push connects", timeout=20)
    assert "connected" not in states and not push.connected
    assert stack.backend.bus.subscriber_count == 0
    status, body = await stack.readyz()
    assert status == 503
    assert body["checks"]["backend"] != "ok" and body["checks"]["push"] != "ok" and body["checks"]["stores"] == "ok"
    response = await treq.post(stack.url + "/api/v1/public/auth/send-email-code", b'{"email": "x@example.com"}',
                               headers={"content-type": "application/json"})
    await response.content()
    assert response.code == 503  # the public proxy cannot reach the backend either


class NoAlpnServer:
    """A TLS server (Python's ssl, in a thread) that completes handshakes without ALPN and says nothing.

    (A Twisted or OpenSSL server offering protocols that do not overlap ours ends the handshake
    with an alert instead; this is the server that never heard of ALPN.)
    """

    def __init__(self, cert: str, key: str) -> None:
        self.context = pyssl.SSLContext(pyssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.accepted: list[pyssl.SSLSocket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return  # closed
            try:
                self.accepted.append(self.context.wrap_socket(connection, server_side=True))
            except OSError:
                connection.close()

    def close(self) -> None:
        self.socket.close()
        self.thread.join(timeout=10)
        for connection in self.accepted:
            connection.close()


@pytest_twisted.ensureDeferred
async def test_a_push_endpoint_that_does_not_select_h2_is_refused(stacks: Stacks, pki: Pki) -> None:
    server = NoAlpnServer(*pki.server)
    try:
        stack = await stacks.start(server_tls_options(*pki.server), tls_ca_file=pki.ca.pem_path,
                                   push_endpoint=f"tls:host=localhost:port={server.port}")
        reasons: list[str] = []
        original = stack.gateway.push._set_state

        def record(new: Any, reason: str = "", delay: float | None = None) -> None:
            reasons.append(f"{new} {reason}")
            original(new, reason, delay)

        stack.gateway.push._set_state = record  # type: ignore[method-assign]
        await until(lambda: any("did not select h2 by ALPN (got None)" in r for r in reasons),
                    lambda: f"the ALPN refusal: {reasons}", timeout=20)
        assert not stack.gateway.push.connected
        assert not any(r.startswith("connected") for r in reasons)
    finally:
        await threads.deferToThread(server.close)


def test_bad_tls_settings_are_refused_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"backend\.tls_client_cert and backend\.tls_client_key"):
        from_mapping({"backend": {"tls_client_cert": pki.client[0]}})

    def gateway(**backend: Any) -> None:
        urls = {"base_url": "https://localhost:1", "push_endpoint": "tls:host=localhost:port=1"}
        config = Config().replace(dev={"enabled": True, "state_dir": str(tmp_path / "state")},
                                  backend={**urls, **backend})
        Gateway(config, reactor)

    with pytest.raises(StartupError, match=r"backend\.tls_ca_file: .*missing\.pem"):
        gateway(tls_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(StartupError, match=r"backend\.tls_ca_file: .*not a PEM CA bundle"):
        gateway(tls_ca_file=pki.client[1])  # a key, not a certificate
    with pytest.raises(StartupError, match=r"backend\.tls_client_cert: cannot load it with backend\.tls_client_key"):
        gateway(tls_client_cert=pki.client[0], tls_client_key=pki.server[1])  # another certificate's key
    with pytest.raises(StartupError, match=r"backend\.push_endpoint: trustRoots= is not read here"):
        gateway(push_endpoint="tls:host=localhost:port=1:trustRoots=/etc/ssl/certs")


def test_the_dev_backend_command_line_takes_tls_files(pki: Pki) -> None:
    from twisted.python import usage

    from twisted.plugins.gatewayd_devbackend_plugin import DevBackendOptions

    options = DevBackendOptions()
    options.parseOptions(["--tls-certificate", pki.server[0], "--tls-private-key", pki.server[1],
                          "--tls-client-ca", pki.ca.pem_path])
    assert isinstance(options["tls"], twisted_ssl.CertificateOptions)
    assert options["tls"].verify and options["tls"]._acceptableProtocols == [b"h2", b"http/1.1"]
    plain = DevBackendOptions()
    plain.parseOptions([])
    assert plain["tls"] is None
    for bad in (["--tls-certificate", pki.server[0]], ["--tls-client-ca", pki.ca.pem_path],
                ["--tls-certificate", pki.server[0], "--tls-private-key", pki.client[1]]):
        with pytest.raises(usage.UsageError):
            DevBackendOptions().parseOptions(bad)
