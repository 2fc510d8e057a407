from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribePushRequest(_message.Message):
    __slots__ = ("gateway_id",)
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    def __init__(self, gateway_id: _Optional[str] = ...) -> None: ...

class PushEvent(_message.Message):
    __slots__ = ("client_event", "session_invalidation")
    CLIENT_EVENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_INVALIDATION_FIELD_NUMBER: _ClassVar[int]
    client_event: ClientEvent
    session_invalidation: SessionInvalidation
    def __init__(self, client_event: _Optional[_Union[ClientEvent, _Mapping]] = ..., session_invalidation: _Optional[_Union[SessionInvalidation, _Mapping]] = ...) -> None: ...

class ClientEvent(_message.Message):
    __slots__ = ("user_id", "device_session_id", "event_type", "event_id", "payload_bytes", "timestamp_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_session_id: str
    event_type: str
    event_id: str
    payload_bytes: bytes
    timestamp_ms: int
    def __init__(self, user_id: _Optional[str] = ..., device_session_id: _Optional[str] = ..., event_type: _Optional[str] = ..., event_id: _Optional[str] = ..., payload_bytes: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class SessionInvalidation(_message.Message):
    __slots__ = ("user_id", "device_session_id", "reason")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_session_id: str
    reason: str
    def __init__(self, user_id: _Optional[str] = ..., device_session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
