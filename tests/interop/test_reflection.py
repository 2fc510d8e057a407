"""Server reflection against a running ``twist gatewayd --dev``: buf curl with no local schema, and
grpcio's reflection client (grpcio-reflection's ProtoReflectionDescriptorDatabase).

buf curl keeps the reflection stream open and sends each request only after the previous
answer arrived, so these also prove that the bidi stream is answered message by message.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gatewayd.rpc.codes import Code
from gatewayd.testing.devprocess import DevGatewayProcess, start_dev_process
from tests.interop._clients import BUF

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf (PyPI buf-bin) is not installed in .venv")

SERVICES = ["gateway.v1.Gateway", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"]
PROTOCOLS = ["connect", "grpc", "grpcweb"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevGatewayProcess]:
    gw = start_dev_process(tmp_path_factory.mktemp("reflect"))
    yield gw
    gw.stop()


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    """``buf curl`` without ``--schema``: the schema comes from the server."""
    return subprocess.run([str(BUF), "curl", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_buf_curl_lists_services_and_methods_by_reflection(gateway: DevGatewayProcess, protocol: str) -> None:
    listed = buf("--protocol", protocol, "--list-services", gateway.url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == SERVICES
    methods = buf("--protocol", protocol, "--list-methods", gateway.url)
    assert methods.returncode == 0, methods.stderr
    assert "gateway.v1.Gateway/SubscribeEvents" in methods.stdout.split()
    assert "grpc.health.v1.Health/Watch" in methods.stdout.split()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("reflect", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_calls_methods_with_the_reflected_schema(
        gateway: DevGatewayProcess, protocol: str, reflect: str) -> None:
    check = buf("--protocol", protocol, "--reflect-protocol", reflect, "-d", '{"service": "gateway.v1.Gateway"}',
                f"{gateway.url}/grpc.health.v1.Health/Check")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout) == {"status": "SERVING"}
    # The request is encoded from the reflected gateway.v1 schema and reaches the pipeline's first stage.
    execute = buf("--protocol", protocol, "--reflect-protocol", reflect,
                  "-d", '{"payloadBytes": "e30=", "signature": ""}',
                  f"{gateway.url}/gateway.v1.Gateway/ExecuteCommand")
    assert execute.returncode == 8 * Code.INVALID_ARGUMENT, execute.stderr
    assert json.loads(execute.stderr) == {"code": "invalid_argument", "message": "missing envelope"}


def test_buf_curl_rejects_an_unknown_field_from_the_reflected_schema(gateway: DevGatewayProcess) -> None:
    # Proof that buf used a schema at all: it refuses a field the reflected message lacks.
    result = buf("-d", '{"no_such_field": 1}', f"{gateway.url}/grpc.health.v1.Health/Check")
    assert result.returncode != 0
    assert "no_such_field" in result.stderr


def test_grpcio_reflection_client_resolves_every_service(gateway: DevGatewayProcess) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert sorted(database.get_services()) == SERVICES
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("gateway.v1.Gateway")
        assert service.file.name == "gateway/v1/gateway.proto"
        assert [m.name for m in service.methods] == ["ExecuteCommand", "SubscribeEvents"]
        assert service.methods_by_name["SubscribeEvents"].output_type.full_name == "gateway.v1.GatewayEvent"
        request = pool.FindMessageTypeByName("gateway.v1.RequestEnvelope")
        assert request.fields_by_name["timestamp_ms"].number == 4
        health = pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")
        assert [v.name for v in health.enum_types_by_name["ServingStatus"].values] == [
            "UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]
        reflection = pool.FindServiceByName("grpc.reflection.v1.ServerReflection")
        method = reflection.methods_by_name["ServerReflectionInfo"]
        assert method.client_streaming and method.server_streaming
        with pytest.raises(KeyError):
            pool.FindMessageTypeByName("google.protobuf.Timestamp")  # loaded in the process, not served


def test_reflection_off_by_config(tmp_path: Path) -> None:
    gw = start_dev_process(tmp_path, config_text="[server]\nreflection = false\n")
    try:
        listed = buf("--list-services", gw.url)
        assert listed.returncode != 0
        assert "unimplemented" in listed.stderr.lower(), listed.stderr
        with_schema = buf("--schema", str(Path(__file__).resolve().parents[2] / "proto"), "-d", "{}",
                          f"{gw.url}/grpc.health.v1.Health/Check")
        assert with_schema.returncode == 0, with_schema.stderr  # the rest of the service is there
    finally:
        gw.stop()
