"""SessionCache: TTLs, single flight, caller cancellation, invalidation (also during a lookup), bounds."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from gatewayd.backend.rest import BackendUnavailable, Session
from gatewayd.backend.sessions import SessionCache


def session(sid: str = "ds_1", user: str = "usr_1", status: str = "active") -> Session:
    return Session(sid, user, bytes(32), status)


class Backend:
    """Lookups stay pending until the test answers them."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Deferred[Session | None]]] = {}
        self.lookups: list[str] = []
        self.cancelled: list[str] = []

    def lookup(self, sid: str) -> Deferred[Session | None]:
        self.lookups.append(sid)
        d: Deferred[Session | None] = Deferred(lambda _: self.cancelled.append(sid))
        self.pending.setdefault(sid, []).append(d)
        return d

    def answer(self, sid: str, value: Any) -> None:
        d = self.pending[sid].pop(0)
        if isinstance(value, Exception):
            d.errback(value)
        else:
            d.callback(value)


def fired(d: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1000)
    return c


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def cache(backend: Backend, clock: Clock) -> SessionCache:
    return SessionCache(backend.lookup, clock, ttl_s=5.0, max_entries=100)


def test_hit_within_ttl_and_lookup_after(cache: SessionCache, backend: Backend, clock: Clock) -> None:
    first = fired(cache.get("ds_1"))
    backend.answer("ds_1", session())
    assert first == [session()]
    clock.advance(4.9)
    assert fired(cache.get("ds_1")) == [session()]
    assert backend.lookups == ["ds_1"]
    clock.advance(0.2)
    late = fired(cache.get("ds_1"))
    assert late == [] and backend.lookups == ["ds_1", "ds_1"]


def test_negative_answers_are_cached_for_one_second_only(
    cache: SessionCache, backend: Backend, clock: Clock
) -> None:
    out = fired(cache.get("ds_x"))
    backend.answer("ds_x", None)
    assert out == [None]
    clock.advance(0.9)
    assert fired(cache.get("ds_x")) == [None]
    assert backend.lookups == ["ds_x"]
    clock.advance(0.2)
    cache.get("ds_x")
    assert backend.lookups == ["ds_x", "ds_x"]


def test_revoked_sessions_are_cached_as_answers(cache: SessionCache, backend: Backend) -> None:
    cache.get("ds_1")
    backend.answer("ds_1", session(status="revoked"))
    assert fired(cache.get("ds_1"))[0].status == "revoked"
    assert backend.lookups == ["ds_1"]


def test_concurrent_callers_share_one_lookup(cache: SessionCache, backend: Backend) -> None:
    a, b, c = fired(cache.get("ds_1")), fired(cache.get("ds_1")), fired(cache.get("ds_2"))
    assert backend.lookups == ["ds_1", "ds_2"]
    backend.answer("ds_1", session())
    assert a == b == [session()] and c == []


def test_a_cancelling_caller_does_not_cancel_the_shared_lookup(cache: SessionCache, backend: Backend) -> None:
    first = cache.get("ds_1")
    first_out = fired(first)
    second = fired(cache.get("ds_1"))
    first.cancel()
    assert first_out[0].check(CancelledError)
    assert backend.cancelled == []
    backend.answer("ds_1", session())
    assert second == [session()]
    assert fired(cache.get("ds_1")) == [session()]  # and it was cached
    assert backend.lookups == ["ds_1"]


def test_all_callers_gone_still_caches_the_answer(cache: SessionCache, backend: Backend) -> None:
    only = cache.get("ds_1")
    only.addErrback(lambda f: None)
    only.cancel()
    backend.answer("ds_1", session())
    assert fired(cache.get("ds_1")) == [session()]
    assert backend.lookups == ["ds_1"] and backend.cancelled == []


def test_failures_reach_every_waiter_and_are_not_cached(cache: SessionCache, backend: Backend) -> None:
    a, b = fired(cache.get("ds_1")), fired(cache.get("ds_1"))
    backend.answer("ds_1", BackendUnavailable("down"))
    assert a[0].check(BackendUnavailable) and b[0].check(BackendUnavailable)
    cache.get("ds_1")
    assert backend.lookups == ["ds_1", "ds_1"]


def test_invalidate_drops_the_entry(cache: SessionCache, backend: Backend) -> None:
    cache.get("ds_1")
    backend.answer("ds_1", session())
    cache.invalidate("ds_1")
    assert fired(cache.get("ds_1")) == []
    assert backend.lookups == ["ds_1", "ds_1"]


def test_invalidation_during_a_lookup_keeps_its_answer_out_of_the_cache(
    cache: SessionCache, backend: Backend
) -> None:
    before = fired(cache.get("ds_1"))
    cache.invalidate("ds_1")
    after = fired(cache.get("ds_1"))  # must not join the stale lookup
    assert backend.lookups == ["ds_1", "ds_1"]
    backend.answer("ds_1", session())  # the stale answer: delivered, not cached
    assert before == [session()] and after == []
    backend.answer("ds_1", session(status="revoked"))
    assert after[0].status == "revoked"
    assert fired(cache.get("ds_1"))[0].status == "revoked"
    assert len(backend.lookups) == 2


