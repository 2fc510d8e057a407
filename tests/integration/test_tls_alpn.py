"""TLS on the one port: ALPN h2 selects HTTP/2 (a grpcio client), http/1.1 or none selects HTTP/1.1.

Under TLS, ALPN alone decides: the HTTP/2 preface without ALPN ``h2`` is a bad HTTP/1.1
request. Web resources learn that the connection is TLS (``isSecure()``) over HTTP/2 too.
"""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, threads
from twisted.internet import ssl as twisted_ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.web.resource import Resource

from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.config import Config
from gatewayd.health import HealthService
from gatewayd.rpc.methods import MethodTable
from gatewayd.service import listen_endpoint
from gatewayd.testing.raw_h2 import RawH2Client
from gatewayd.transport.listener import H2_PREFACE
from gatewayd.transport.server import build_factory


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _grpc_check(port: int, cert: bytes) -> int:
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        return int(check(health_pb2.HealthCheckRequest(service=""), timeout=10).status)


def _http1_check(port: int, cert_path: Path, alpn: list[str] | None) -> tuple[str | None, int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(cert_path))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        connection.request("POST", "/grpc.health.v1.Health/Check", body=b"{}",
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read())
        assert connection.sock is not None
        return connection.sock.selected_alpn_protocol(), response.status, body
    finally:
        connection.close()


def _preface_without_h2(port: int, cert_path: Path, alpn: list[str] | None) -> tuple[str | None, bytes]:
    """Send the HTTP/2 preface and an empty SETTINGS frame over TLS; what came back until the close."""
    context = ssl.create_default_context(cafile=str(cert_path))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        return tls.selected_alpn_protocol(), received


class Secure(Resource):
    """Answers whether the request is secure."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"secure" if request.isSecure() else b"plain"


@pytest_twisted.async_yield_fixture
async def tls_server(tmp_path: Path) -> Any:
    """A TLS listener serving Health and ``Secure``: yields ``(port number, certificate path)``."""
    cert_path, key_path = _self_signed(tmp_path)
    config = Config().replace(server={"listen": "tcp:0:interface=127.0.0.1", "tls_certificate": str(cert_path),
                                      "tls_private_key": str(key_path)})
    methods = MethodTable()
    for method in HealthService([""]).methods():
        methods.add(method)
    factory, _ = build_factory(methods, reactor, config.server, web_resource=Secure())
    port = await listen_endpoint(reactor, config).listen(factory)
    try:
        yield port.getHost().port, cert_path
    finally:
        await port.stopListening()
        for protocol in list(factory.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_tls_alpn_selects_http2_or_http11(tls_server: tuple[int, Path]) -> None:
    number, cert_path = tls_server
    status = await threads.deferToThread(_grpc_check, number, cert_path.read_bytes())
    assert status == health_pb2.HealthCheckResponse.SERVING
    for alpn in (["http/1.1"], None):
        selected, status, body = await threads.deferToThread(_http1_check, number, cert_path, alpn)
        assert (selected, status, body) == (alpn[0] if alpn else None, 200, {"status": "SERVING"})


@pytest_twisted.ensureDeferred
async def test_the_http2_preface_without_alpn_h2_is_a_bad_http11_request(tls_server: tuple[int, Path]) -> None:
    number, cert_path = tls_server
    for alpn in (None, ["http/1.1"]):
        selected, received = await threads.deferToThread(_preface_without_h2, number, cert_path, alpn)
        assert selected == (alpn[0] if alpn else None)
        assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received


@pytest_twisted.ensureDeferred
async def test_web_resources_over_http2_see_a_secure_request(tls_server: tuple[int, Path]) -> None:
    number, cert_path = tls_server
    options = twisted_ssl.optionsForClientTLS("localhost", twisted_ssl.Certificate.loadPEM(cert_path.read_bytes()),
                                              acceptableProtocols=[b"h2"])
    client = RawH2Client()
    await connectProtocol(wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", number)), client)
    try:
        sid = client.open_stream("/secure", content_type=None, method="GET")
        await client.wait(lambda: client.responses[sid].done, "the answer")
        assert client.transport is not None and client.transport.negotiatedProtocol == b"h2"  # type: ignore[attr-defined]
        assert client.responses[sid].status == 200 and client.responses[sid].data == b"secure"
    finally:
        client.transport.abortConnection()  # type: ignore[union-attr]
        await client.wait(lambda: client.closed, "close")
