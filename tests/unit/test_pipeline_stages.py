"""The verification pipeline stage by stage (PROTOCOL.md section 3), with a Clock and in-memory stores.

``Device`` (a minimal request signer) and ``Rig`` are reused by the other pipeline tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from google.rpc.error_details_pb2 import RetryInfo
from nacl.signing import SigningKey
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    ExecuteCommandResponse,
    RequestEnvelope,
    SubscribeEventsRequest,
)
from gatewayd.backend.rest import BackendAnswer, BackendUnavailable, Session
from gatewayd.backend.sessions import SessionCache
from gatewayd.config import Budget, LimitsConfig, Route
from gatewayd.pipeline.pipeline import Pipeline, VerifiedCaller
from gatewayd.pipeline.signer import ResponseSigner
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.signing import EMPTY_SHA256, GatewayKey, request_signing_input_of, sha256
from gatewayd.stores.base import RateDecision, Stores, StoreUnavailable
from gatewayd.stores.memory import MemoryRateLimiter, MemoryReplayStore, MemoryStores

START = 1_764_230_000.0
START_MS = int(START * 1000)
WINDOW_S = 300.0
ROUTES = {
    "user.profile.get": Route("GET", "profile"),
    "user.notes.create": Route("POST", "notes"),
}
GENEROUS = LimitsConfig(
    ip=Budget(1000.0, 1000), session=Budget(1000.0, 1000), user=Budget(1000.0, 1000),
    message_type=Budget(1000.0, 1000),
)


class Device:
    """A device with an Ed25519 key and a session: signs requests as a client would."""

    def __init__(self, clock: Any, device_session_id: str = "ds_1", user_id: str = "usr_1", seed: int = 1):
        self.clock = clock
        self.key = SigningKey(bytes([seed]) * 32)
        self.session = Session(device_session_id, user_id, bytes(self.key.verify_key), "active")
        self._counter = 0

    def next_request_id(self) -> str:
        self._counter += 1
        return f"req-{self._counter}"

    def envelope(
        self, message_type: str, payload: bytes, *, request_id: str | None = None,
        timestamp_ms: int | None = None, protocol_version: int = 1, payload_hash: bytes | None = None,
        device_session_id: str | None = None,
    ) -> RequestEnvelope:
        return RequestEnvelope(
            protocol_version=protocol_version,
            device_session_id=device_session_id or self.session.device_session_id,
            request_id=self.next_request_id() if request_id is None else request_id,
            timestamp_ms=int(self.clock.seconds() * 1000) if timestamp_ms is None else timestamp_ms,
            message_type=message_type,
            payload_hash=sha256(payload) if payload_hash is None else payload_hash,
        )

    def sign(self, env: RequestEnvelope) -> bytes:
        return self.key.sign(request_signing_input_of(env)).signature

    def command(self, message_type: str = "user.notes.create", payload: bytes = b'{"text":"hi"}',
                **fields: Any) -> ExecuteCommandRequest:
        env = self.envelope(message_type, payload, **fields)
        return ExecuteCommandRequest(envelope=env, payload_bytes=payload, signature=self.sign(env))

    def subscribe(self, message_type: str = "gateway.subscribe", **fields: Any) -> SubscribeEventsRequest:
        env = self.envelope(message_type, b"", **fields)
        return SubscribeEventsRequest(envelope=env, signature=self.sign(env))


class FakeBackend:
    """Records route calls; answers with ``answer`` (a BackendAnswer, an exception, or a Deferred)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Route, bytes, str, str, str]] = []
        self.answer: Any = BackendAnswer(200, b'{"ok":true}')

    def call_route(self, route: Route, payload: bytes, user_id: str, device_session_id: str,
                   request_id: str, call: Any = None) -> Deferred[BackendAnswer]:
        self.calls.append((route, payload, user_id, device_session_id, request_id))
        if isinstance(self.answer, Deferred):
            return self.answer
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)


