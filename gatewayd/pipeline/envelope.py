"""Stage 1: the envelope is present and well formed (PROTOCOL.md section 3)."""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred

from gatewayd.pipeline.context import SUBSCRIBE_MESSAGE_TYPE, RequestContext
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError

PROTOCOL_VERSION = 1
HASH_BYTES = 32
SIGNATURE_BYTES = 64
MAX_MESSAGE_TYPE_CHARS = 128

_is_identifier = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch
# Message types are not restricted to the identifier alphabet (an unknown but sane type is
# UNIMPLEMENTED at routing), only to visible ASCII, so they stay safe in store keys and logs.
_is_message_type = re.compile(rf"[!-~]{{1,{MAX_MESSAGE_TYPE_CHARS}}}").fullmatch


def _invalid(what: str) -> RpcError:
    return RpcError(Code.INVALID_ARGUMENT, what)


class EnvelopeStage:
    """Rejects a missing or malformed envelope.

    The protocol version is checked first (FAILED_PRECONDITION; proto3 cannot tell
    an absent version from 0, so both are "not 1"), then every field
    (INVALID_ARGUMENT). Only an envelope missing altogether comes before the
    version check, as there is no version to look at.
    """

    name = "envelope"

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        env = ctx.envelope
        if env is None:
            raise _invalid("missing envelope")
        if env.protocol_version != PROTOCOL_VERSION:
            raise RpcError(Code.FAILED_PRECONDITION, f"protocol_version must be {PROTOCOL_VERSION}")
        if not _is_identifier(env.device_session_id):
            raise _invalid("malformed envelope.device_session_id")
        if not _is_identifier(env.request_id):
            raise _invalid("malformed envelope.request_id")
        if env.timestamp_ms <= 0:
            raise _invalid("malformed envelope.timestamp_ms")
        if ctx.subscription:
            if env.message_type != SUBSCRIBE_MESSAGE_TYPE:
                raise _invalid(f"envelope.message_type must be {SUBSCRIBE_MESSAGE_TYPE}")
        elif not _is_message_type(env.message_type):
            raise _invalid("malformed envelope.message_type")
        if len(env.payload_hash) != HASH_BYTES:
            raise _invalid(f"envelope.payload_hash must be {HASH_BYTES} bytes")
        if len(ctx.signature) != SIGNATURE_BYTES:
            raise _invalid(f"signature must be {SIGNATURE_BYTES} bytes")
        return None
