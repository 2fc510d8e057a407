from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestEnvelope(_message.Message):
    __slots__ = ("protocol_version", "device_session_id", "request_id", "timestamp_ms", "message_type", "payload_hash")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_HASH_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    device_session_id: str
    request_id: str
    timestamp_ms: int
    message_type: str
    payload_hash: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., device_session_id: _Optional[str] = ..., request_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., message_type: _Optional[str] = ..., payload_hash: _Optional[bytes] = ...) -> None: ...

class ExecuteCommandRequest(_message.Message):
    __slots__ = ("envelope", "payload_bytes", "signature")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    envelope: RequestEnvelope
    payload_bytes: bytes
    signature: bytes
    def __init__(self, envelope: _Optional[_Union[RequestEnvelope, _Mapping]] = ..., payload_bytes: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ResponseEnvelope(_message.Message):
    __slots__ = ("protocol_version", "request_id", "timestamp_ms", "result_code", "payload_hash", "key_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_CODE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    request_id: str
    timestamp_ms: int
    result_code: str
    payload_hash: bytes
    key_id: str
    def __init__(self, protocol_version: _Optional[int] = ..., request_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., result_code: _Optional[str] = ..., payload_hash: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class ExecuteCommandResponse(_message.Message):
    __slots__ = ("envelope", "payload_bytes", "signature")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    envelope: ResponseEnvelope
    payload_bytes: bytes
    signature: bytes
    def __init__(self, envelope: _Optional[_Union[ResponseEnvelope, _Mapping]] = ..., payload_bytes: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubscribeEventsRequest(_message.Message):
    __slots__ = ("envelope", "signature")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    envelope: RequestEnvelope
    signature: bytes
    def __init__(self, envelope: _Optional[_Union[RequestEnvelope, _Mapping]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class GatewayEvent(_message.Message):
    __slots__ = ("event_type", "event_id", "timestamp_ms", "payload_bytes", "payload_hash", "key_id", "signature")
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    event_type: str
    event_id: str
    timestamp_ms: int
    payload_bytes: bytes
    payload_hash: bytes
    key_id: str
    signature: bytes
    def __init__(self, event_type: _Optional[str] = ..., event_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., payload_bytes: _Optional[bytes] = ..., payload_hash: _Optional[bytes] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...