class SpyReplay:
    """A real memory replay store that records reservations and can be made to fail."""

    def __init__(self, clock: Clock) -> None:
        self.inner = MemoryReplayStore(clock)
        self.reserved: list[tuple[str, float]] = []
        self.down = False

    def reserve(self, key: str, ttl_s: float) -> Deferred[bool]:
        self.reserved.append((key, ttl_s))
        if self.down:
            return fail(StoreUnavailable("down"))
        return self.inner.reserve(key, ttl_s)


class SpyRate:
    def __init__(self, clock: Clock) -> None:
        self.inner = MemoryRateLimiter(clock)
        self.keys: list[str] = []
        self.down = False

    def consume(self, key: str, budget: Budget, cost: int = 1) -> Any:
        self.keys.append(key)
        if self.down:
            return fail(StoreUnavailable("down"))
        return self.inner.consume(key, budget, cost)


class Rig:
    """A Pipeline on a Clock, with a session table, spy stores and a fake backend."""

    def __init__(self, limits: LimitsConfig = GENEROUS, routes: Mapping[str, Route] = ROUTES,
                 observe: bool = False, rate: Any = None, memory_stores: bool = False) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.device = Device(self.clock)
        self.sessions: dict[str, Session] = {self.device.session.device_session_id: self.device.session}
        self.lookups: list[str] = []
        self.session_error: Exception | None = None
        self.cache = SessionCache(self._lookup, self.clock, ttl_s=5.0, max_entries=100)
        self.replay = SpyReplay(self.clock)
        self.rate = SpyRate(self.clock) if rate is None else rate
        self.backend = FakeBackend()
        self.key = GatewayKey.generate()
        self.stages_seen: list[tuple[str, str]] = []
        self.pipeline = Pipeline(
            clock=self.clock,
            sessions=self.cache,
            # memory_stores: the real MemoryStores, whose answers the replay stage takes without a Deferred.
            stores=(MemoryStores(self.replay.inner, self.rate.inner) if memory_stores
                    else Stores(self.replay, self.rate)),  # type: ignore[arg-type]
            backend=self.backend,
            routes=routes,
            signer=ResponseSigner(self.key, self.clock),
            freshness_window_s=WINDOW_S,
            limits=limits,
            on_stage=self._observe if observe else None,
            timer=self.clock.seconds,
        )
        self.stage_seconds: dict[str, float] = {}

    def _observe(self, name: str, seconds: float, outcome: str) -> None:
        assert seconds >= 0
        self.stages_seen.append((name, outcome))
        self.stage_seconds[name] = seconds

    def _lookup(self, device_session_id: str, call: Any = None) -> Deferred[Session | None]:
        self.lookups.append(device_session_id)
        if self.session_error is not None:
            return fail(self.session_error)
        return succeed(self.sessions.get(device_session_id))

    def call(self, peer: str = "203.0.113.7") -> Call:
        return Call("/gateway.v1.Gateway/ExecuteCommand", "grpc", {}, peer)

    def execute(self, request: ExecuteCommandRequest, peer: str = "203.0.113.7") -> ExecuteCommandResponse:
        return result_of(self.pipeline.execute_command(self.call(peer), request))

    def reject(self, request: ExecuteCommandRequest, peer: str = "203.0.113.7") -> RpcError:
        return error_of(self.pipeline.execute_command(self.call(peer), request))


