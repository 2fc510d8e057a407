"""What the verification stages share: the request being verified and what they learn about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandResponse, RequestEnvelope
from gatewayd.backend.rest import Session
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.stores.base import RateDecision

SUBSCRIBE_MESSAGE_TYPE = "gateway.subscribe"


class Envelope:
    """A ``RequestEnvelope``'s six fields, read once: the stages read them ~26 times per call, and
    each read of a protobuf (upb) field builds a new Python object."""

    __slots__ = ("device_session_id", "message_type", "payload_hash", "protocol_version", "request_id",
                 "timestamp_ms")

    def __init__(self, envelope: RequestEnvelope) -> None:
        self.protocol_version: int = envelope.protocol_version
        self.device_session_id: str = envelope.device_session_id
        self.request_id: str = envelope.request_id
        self.timestamp_ms: int = envelope.timestamp_ms
        self.message_type: str = envelope.message_type
        self.payload_hash: bytes = envelope.payload_hash


@dataclass(slots=True)
class RequestContext:
    """One request on its way through the stages.

    ``envelope`` is ``None`` when the request carried none (the envelope stage
    rejects that). ``payload`` is ``b""`` for SubscribeEvents. Stages fill in
    ``session`` (session stage), ``budgets`` (the replay stage, for the
    rate-limit stage) and ``response`` (route stage).
    """

    call: Call
    envelope: Envelope | RequestEnvelope | None
    payload: bytes
    signature: bytes
    subscription: bool = False
    session: Session | None = None
    budgets: tuple[RateDecision, ...] | None = None
    response: ExecuteCommandResponse | None = None

    @property
    def env(self) -> Envelope | RequestEnvelope:
        """The envelope, for stages that run after the envelope stage accepted it."""
        if self.envelope is None:
            raise RpcError(Code.INTERNAL, "stage order: no envelope")
        return self.envelope

    @property
    def caller(self) -> Session:
        """The caller's session, for stages that run after the session stage accepted it."""
        if self.session is None:
            raise RpcError(Code.INTERNAL, "stage order: no session")
        return self.session


class Stage(Protocol):
    """One verification step: accept by returning (``None`` or a Deferred firing ``None``),
    reject by raising ``RpcError`` (or errbacking with one)."""

    name: str

    def check(self, ctx: RequestContext) -> Deferred[None] | None: ...


class Clock(Protocol):
    """The part of ``IReactorTime`` the stages use (a reactor or ``task.Clock``)."""

    def seconds(self) -> float: ...


def now_ms(clock: Clock) -> int:
    """The clock's time in whole Unix milliseconds."""
    return int(clock.seconds() * 1000)
