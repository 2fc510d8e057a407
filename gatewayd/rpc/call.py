"""The protocol-neutral call: what a handler sees, whichever wire protocol carried it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message


@dataclass(slots=True)
class Call:
    """One RPC.

    ``metadata`` holds the request headers with lowercase names (for Connect
    and gRPC-Web the same headers a gRPC client would send as metadata).
    ``peer`` is the client's address as the listener resolved it (a trusted
    proxy's ``X-Forwarded-For`` already applied). ``deadline`` is in reactor
    seconds, or ``None``. ``context`` is free for the pipeline's stages.
    """

    method: str
    protocol: str
    metadata: Mapping[str, str]
    peer: str
    deadline: float | None = None
    context: dict[str, object] = field(default_factory=dict)


class Encoded:
    """A response message serialized once, to be written to many streams.

    The push hub wraps each signed event in one ``Encoded`` and hands the same
    object to every matching stream; codecs take ``proto`` (or ``json()``) and
    cache their framed bytes in ``frames`` so a frame is built once per format.
    """

    __slots__ = ("_json", "frames", "message", "proto")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.proto = message.SerializeToString()
        self._json: bytes | None = None
        self.frames: dict[str, bytes] = {}

    def json(self) -> bytes:
        """The message in Connect's canonical protobuf JSON (computed once)."""
        if self._json is None:
            self._json = encode_json(self.message)
        return self._json


def encode_json(message: Message) -> bytes:
    """Protobuf JSON as Connect specifies it: lowerCamel names, no whitespace."""
    return MessageToJson(message, indent=None, always_print_fields_with_no_presence=False).encode()


class ServerStream(Protocol):
    """Where a server-streaming handler writes its messages.

    ``send`` never blocks and never raises: when the client cannot keep up and
    the stream's bounded buffer overflows, the stream itself ends the call with
    RESOURCE_EXHAUSTED and cancels the handler's Deferred; when the stream is
    already closed, the message is dropped. ``closed`` tells which.
    """

    @property
    def closed(self) -> bool: ...

    def send(self, message: Message | Encoded) -> None: ...