def test_a_stale_answer_arriving_last_does_not_overwrite_the_fresh_one(
    cache: SessionCache, backend: Backend, clock: Clock
) -> None:
    # The lookup in flight at the invalidation answers after the one started behind it.
    stale = fired(cache.get("ds_1"))
    cache.invalidate("ds_1")
    fresh = fired(cache.get("ds_1"))
    fresh_lookup = backend.pending["ds_1"].pop(1)
    fresh_lookup.callback(session(status="revoked"))
    backend.answer("ds_1", session())  # the stale "active", last
    assert fresh[0].status == "revoked" and stale[0].status == "active"
    for _ in range(3):
        clock.advance(1.0)
        assert fired(cache.get("ds_1"))[0].status == "revoked"
    assert len(backend.lookups) == 2


def test_invalidate_user_drops_only_that_users_sessions(cache: SessionCache, backend: Backend) -> None:
    for sid, user in (("ds_1", "usr_1"), ("ds_2", "usr_1"), ("ds_3", "usr_2")):
        cache.get(sid)
        backend.answer(sid, session(sid, user))
    cache.invalidate_user("usr_1")
    assert fired(cache.get("ds_3")) == [session("ds_3", "usr_2")]
    cache.get("ds_1")
    cache.get("ds_2")
    assert backend.lookups == ["ds_1", "ds_2", "ds_3", "ds_1", "ds_2"]


def test_invalidate_user_during_a_lookup_keeps_its_answer_out_of_the_cache(
    cache: SessionCache, backend: Backend
) -> None:
    waiting = fired(cache.get("ds_1"))
    cache.invalidate_user("usr_1")
    backend.answer("ds_1", session())
    assert waiting == [session()]
    cache.get("ds_1")
    assert backend.lookups == ["ds_1", "ds_1"]


def test_size_is_bounded_oldest_first(backend: Backend, clock: Clock) -> None:
    cache = SessionCache(backend.lookup, clock, ttl_s=5.0, max_entries=2)
    for sid in ("ds_1", "ds_2", "ds_3"):
        cache.get(sid)
        backend.answer(sid, session(sid))
    assert len(cache) == 2
    assert fired(cache.get("ds_3")) == [session("ds_3")]
    assert fired(cache.get("ds_1")) == []  # evicted: looked up again
    assert backend.lookups == ["ds_1", "ds_2", "ds_3", "ds_1"]
    cache.invalidate_user("usr_1")  # the user index stayed consistent through eviction
    assert len(cache) == 0


def test_synchronous_lookups_work(clock: Clock) -> None:
    calls: list[str] = []

    def lookup(sid: str) -> Deferred[Session | None]:
        calls.append(sid)
        return succeed(session(sid))

    cache = SessionCache(lookup, clock, ttl_s=5.0, max_entries=10)
    assert fired(cache.get("ds_1")) == [session()]
    assert fired(cache.get("ds_1")) == [session()]
    assert calls == ["ds_1"]


def test_zero_ttl_caches_nothing(backend: Backend, clock: Clock) -> None:
    cache = SessionCache(backend.lookup, clock, ttl_s=0.0, max_entries=10)
    cache.get("ds_1")
    backend.answer("ds_1", session())
    cache.get("ds_1")
    assert backend.lookups == ["ds_1", "ds_1"] and len(cache) == 0


@pytest.mark.parametrize("answer", [session(), session(status="revoked"), None])
def test_fresh_entry_is_what_get_answers_at_once_and_nothing_once_expired(
    cache: SessionCache, backend: Backend, clock: Clock, answer: Session | None
) -> None:
    assert cache.fresh_entry("ds_1") is None  # nothing cached: get() would look it up
    fired(cache.get("ds_1"))
    backend.answer("ds_1", answer)
    entry = cache.fresh_entry("ds_1")
    assert entry is not None and entry[1] is answer and fired(cache.get("ds_1")) == [answer]
    clock.advance(entry[0] - clock.seconds())  # the TTL is up: get() would look it up again
    assert cache.fresh_entry("ds_1") is None
    assert len(backend.lookups) == 1


def test_the_session_stage_answers_a_fresh_entry_without_a_lookup_and_asks_get_otherwise(
    cache: SessionCache, backend: Backend, clock: Clock
) -> None:
    from gatewayd.pipeline.context import RequestContext
    from gatewayd.pipeline.session import SessionStage
    from gatewayd.rpc.errors import RpcError

    class Env:
        device_session_id = "ds_1"

    def ctx() -> RequestContext:
        return RequestContext(None, Env(), b"", b"")  # type: ignore[arg-type]

    stage = SessionStage(cache)
    first = ctx()
    waiting = stage.check(first)  # not cached: get() and its lookup
    assert waiting is not None and backend.lookups == ["ds_1"]
    backend.answer("ds_1", session())
    assert first.session == session()
    later = ctx()
    assert stage.check(later) is None and later.session == session() and backend.lookups == ["ds_1"]
    cache.invalidate("ds_1")
    again = stage.check(ctx())
    assert again is not None and backend.lookups == ["ds_1", "ds_1"]
    refused = fired(again)
    backend.answer("ds_1", session(status="revoked"))
    assert isinstance(refused[0].value, RpcError)
    with pytest.raises(RpcError):
        stage.check(ctx())  # a fresh revoked session: refused at once, as before