def result_of(d: Deferred[Any]) -> Any:
    """The result of an already fired Deferred (everything here is synchronous on a Clock)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def has_fired(d: Deferred[Any]) -> bool:
    """Whether ``d`` has its result yet (a Deferred waiting on another one is ``called`` already)."""
    seen: list[bool] = []

    def note(result: Any) -> Any:
        seen.append(True)
        return result

    d.addBoth(note)
    return bool(seen)


def error_of(d: Deferred[Any]) -> RpcError:
    with pytest.raises(RpcError) as info:
        result_of(d)
    return info.value


@pytest.fixture
def rig() -> Rig:
    return Rig()


# --- the happy path --------------------------------------------------------------------


def test_valid_command_is_routed_and_answered(rig: Rig) -> None:
    request = rig.device.command(request_id="r-1")
    response = rig.execute(request)
    assert response.envelope.result_code == "ok"
    assert response.envelope.request_id == "r-1"
    assert rig.backend.calls == [(ROUTES["user.notes.create"], b'{"text":"hi"}', "usr_1", "ds_1", "r-1")]
    assert rig.replay.reserved == [("replay:ds_1:r-1", 2 * WINDOW_S)]
    assert rig.rate.keys == ["ip:203.0.113.7", "session:ds_1", "user:usr_1", "type:usr_1:user.notes.create"]


def test_stage_list_follows_the_protocol_order(rig: Rig) -> None:
    names = [s.name for s in rig.pipeline.stages]
    assert names == [
        "envelope", "session", "payload_hash", "signature", "freshness", "replay", "rate_limit", "route",
    ]
    assert [s.name for s in rig.pipeline.subscription_stages] == names[:-1]


def test_observer_sees_each_stage_and_the_deciding_outcome() -> None:
    rig = Rig(observe=True)
    rig.execute(rig.device.command())
    assert [o for _, o in rig.stages_seen] == ["ok"] * 8
    rig.stages_seen.clear()
    request = rig.device.command()
    request.signature = bytes(64)
    rig.reject(request)
    assert rig.stages_seen == [
        ("envelope", "ok"), ("session", "ok"), ("payload_hash", "ok"), ("signature", "unauthenticated"),
    ]


def test_stages_waited_on_are_observed_when_they_decide_and_the_run_resumes() -> None:
    rig = Rig(observe=True)
    session: Deferred[Session | None] = Deferred()
    rig.pipeline.stages[1]._sessions = SimpleNamespace(get=lambda *_: session)  # type: ignore[attr-defined]
    rig.backend.answer = Deferred()
    d = rig.pipeline.execute_command(rig.call(), rig.device.command())
    assert rig.stages_seen == [("envelope", "ok")] and not has_fired(d)
    rig.clock.advance(0.25)
    session.callback(rig.device.session)  # the run resumes: stages 3-7 at once, then waits on the backend
    assert rig.stages_seen[1] == ("session", "ok") and rig.stage_seconds["session"] == 0.25
    assert [name for name, _ in rig.stages_seen] == [s.name for s in rig.pipeline.stages[:-1]]
    rig.clock.advance(1.5)
    rig.backend.answer.callback(BackendAnswer(200, b"{}"))
    assert rig.stages_seen[-1] == ("route", "ok") and rig.stage_seconds["route"] == 1.5
    assert result_of(d).envelope.result_code == "ok"


def test_cancelling_while_a_stage_waits_cancels_that_stage_and_runs_nothing_after() -> None:
    slow = SlowRate()
    rig = Rig(observe=True, rate=slow)
    d = rig.pipeline.execute_command(rig.call(), rig.device.command())
    assert len(slow.pending) == 4
    d.cancel()
    assert rig.stages_seen[-1] == ("replay", "error")  # replay and budgets: one admission
    with pytest.raises(CancelledError):
        result_of(d)
    seen = list(rig.stages_seen)
    slow.answer_all()  # answers arriving after the cancellation change nothing
    assert rig.stages_seen == seen and rig.backend.calls == []


def test_cancelling_while_a_later_stage_waits_cancels_that_one() -> None:
    rig = Rig(observe=True)
    session: Deferred[Session | None] = Deferred()
    rig.pipeline.stages[1]._sessions = SimpleNamespace(get=lambda *_: session)  # type: ignore[attr-defined]
    cancelled: list[bool] = []
    rig.backend.answer = Deferred(lambda d: cancelled.append(True))
    d = rig.pipeline.execute_command(rig.call(), rig.device.command())
    session.callback(rig.device.session)  # first wait over; now waiting on the backend
    assert rig.backend.calls and not has_fired(d)
    d.cancel()
    assert cancelled == [True] and rig.stages_seen[-1] == ("route", "error")
    with pytest.raises(CancelledError):
        result_of(d)


def test_a_stage_failing_later_with_an_unexpected_error_is_the_calls_failure() -> None:
    rig = Rig(observe=True)
    rig.backend.answer = Deferred()
    d = rig.pipeline.execute_command(rig.call(), rig.device.command())
    rig.backend.answer.errback(ZeroDivisionError("bug"))
    assert rig.stages_seen[-1] == ("route", "error")
    with pytest.raises(ZeroDivisionError):
        result_of(d)


# --- stage 1: envelope -------------------------------------------------------------------


def test_missing_envelope_is_invalid_argument(rig: Rig) -> None:
    error = rig.reject(ExecuteCommandRequest(payload_bytes=b"", signature=bytes(64)))
    assert error.code == Code.INVALID_ARGUMENT
    assert rig.lookups == []


@pytest.mark.parametrize("version", [0, 2, 99])
def test_protocol_version_is_checked_before_every_other_field(rig: Rig, version: int) -> None:
    # Everything else is malformed too: the version still decides.
    request = ExecuteCommandRequest(
        envelope=RequestEnvelope(protocol_version=version, device_session_id="bad id", request_id=""),
        signature=b"short",
    )
    error = rig.reject(request)
    assert error.code == Code.FAILED_PRECONDITION
    assert rig.lookups == []


def _malformed(field: str, value: Any) -> ExecuteCommandRequest:
    device = Device(Clock())
    request = device.command(request_id="ok-id", timestamp_ms=START_MS)
    if field == "signature":
        request.signature = value
    else:
        setattr(request.envelope, field, value)
    return request


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_session_id", ""),
        ("device_session_id", "a" * 129),
        ("device_session_id", "has space"),
        ("device_session_id", "ds/1"),
        ("device_session_id", "dé"),
        ("request_id", ""),
        ("request_id", "r" * 129),
        ("request_id", "r\n1"),
        ("timestamp_ms", 0),
        ("timestamp_ms", -5),
        ("message_type", ""),
        ("message_type", "x" * 129),
        ("message_type", "user notes"),
        ("payload_hash", b""),
        ("payload_hash", bytes(31)),
        ("payload_hash", bytes(33)),
        ("signature", b""),
        ("signature", bytes(63)),
        ("signature", bytes(65)),
    ],
)
def test_malformed_fields_are_invalid_argument(rig: Rig, field: str, value: Any) -> None:
    error = rig.reject(_malformed(field, value))
    assert error.code == Code.INVALID_ARGUMENT
    assert rig.lookups == [], "a malformed request must not cost a session lookup"
    assert rig.backend.calls == []


def test_identifiers_of_128_allowed_characters_pass(rig: Rig) -> None:
    long_id = ("Az09._:-" * 16)[:128]
    device = Device(rig.clock, device_session_id=long_id)
    rig.sessions[long_id] = device.session
    response = rig.pipeline.execute_command(rig.call(), device.command(request_id=long_id))
    assert result_of(response).envelope.request_id == long_id


# --- stage 2: session ----------------------------------------------------------------------


def test_unknown_session_is_unauthenticated(rig: Rig) -> None:
    stranger = Device(rig.clock, device_session_id="ds_unknown", seed=2)
    error = rig.reject(stranger.command())
    assert error.code == Code.UNAUTHENTICATED
    assert rig.replay.reserved == [] and rig.backend.calls == []


def test_revoked_session_is_unauthenticated(rig: Rig) -> None:
    s = rig.device.session
    revoked = Session(s.device_session_id, s.user_id, s.client_public_key, "revoked")
    rig.sessions[s.device_session_id] = revoked
    error = rig.reject(rig.device.command())
    assert error.code == Code.UNAUTHENTICATED
    assert rig.backend.calls == []


def test_session_backend_down_is_unavailable(rig: Rig) -> None:
    rig.session_error = BackendUnavailable("refused")
    error = rig.reject(rig.device.command())
    assert error.code == Code.UNAVAILABLE
    assert "refused" not in error.message
    assert rig.replay.reserved == [] and rig.backend.calls == []


# --- stage 3: payload hash ---------------------------------------------------------------------


def test_payload_not_matching_its_hash_is_invalid_argument(rig: Rig) -> None:
    request = rig.device.command(payload=b'{"text":"hi"}')
    request.payload_bytes = b'{"text":"HI"}'  # signature still valid over the envelope
    error = rig.reject(request)
    assert error.code == Code.INVALID_ARGUMENT
    assert rig.replay.reserved == [] and rig.backend.calls == []


def test_empty_payload_hashes_to_sha256_of_nothing(rig: Rig) -> None:
    request = rig.device.command("user.profile.get", b"")
    assert request.envelope.payload_hash == EMPTY_SHA256
    assert rig.execute(request).envelope.result_code == "ok"
    assert rig.backend.calls[0][1] == b""


# --- stage 4: signature ------------------------------------------------------------------------


def test_signature_by_another_key_is_unauthenticated(rig: Rig) -> None:
    impostor = Device(rig.clock, seed=9)  # same session id, different key
    error = rig.reject(impostor.command())
    assert error.code == Code.UNAUTHENTICATED
    assert rig.replay.reserved == [] and rig.backend.calls == []


def test_signature_over_other_fields_is_unauthenticated(rig: Rig) -> None:
    request = rig.device.command(request_id="r-1")
    request.envelope.request_id = "r-2"  # the signature covered r-1
    assert rig.reject(request).code == Code.UNAUTHENTICATED


# --- stage 5: freshness, then replay ---------------------------------------------------------------


@pytest.mark.parametrize("offset_ms", [-300_001, 300_001, -10**9])
def test_stale_or_future_request_is_failed_precondition_with_gateway_time(rig: Rig, offset_ms: int) -> None:
    error = rig.reject(rig.device.command(timestamp_ms=START_MS + offset_ms))
    assert error.code == Code.FAILED_PRECONDITION
    assert error.message == f"stale request; gateway time {START_MS}"
    assert rig.replay.reserved == [], "a stale request must reserve nothing"
    assert rig.backend.calls == []


@pytest.mark.parametrize("offset_ms", [-300_000, 300_000, 0])
def test_request_at_the_window_edge_is_fresh(rig: Rig, offset_ms: int) -> None:
    assert rig.execute(rig.device.command(timestamp_ms=START_MS + offset_ms)).envelope.result_code == "ok"


def test_replayed_request_is_already_exists(rig: Rig) -> None:
    request = rig.device.command()
    rig.execute(request)
    error = rig.reject(request)
    assert error.code == Code.ALREADY_EXISTS
    assert len(rig.backend.calls) == 1


def test_replay_is_refused_for_as_long_as_the_request_is_fresh(rig: Rig) -> None:
    # Timestamped at the future edge, it stays fresh for 2 x window after first use.
    request = rig.device.command(timestamp_ms=START_MS + 300_000)
    rig.execute(request)
    rig.clock.advance(2 * WINDOW_S - 0.001)
    assert rig.reject(request).code == Code.ALREADY_EXISTS
    rig.clock.advance(0.002)
    assert rig.reject(request).code == Code.FAILED_PRECONDITION  # stale now; no longer a replay question


def test_replay_store_down_fails_closed(rig: Rig) -> None:
    rig.replay.down = True
    error = rig.reject(rig.device.command())
    assert error.code == Code.UNAVAILABLE
    assert rig.rate.keys == [] and rig.backend.calls == []


# --- stage 6: rate limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["ip", "session", "user", "message_type"])
def test_each_spent_budget_is_resource_exhausted_with_retry_after(budget: str) -> None:
    limits = GENEROUS.__class__(**{**GENEROUS.__dict__, budget: Budget(rate=0.25, burst=2)})
    rig = Rig(limits=limits)
    rig.execute(rig.device.command())
    rig.execute(rig.device.command())
    error = rig.reject(rig.device.command())
    assert error.code == Code.RESOURCE_EXHAUSTED
    assert error.metadata == {"retry-after": "4"}  # one unit at 0.25/s, rounded up
    assert len(rig.backend.calls) == 2
    rig.clock.advance(4.0)
    assert rig.execute(rig.device.command()).envelope.result_code == "ok"


def test_retry_after_is_rounded_up_to_whole_seconds() -> None:
    limits = GENEROUS.__class__(**{**GENEROUS.__dict__, "session": Budget(rate=3.0, burst=1)})
    rig = Rig(limits=limits)
    rig.execute(rig.device.command())
    assert rig.reject(rig.device.command()).metadata == {"retry-after": "1"}


def test_spent_budget_carries_retry_info_to_the_millisecond() -> None:
    limits = GENEROUS.__class__(**{**GENEROUS.__dict__, "session": Budget(rate=3.0, burst=1)})
    rig = Rig(limits=limits)
    rig.execute(rig.device.command())
    [detail] = rig.reject(rig.device.command()).details
    assert isinstance(detail, RetryInfo)
    assert detail.retry_delay.ToMilliseconds() == 334  # 1/3 s, rounded up: never sooner than allowed


def test_ip_budget_ignores_the_source_port() -> None:
    limits = GENEROUS.__class__(**{**GENEROUS.__dict__, "ip": Budget(rate=0.1, burst=1)})
    rig = Rig(limits=limits)
    rig.execute(rig.device.command(), peer="198.51.100.1:40000")
    assert rig.reject(rig.device.command(), peer="198.51.100.1:40001").code == Code.RESOURCE_EXHAUSTED
    assert rig.execute(rig.device.command(), peer="[2001:db8::1]:443").envelope.result_code == "ok"
    assert rig.rate.keys[-4] == "ip:2001:db8::/64"


def test_ip_budget_is_per_ipv6_64_and_an_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    """docs/protocol.md: the IP budget is per /64 for IPv6; a dual-stack socket's view of an
    IPv4 client (``::ffff:a.b.c.d``) spends that IPv4 address's budget."""
    limits = GENEROUS.__class__(**{**GENEROUS.__dict__, "ip": Budget(rate=0.1, burst=1)})
    rig = Rig(limits=limits)
    assert rig.execute(rig.device.command(), peer="2001:db8:1:2::1").envelope.result_code == "ok"
    # Another address of the same /64 (bare, or bracketed with a port): the same budget, spent.
    assert rig.reject(rig.device.command(), peer="2001:db8:1:2:ffff:ffff:ffff:fffe").code == Code.RESOURCE_EXHAUSTED
    assert rig.reject(rig.device.command(), peer="[2001:db8:1:2::99]:443").code == Code.RESOURCE_EXHAUSTED
    # The neighbouring /64 is another client.
    assert rig.execute(rig.device.command(), peer="2001:db8:1:3::1").envelope.result_code == "ok"
    assert rig.rate.keys[-4] == "ip:2001:db8:1:3::/64"
    assert rig.execute(rig.device.command(), peer="198.51.100.7").envelope.result_code == "ok"
    assert rig.reject(rig.device.command(), peer="::ffff:198.51.100.7").code == Code.RESOURCE_EXHAUSTED
    assert rig.rate.keys[-4] == "ip:198.51.100.7"


