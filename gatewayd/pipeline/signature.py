"""Stage 4: the request is signed by the session's device key."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from gatewayd.pipeline.context import RequestContext
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.signing import request_signing_input_of, verify


class SignatureStage:
    """Rejects (UNAUTHENTICATED) a signature that does not verify against client_public_key."""

    name = "signature"

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        if not verify(ctx.caller.client_public_key, request_signing_input_of(ctx.env), ctx.signature):
            raise RpcError(Code.UNAUTHENTICATED, "bad signature")
        return None
