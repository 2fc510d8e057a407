"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``): the served schemas, for grpcurl and buf curl.

Answers ``list_services`` with every service of the method table that has a
descriptor (the reflection services included) and ``file_by_filename`` / ``file_containing_symbol`` with the
serialized ``FileDescriptorProto`` of the file asked for followed by its transitive
dependencies, taken from the generated descriptors the handlers use. Only files of
served services (and what they import) are visible: nothing else loaded in the process.

The reflection messages live in a private descriptor pool (see scripts/gen_proto.py):
grpcio-reflection registers the same names in protobuf's default pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import Message

from gatewayd._proto.grpc.reflection.v1 import reflection_descriptor as v1
from gatewayd._proto.grpc.reflection.v1alpha import reflection_descriptor as v1alpha
from gatewayd.rpc.bidi import RequestStream
from gatewayd.rpc.call import Call, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.methods import Method, MethodTable

_POOL = descriptor_pool.DescriptorPool()
for _serialized in (v1.SERIALIZED_FILE, v1alpha.SERIALIZED_FILE):
    _POOL.AddSerializedFile(_serialized)


@dataclass(frozen=True)
class ReflectionVersion:
    """One reflection package: its method path and message classes."""

    package: str
    request: type[Message]
    response: type[Message]

    @property
    def path(self) -> str:
        return f"/{self.package}.ServerReflection/ServerReflectionInfo"


def _version(package: str) -> ReflectionVersion:
    def cls(name: str) -> type[Message]:
        return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{package}.{name}"))

    return ReflectionVersion(package, cls("ServerReflectionRequest"), cls("ServerReflectionResponse"))


VERSIONS = (_version("grpc.reflection.v1"), _version("grpc.reflection.v1alpha"))


class SchemaIndex:
    """Files (with their dependencies) and the fully qualified symbols they declare."""

    def __init__(self, files: Iterable[FileDescriptor]) -> None:
        self._files: dict[str, FileDescriptor] = {}
        self._serialized: dict[str, bytes] = {}
        self.symbols: dict[str, str] = {}
        for file in files:
            self._add(file)

    def _add(self, file: FileDescriptor) -> None:
        if file.name in self._files:
            return
        self._files[file.name] = file
        for dependency in file.dependencies:
            self._add(dependency)
        for message in file.message_types_by_name.values():
            self._add_message(message, file.name)
        for enum in file.enum_types_by_name.values():
            self.symbols[enum.full_name] = file.name
        for extension in file.extensions_by_name.values():
            self.symbols[extension.full_name] = file.name
        for service in file.services_by_name.values():
            self.symbols[service.full_name] = file.name
            for method in service.methods:
                self.symbols[method.full_name] = file.name

    def _add_message(self, message: Descriptor, file_name: str) -> None:
        self.symbols[message.full_name] = file_name
        for nested in message.nested_types:
            self._add_message(nested, file_name)
        for enum in message.enum_types:
            self.symbols[enum.full_name] = file_name

    def with_dependencies(self, name: str) -> list[bytes] | None:
        """The serialized file ``name`` first, then every file it imports (transitively); ``None`` if unknown."""
        if name not in self._files:
            return None
        order: list[str] = []

        def visit(file: FileDescriptor) -> None:
            if file.name not in order:
                order.append(file.name)
                for dependency in file.dependencies:
                    visit(dependency)

        visit(self._files[name])
        return [self._serialize(n) for n in order]

    def _serialize(self, name: str) -> bytes:
        data = self._serialized.get(name)
        if data is None:
            proto = descriptor_pb2.FileDescriptorProto()
            self._files[name].CopyToProto(proto)
            data = self._serialized[name] = proto.SerializeToString(deterministic=True)
        return data


class ReflectionService:
    """Serves reflection for the services of ``table`` (read at the first request, so it lists itself)."""

    def __init__(self, table: MethodTable) -> None:
        self._table = table
        self._index: SchemaIndex | None = None
        self._services: list[str] = []

    def methods(self) -> list[Method]:
        return [
            Method(v.path, v.request, v.response, stream=self._handler(v), bidi=True) for v in VERSIONS
        ]

    def _handler(self, version: ReflectionVersion) -> Any:
        async def serve(call: Call, requests: RequestStream, stream: ServerStream) -> None:
            while (request := await requests.next()) is not None:
                stream.send(self.answer(version, request))

        return serve

    @property
    def index(self) -> SchemaIndex:
        if self._index is None:
            files: list[Any] = []
            for method in self._table:
                files += [method.request_type.DESCRIPTOR.file, method.response_type.DESCRIPTOR.file]
            self._index = SchemaIndex(files)
            # A service without a descriptor could be listed but not described, which breaks clients.
            self._services = sorted(s for s in self._table.services() if s in self._index.symbols)
        return self._index

    def answer(self, version: ReflectionVersion, request: Any) -> Message:
        """The response to one reflection request (errors are ``error_response``s, as the protocol says)."""
        index = self.index
        response: Any = version.response()
        response.valid_host = request.host
        response.original_request.CopyFrom(request)
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            for name in self._services:
                response.list_services_response.service.add(name=name)
            return response
        files: list[bytes] | None = None
        if kind == "file_by_filename":
            files = index.with_dependencies(request.file_by_filename)
            missing = f"file {request.file_by_filename!r} not found"
        elif kind == "file_containing_symbol":
            file_name = index.symbols.get(request.file_containing_symbol)
            files = None if file_name is None else index.with_dependencies(file_name)
            missing = f"symbol {request.file_containing_symbol!r} not found"
        elif kind == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            if name not in index.symbols:
                return _error(response, Code.NOT_FOUND, f"type {name!r} not found")
            response.all_extension_numbers_response.base_type_name = name  # no served type has extensions
            return response
        elif kind == "file_containing_extension":
            extension = request.file_containing_extension
            missing = f"extension {extension.extension_number} of {extension.containing_type!r} not found"
        else:
            return _error(response, Code.INVALID_ARGUMENT, "empty reflection request")
        if files is None:
            return _error(response, Code.NOT_FOUND, missing)
        response.file_descriptor_response.file_descriptor_proto.extend(files)
        return response


def _error(response: Any, code: Code, message: str) -> Any:
    response.error_response.error_code = int(code)
    response.error_response.error_message = message
    return response