def test_unrouted_message_types_share_one_budget(rig: Rig) -> None:
    for name in ("x.a", "x.b"):
        assert rig.reject(rig.device.command(name)).code == Code.UNIMPLEMENTED
    type_keys = [k for k in rig.rate.keys if k.startswith("type:")]
    assert type_keys == ["type:usr_1:~unrouted", "type:usr_1:~unrouted"]


def test_rate_store_down_fails_closed(rig: Rig) -> None:
    rig.rate.down = True
    error = rig.reject(rig.device.command())
    assert error.code == Code.UNAVAILABLE
    assert rig.backend.calls == []


# --- stage 7: routing ------------------------------------------------------------------------------


def test_message_type_without_route_is_unimplemented(rig: Rig) -> None:
    error = rig.reject(rig.device.command("user.unknown.thing"))
    assert error.code == Code.UNIMPLEMENTED
    assert rig.backend.calls == []


def test_backend_unreachable_is_unavailable(rig: Rig) -> None:
    rig.backend.answer = BackendUnavailable("connection refused at 10.0.0.5")
    error = rig.reject(rig.device.command())
    assert error.code == Code.UNAVAILABLE
    assert "10.0.0.5" not in error.message


def test_cancelling_the_call_cancels_the_backend_request(rig: Rig) -> None:
    cancelled: list[bool] = []
    rig.backend.answer = Deferred(lambda d: cancelled.append(True))
    d = rig.pipeline.execute_command(rig.call(), rig.device.command())
    assert not has_fired(d)
    d.cancel()
    assert cancelled == [True]
    d.addErrback(lambda f: None)


