"""Stage 3: the envelope's payload_hash is SHA-256 of the payload bytes."""

from __future__ import annotations

import hmac

from twisted.internet.defer import Deferred

from gatewayd.pipeline.context import RequestContext
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.signing import EMPTY_SHA256, sha256


class PayloadHashStage:
    """Rejects (INVALID_ARGUMENT) a payload that does not hash to the signed payload_hash."""

    name = "payload_hash"

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        expected = sha256(ctx.payload) if ctx.payload else EMPTY_SHA256
        if not hmac.compare_digest(expected, ctx.env.payload_hash):
            raise RpcError(Code.INVALID_ARGUMENT, "payload_hash does not match the payload")
        return None
