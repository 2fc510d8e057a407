"""Server reflection's bidi stream on raw HTTP/2: each request answered as it arrives, before the
client half-closes; and ``ReflectionService.answer`` for every request kind."""

from __future__ import annotations

import pytest
import pytest_twisted
from google.protobuf import descriptor_pb2
from hyperframe.frame import DataFrame

from gatewayd.health import HealthService
from gatewayd.reflection import VERSIONS, ReflectionService
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame
from gatewayd.rpc.methods import MethodTable
from gatewayd.testing.harness import Harness, TestMethods
from gatewayd.testing.server import serve

V1, V1ALPHA = VERSIONS


def _table() -> tuple[MethodTable, ReflectionService]:
    table = MethodTable()
    for method in [*HealthService().methods(), *TestMethods().methods()[2:]]:  # Health (once) and test.v1.Test
        table.add(method)
    service = ReflectionService(table)
    for method in service.methods():
        table.add(method)
    return table, service


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("content_type", ["application/grpc", "application/connect+proto",
                                          "application/grpc-web+proto"])
async def test_each_request_is_answered_before_the_client_half_closes(harness: Harness, content_type: str) -> None:
    table, _ = _table()
    harness.server = await serve(table)
    client = await harness.h2()
    first = V1.request(list_services="").SerializeToString()
    sid = client.open_stream(V1.path, content_type, encode_frame(first), end_stream=False)
    response = client.responses[sid]
    await client.wait(lambda: len(response.messages()) == 1, "the first answer")
    [(_, payload)] = response.messages()
    names = [s.name for s in V1.response.FromString(payload).list_services_response.service]
    # test.v1.Test has no descriptor (its methods borrow gateway.v1 messages): not listed.
    assert names == ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection"]
    assert not response.done
    second = V1.request(file_containing_symbol="grpc.health.v1.Health.Watch").SerializeToString()
    client.send_body(sid, encode_frame(second), end_stream=False)
    await client.wait(lambda: len(response.messages()) == 2, "the second answer")
    answer = V1.response.FromString(response.messages()[1][1])
    [file] = answer.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(file).name == "grpc/health/v1/health.proto"
    assert not response.done
    client.write_frame(DataFrame(sid, b"", flags=["END_STREAM"]))  # half-close
    await client.wait(lambda: response.done, "the end of the call")
    if content_type == "application/grpc":
        assert response.grpc_status() == 0


@pytest_twisted.ensureDeferred
async def test_a_broken_frame_mid_stream_ends_the_call(harness: Harness) -> None:
    table, _ = _table()
    harness.server = await serve(table)
    client = await harness.h2()
    good = encode_frame(V1ALPHA.request(list_services="").SerializeToString())
    sid = client.open_stream(V1ALPHA.path, "application/grpc", good, end_stream=False)
    response = client.responses[sid]
    await client.wait(lambda: len(response.messages()) == 1, "the first answer")
    client.send_body(sid, encode_frame(b"\xff\xff\xff"), end_stream=False)  # not a protobuf message
    await client.wait(lambda: response.trailers is not None, "trailers")
    assert response.grpc_status() == Code.INVALID_ARGUMENT
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_unknown_method_is_unimplemented_before_the_client_half_closes(harness: Harness) -> None:
    table, _ = _table()
    harness.server = await serve(table)
    client = await harness.h2()
    sid = client.open_stream("/no.such.Service/Method", "application/grpc", encode_frame(b""), end_stream=False)
    await client.wait(lambda: client.responses[sid].headers is not None, "an answer")
    assert client.responses[sid].grpc_status() == Code.UNIMPLEMENTED


def _files(response: object) -> list[str]:
    protos = response.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
    return [descriptor_pb2.FileDescriptorProto.FromString(p).name for p in protos]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.package)
def test_answers(version: object) -> None:
    _, service = _table()
    v = version
    ask = v.request  # type: ignore[attr-defined]

    def answer(**kwargs: object) -> object:
        return service.answer(v, ask(host="h", **kwargs))  # type: ignore[arg-type]

    ok = answer(file_by_filename="gateway/v1/gateway.proto")
    assert _files(ok) == ["gateway/v1/gateway.proto"] and ok.valid_host == "h"  # type: ignore[attr-defined]
    assert ok.original_request.file_by_filename == "gateway/v1/gateway.proto"  # type: ignore[attr-defined]
    for symbol in ["gateway.v1.GatewayEvent", "gateway.v1.Gateway.ExecuteCommand",
                   "grpc.health.v1.HealthCheckResponse.ServingStatus"]:
        assert _files(answer(file_containing_symbol=symbol)), symbol
    own = answer(file_containing_symbol=f"{v.package}.ServerReflection")  # type: ignore[attr-defined]
    assert _files(own) == [f"{v.package.replace('.', '/')}/reflection.proto"]  # type: ignore[attr-defined]
    extensions = answer(all_extension_numbers_of_type="gateway.v1.GatewayEvent")
    assert extensions.all_extension_numbers_response.base_type_name == "gateway.v1.GatewayEvent"  # type: ignore
    for missing in [answer(file_by_filename="nope.proto"), answer(file_containing_symbol="test.v1.Test"),
                    answer(file_containing_symbol="google.protobuf.Any"),
                    answer(all_extension_numbers_of_type="nope.T"),
                    answer(file_containing_extension={"containing_type": "gateway.v1.GatewayEvent",
                                                      "extension_number": 100})]:
        assert missing.error_response.error_code == Code.NOT_FOUND, missing  # type: ignore[attr-defined]
    assert answer().error_response.error_code == Code.INVALID_ARGUMENT  # type: ignore[attr-defined]