# --- SubscribeEvents: stages 1-6 -------------------------------------------------------------------


def test_subscription_is_verified_without_routing(rig: Rig) -> None:
    caller = result_of(rig.pipeline.verify_subscription(rig.call(), rig.device.subscribe(request_id="s-1")))
    assert isinstance(caller, VerifiedCaller)
    assert (caller.device_session_id, caller.user_id, caller.request_id) == ("ds_1", "usr_1", "s-1")
    assert rig.backend.calls == []
    assert rig.replay.reserved == [("replay:ds_1:s-1", 2 * WINDOW_S)]
    assert rig.rate.keys[-1] == "type:usr_1:gateway.subscribe"


def test_subscription_needs_the_subscribe_message_type(rig: Rig) -> None:
    d = rig.pipeline.verify_subscription(rig.call(), rig.device.subscribe("user.notes.list"))
    assert error_of(d).code == Code.INVALID_ARGUMENT


def test_subscription_payload_hash_must_be_of_the_empty_payload(rig: Rig) -> None:
    d = rig.pipeline.verify_subscription(rig.call(), rig.device.subscribe(payload_hash=sha256(b"{}")))
    assert error_of(d).code == Code.INVALID_ARGUMENT


def test_subscription_replay_is_already_exists(rig: Rig) -> None:
    request = rig.device.subscribe()
    result_of(rig.pipeline.verify_subscription(rig.call(), request))
    assert error_of(rig.pipeline.verify_subscription(rig.call(), request)).code == Code.ALREADY_EXISTS


