"""Error details (``google.rpc``): typed facts an error carries, the same on every protocol.

A detail is any protobuf message (``google.rpc.RetryInfo`` for a spent
budget). On the wire it travels packed in a ``google.protobuf.Any``: inside
``google.rpc.Status`` in gRPC's ``grpc-status-details-bin``, or as
``{"type", "value"}`` in a Connect error. These helpers are sans-I/O and used by
the server and every client alike; decoders take untrusted bytes and raise only
``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Sequence

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError, Message
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

TYPE_URL_PREFIX = "type.googleapis.com/"


def pack(detail: Message) -> AnyProto:
    """``detail`` in an ``Any`` (as it is when it already is one)."""
    if isinstance(detail, AnyProto):
        return detail
    packed = AnyProto()
    packed.Pack(detail)
    return packed


def type_name(packed: AnyProto) -> str:
    """The fully qualified message name of a packed detail (``google.rpc.RetryInfo``)."""
    return packed.type_url.rpartition("/")[2]


def packed(name: str, value: bytes) -> AnyProto:
    """An ``Any`` from a message name and its serialized bytes (Connect's ``type`` and ``value``)."""
    return AnyProto(type_url=TYPE_URL_PREFIX + name, value=value)


def retry_info(delay_s: float) -> RetryInfo:
    """``RetryInfo`` for a delay in seconds, rounded up to the millisecond (never early)."""
    info = RetryInfo()
    info.retry_delay.FromMilliseconds(max(0, math.ceil(delay_s * 1000)))
    return info


def retry_delay_s(details: Iterable[Message]) -> float | None:
    """The delay of the first ``RetryInfo`` among ``details`` (packed or not), in seconds."""
    for detail in details:
        info: Message | None = detail
        if isinstance(detail, AnyProto):
            info = RetryInfo() if detail.Is(RetryInfo.DESCRIPTOR) else None
            if info is not None and not detail.Unpack(info):
                info = None
        if isinstance(info, RetryInfo):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


# --- google.rpc.Status (grpc-status-details-bin) -------------------------------------------


def encode_status(code: int, message: str, details: Sequence[Message]) -> bytes:
    """A serialized ``google.rpc.Status`` whose code and message equal the call's status."""
    return Status(code=code, message=message, details=[pack(d) for d in details]).SerializeToString()


def decode_status_details(data: bytes) -> tuple[AnyProto, ...]:
    """The details of a serialized ``google.rpc.Status``; ``ValueError`` when it is not one."""
    status = Status()
    try:
        status.ParseFromString(data)
    except (DecodeError, RecursionError):
        raise ValueError("malformed google.rpc.Status") from None
    return tuple(status.details)


# --- base64 as binary metadata and Connect details use it ---------------------------------


def b64encode_unpadded(data: bytes) -> str:
    """Standard base64 without padding, as gRPC and Connect say binary values should be sent."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def b64decode_any(text: str) -> bytes:
    """Standard base64, padded or not (both must be accepted); ``ValueError`` otherwise."""
    stripped = text.strip().rstrip("=")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("malformed base64") from None
