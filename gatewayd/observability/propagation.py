"""W3C trace context from a call to the backend requests it causes, with tracing off (PROTOCOL.md section 8).

A client's ``traceparent`` and ``tracestate`` request headers (gRPC metadata,
gRPC-Web and Connect headers: all the same ``Call.metadata``) go unchanged on
the session lookup and the user route the call causes, so the backend's spans
join the client's trace even when the gateway records none. With tracing on,
``gatewayd.observability.tracing.TracedBackend`` takes this module's place and
puts the gateway's own span in between.

Promises:

- a ``traceparent`` that is not W3C trace context (version ``ff``, an all-zero
  id, upper-case hex, a version-00 value of the wrong length...) is dropped,
  and its ``tracestate`` with it: W3C says not to pass on what we cannot parse;
- a ``tracestate`` is passed on only with a valid ``traceparent``, only when it
  is printable ASCII of at most ``MAX_TRACESTATE_CHARS`` (W3C's advice: a
  vendor may drop a longer one), else it is dropped on its own;
- nothing is allocated for a call that sent no ``traceparent``;
- the public REST proxy's POSTs (login) pass the client's trace context on the same way
  (``request_trace_context``), tracing on or off: they are not RPCs and get no span.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from gatewayd.backend.rest import BackendAnswer, BackendClient, Session
    from gatewayd.config import Route
    from gatewayd.rpc.call import Call

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACESTATE_CHARS = 512

# version-traceId-parentId-flags, lower-case hex; ff is not a version, all-zero ids are invalid.
# A version above 00 may append "-..." fields (W3C: parse what this version knows, pass the rest on).
_TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]*)?")
_TRACESTATE = re.compile(r"[ -~]*")  # printable ASCII; the backend parses the list


def valid_traceparent(value: str) -> bool:
    """True when ``value`` is a W3C ``traceparent`` this gateway may pass on."""
    if _TRACEPARENT.fullmatch(value) is None:
        return False
    return len(value) == 55 or not value.startswith("00-")  # version 00 has exactly four fields


def client_trace_context(metadata: Mapping[str, str]) -> dict[str, str]:
    """The client's ``traceparent`` (and ``tracestate``) that may be passed on, by header name."""
    traceparent = metadata.get(TRACEPARENT)
    if traceparent is None or not valid_traceparent(traceparent):
        return {}
    tracestate = metadata.get(TRACESTATE)
    if tracestate and len(tracestate) <= MAX_TRACESTATE_CHARS and _TRACESTATE.fullmatch(tracestate):
        return {TRACEPARENT: traceparent, TRACESTATE: tracestate}
    return {TRACEPARENT: traceparent}


def client_trace_headers(metadata: Mapping[str, str]) -> bytes:
    """``client_trace_context`` as HTTP/1.1 header lines (each ending in CRLF), or ``b""``."""
    if TRACEPARENT not in metadata:
        return b""  # the common case: nothing to build
    return b"".join(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in
                    client_trace_context(metadata).items())


def request_trace_context(request: Any) -> dict[str, str]:
    """``client_trace_context`` of a twisted.web request (the public REST proxy's POSTs)."""
    headers = request.requestHeaders
    found = {}
    for name in (TRACEPARENT, TRACESTATE):
        values = headers.getRawHeaders(name)
        if values:
            found[name] = ",".join(values)  # RFC 9110: repeated list headers are one comma-joined list
    return client_trace_context(found)


class ClientTraceBackend:
    """The pipeline's backend calls (session lookups, user routes) with the calling client's trace
    context copied onto them; the gateway records no span (tracing off)."""

    def __init__(self, backend: BackendClient) -> None:
        self._backend = backend
        self._call_route = backend.call_route

    def get_session(self, device_session_id: str, call: Call | None = None) -> Deferred[Session | None]:
        """``BackendClient.get_session`` for ``call`` (a ``SessionCache`` lookup)."""
        headers = b"" if call is None else client_trace_headers(call.metadata)
        return self._backend.get_session(device_session_id, headers)

    def call_route(
        self, route: Route, payload: bytes, user_id: str, device_session_id: str, request_id: str,
        call: Call | None = None,
    ) -> Deferred[BackendAnswer]:
        """``BackendClient.call_route`` for ``call`` (the pipeline's ``RouteCaller``)."""
        # client_trace_headers(call.metadata), without the call for a call that sent no traceparent.
        if call is None or TRACEPARENT not in call.metadata:
            return self._call_route(route, payload, user_id, device_session_id, request_id)
        headers = client_trace_headers(call.metadata)
        return self._call_route(route, payload, user_id, device_session_id, request_id, headers)