class SlowRate:
    """A rate limiter answering later, as Redis does; ``deny`` names keys to deny, ``fail`` to fail."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred[Any]]] = []
        self.deny: set[str] = set()
        self.fail: Exception | None = None

    def consume(self, key: str, budget: Budget, cost: int = 1) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((key, d))
        return d

    def answer_all(self) -> None:
        for key, d in self.pending:
            if self.fail is not None and key.startswith("user:"):
                d.errback(self.fail)
            else:
                d.callback(RateDecision(key not in self.deny, 2.5 if key in self.deny else 0.0))
        self.pending.clear()


@pytest.mark.parametrize(
    ("deny", "fail", "expected"),
    [
        (set(), None, None),
        ({"session:ds_1"}, None, Code.RESOURCE_EXHAUSTED),
        (set(), StoreUnavailable("timeout"), Code.UNAVAILABLE),
        ({"session:ds_1"}, StoreUnavailable("timeout"), Code.UNAVAILABLE),
    ],
)
def test_rate_limits_answered_later(deny: set[str], fail: Exception | None, expected: Code | None) -> None:
    slow = SlowRate()
    slow.deny, slow.fail = deny, fail
    rig = Rig(rate=slow)
    d = rig.pipeline.execute_command(rig.call(), rig.device.command())
    assert not has_fired(d) and len(slow.pending) == 4 and rig.backend.calls == []
    slow.answer_all()
    if expected is None:
        assert result_of(d).envelope.result_code == "ok"
    else:
        error = error_of(d)
        assert error.code == expected
        if expected == Code.RESOURCE_EXHAUSTED:
            assert error.metadata == {"retry-after": "3"}
        assert rig.backend.calls == []


def test_the_envelope_the_stages_read_is_every_field_of_the_request_envelope_read_once() -> None:
    from gatewayd.pipeline.context import Envelope

    device = Device(Clock())
    request = device.command(request_id="r-é", timestamp_ms=START_MS)
    names = {field.name for field in RequestEnvelope.DESCRIPTOR.fields}
    assert set(Envelope.__slots__) == names  # a field added to the proto must be added here too
    snapshot = Envelope(request.envelope)
    assert {name: getattr(snapshot, name) for name in names} == {
        name: getattr(request.envelope, name) for name in names
    }
