"""``GatewayClient``: log in, execute signed commands, subscribe to signed events."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    ExecuteCommandResponse,
    GatewayEvent,
)
from gatewayd.client.errors import NotLoggedInError, PublicApiError, RpcCallError, VerificationError
from gatewayd.client.keys import DeviceKey
from gatewayd.client.sign import RandomBytes, SecondsClock, sign_request, sign_subscribe
from gatewayd.client.verify import KeyCache, VerifiedEvent, VerifiedResponse, parse_published_keys, verify_event
from gatewayd.client.verify import verify_response as _verify_response
from gatewayd.client.wire import DEFAULT_MAX_MESSAGE_BYTES, RpcTransport, make_transport
from gatewayd.deferreds import settle
from gatewayd.request_body import request_body
from gatewayd.rpc.codes import Code

EXECUTE_COMMAND_PATH = "/gateway.v1.Gateway/ExecuteCommand"
SUBSCRIBE_EVENTS_PATH = "/gateway.v1.Gateway/SubscribeEvents"
SEND_EMAIL_CODE_PATH = "/api/v1/public/auth/send-email-code"
CONFIRM_EMAIL_CODE_PATH = "/api/v1/public/auth/confirm-email-code"
GATEWAY_KEYS_PATH = "/api/v1/public/gateway-keys"
_JSON_HEADERS = Headers({b"Content-Type": [b"application/json"]})


Payload = Mapping[str, Any] | list[Any] | bytes | None
"""A command or event payload: a JSON value, raw bytes, or None for none."""


def encode_payload(payload: Payload) -> bytes:
    """``payload`` as sent: bytes as they are, a JSON value compactly encoded, None as empty."""
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class DeviceSession:
    """A device session from confirm-email-code."""

    device_session_id: str
    user_id: str


class GatewayClient:
    """A client of one gateway over one RPC protocol (``"grpc"``, ``"grpc-web"`` or ``"connect"``).

    ``key`` is the device key (generated when not given); ``session`` a
    device session from an earlier ``login``. ``clock`` stamps requests
    (``IReactorTime``; the reactor by default) and ``random_bytes`` makes
    request ids. ``public_url`` is where the public REST surface is served
    (the gateway itself unless told otherwise).

    Promises: every response and event handed out was verified against the
    gateway's published keys (fetched once, refetched once for an unknown
    key_id); anything that fails verification is ``VerificationError``, never
    returned. RPC failures are ``RpcCallError`` with the code and message.
    ``close()`` drops every connection.
    """

    def __init__(
        self,
        base_url: str,
        protocol: str = "connect",
        *,
        key: DeviceKey | None = None,
        session: DeviceSession | None = None,
        reactor: Any = None,
        clock: SecondsClock | None = None,
        random_bytes: RandomBytes = os.urandom,
        public_url: str | None = None,
        timeout_s: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.base_url = base_url.rstrip("/")
        self.public_url = (public_url or base_url).rstrip("/")
        self.protocol = protocol
        self.key = key if key is not None else DeviceKey.generate()
        self.session = session
        self.reactor = reactor
        self.clock: SecondsClock = clock if clock is not None else reactor
        self.random_bytes = random_bytes
        self.timeout_s = timeout_s
        self.transport: RpcTransport = make_transport(
            protocol, reactor, self.base_url, max_message_bytes=max_message_bytes
        )
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(Agent(reactor, pool=self._pool),
                                data_to_body_producer=lambda data: request_body(reactor, data))
        self.keys = KeyCache(self.fetch_gateway_keys)

    # --- public REST ------------------------------------------------------------------------

    def _post_json(self, path: str, body: Mapping[str, Any]) -> Deferred[Any]:
        d = self._http.post(self.public_url + path, data=json.dumps(body).encode(),
                            headers=_JSON_HEADERS, timeout=self.timeout_s)
        return d.addCallback(_json_answer)

    def request_email_code(self, email: str) -> Deferred[str]:
        """Ask for a login code for ``email``; fire with the challenge_id."""
        return self._post_json(SEND_EMAIL_CODE_PATH, {"email": email}).addCallback(
            lambda doc: _field(doc, "challenge_id"))

    def confirm_email_code(self, challenge_id: str, code: str) -> Deferred[DeviceSession]:
        """Confirm the code with this device's public key; the session becomes ``self.session``."""
        body = {"challenge_id": challenge_id, "code": code, "client_public_key": self.key.public_key_b64}

        def created(doc: Any) -> DeviceSession:
            self.session = DeviceSession(_field(doc, "device_session_id"), _field(doc, "user_id"))
            return self.session

        return self._post_json(CONFIRM_EMAIL_CODE_PATH, body).addCallback(created)

    def login(self, email: str, code: str) -> Deferred[DeviceSession]:
        """Both steps at once, for a code known in advance (dev mode's fixed code)."""
        return self.request_email_code(email).addCallback(lambda challenge: self.confirm_email_code(challenge, code))

    def fetch_gateway_keys(self) -> Deferred[Mapping[str, bytes]]:
        """``GET /api/v1/public/gateway-keys`` as ``{key_id: raw public key}`` (uncached)."""
        d = self._http.get(self.public_url + GATEWAY_KEYS_PATH, timeout=self.timeout_s)

        def parse(response: Any) -> Deferred[Mapping[str, bytes]]:
            if response.code != 200:
                return _json_answer(response)
            body: Deferred[bytes] = treq.content(response)
            return body.addCallback(parse_published_keys)

        return d.addCallback(parse)

    # --- RPC --------------------------------------------------------------------------------

    def _session(self) -> DeviceSession:
        if self.session is None:
            raise NotLoggedInError("no device session: log in first")
        return self.session

    def execute(self, message_type: str, payload: Payload = None) -> Deferred[VerifiedResponse]:
        """Execute ``message_type`` with ``payload`` (a JSON value, or raw bytes); fire with the
        verified response, whatever its result_code (``response.ok`` tells ``"ok"`` apart)."""
        try:
            session = self._session()
        except NotLoggedInError:
            return defer.fail()
        request = sign_request(self.key, session.device_session_id, message_type, encode_payload(payload),
                               clock=self.clock, random_bytes=self.random_bytes)
        return self.send(request)

    def send(self, request: ExecuteCommandRequest) -> Deferred[VerifiedResponse]:
        """Send an already built request (tests craft their own) and verify the answer.

        The signature is checked against the session named in ``request``'s envelope.
        """
        d = self.transport.unary(EXECUTE_COMMAND_PATH, request.SerializeToString(), self.timeout_s)
        if self.timeout_s:
            d.addTimeout(self.timeout_s, self.reactor, onTimeoutCancel=_deadline_exceeded)
        return d.addCallback(self._verify, request)

    def _verify(self, raw: bytes, request: ExecuteCommandRequest) -> Deferred[VerifiedResponse]:
        response = ExecuteCommandResponse()
        try:
            response.ParseFromString(raw)
        except Exception:  # protobuf's DecodeError and friends
            raise VerificationError("malformed ExecuteCommandResponse") from None
        envelope = request.envelope
        return self.keys.public_key(response.envelope.key_id).addCallback(
            lambda key: _verify_response(response, envelope.device_session_id, envelope.request_id, key))

    def subscribe(self, on_event: Callable[[VerifiedEvent], None]) -> Deferred[None]:
        """Open SubscribeEvents; call ``on_event`` with each verified event, in order.

        The first event is ``gateway.server_time``. The Deferred fires when the
        server ends the stream with OK, errbacks with ``RpcCallError`` for its
        status (FAILED_PRECONDITION when the session is revoked, UNAVAILABLE at
        shutdown...) or ``VerificationError`` (the stream is then dropped);
        cancelling it ends the subscription.
        """
        try:
            session = self._session()
        except NotLoggedInError:
            return defer.fail()
        request = sign_subscribe(self.key, session.device_session_id, clock=self.clock,
                                 random_bytes=self.random_bytes)
        # Events are verified in order; a key fetch may make one wait, and those behind it wait too.
        queue: Deferred[None] = defer.succeed(None)
        failed: list[Any] = []

        def on_message(raw: bytes) -> None:
            nonlocal queue
            event = GatewayEvent()
            event.ParseFromString(raw)
            queue = queue.addCallback(lambda _: self.keys.public_key(event.key_id)).addCallback(
                lambda key: on_event(verify_event(event, key)))
            queue.addErrback(stop)

        def stop(failure: Any) -> None:
            failed.append(failure)
            if not stream.called:
                stream.cancel()

        def finished(result: Any) -> Any:
            # Events still being verified are delivered before the end is reported.
            return queue.addCallback(lambda _: failed[0] if failed else result)

        stream = self.transport.server_streaming(SUBSCRIBE_EVENTS_PATH, request.SerializeToString(), on_message)
        outer: Deferred[None] = Deferred(lambda _: stream.cancel())
        stream.addBoth(finished).addBoth(lambda r: settle(outer, r if isinstance(r, Failure) else None))
        return outer

    def close(self) -> Deferred[None]:
        """Drop every connection (RPC and REST)."""
        return defer.DeferredList(
            [self.transport.close(), self._pool.closeCachedConnections()], consumeErrors=True
        ).addCallback(lambda _: None)


def _deadline_exceeded(result: Any, timeout: float) -> Any:
    if isinstance(result, Failure) and result.check(defer.CancelledError):
        raise RpcCallError(Code.DEADLINE_EXCEEDED, f"no answer within {timeout:g} s")
    return result


def _field(doc: Any, name: str) -> str:
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise PublicApiError(200, "internal", f"answer without {name}")
    return value


def _json_answer(response: Any) -> Deferred[Any]:
    """The JSON body of a 200 answer; ``PublicApiError`` for an error answer."""

    def parse(body: bytes) -> Any:
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if response.code == 200 and doc is not None:
            return doc
        error = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(error, dict):
            raise PublicApiError(response.code, str(error.get("code", "")), str(error.get("message", "")))
        raise PublicApiError(response.code, "unknown", "answer is not the expected JSON")

    d: Deferred[bytes] = treq.content(response)
    return d.addCallback(parse)
