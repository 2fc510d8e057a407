"""Redis stores: replay reservations and GCRA rate budgets shared by every gateway host.

One txredisapi connection pool serves both stores and reconnects in the
background (how connections are made, to one server or to the primary that
Sentinel names, plain or TLS: ``redis_connect``). Calls never wait for a
connection: with none up they errback ``StoreUnavailable`` at once (fail closed, promptly), and every command has a
reply timeout (``timeout_s``) after which it errbacks ``StoreUnavailable`` and
txredisapi drops that connection to make a fresh one. Every failure of Redis
(lost connection, timeout, an error reply such as OOM or READONLY) becomes
``StoreUnavailable``.

What the timeouts mean, as txredisapi implements them:

- A command that timed out or lost its connection may still have been
  applied (Redis may have read it before freezing or dying). A replay
  reservation reported as unavailable can thus exist afterwards: a client
  that retries the same request_id may get ALREADY_EXISTS. Failing closed
  makes that the safe side.
- One reply timeout aborts its whole connection and fails every command in
  flight on it, since replies come in order and one missing means the
  connection is no good.
- The timer starts when the command is written; if the reactor is blocked
  for longer than ``timeout_s`` (a long synchronous burst), replies waiting in
  the socket count as late.

- replay: ``SET <prefix>replay:<key> 1 NX PX <ttl_ms>``.
- rate: one Lua script (EVALSHA, EVAL after NOSCRIPT) computing GCRA on
  Redis' own clock (``TIME``), so hosts with skewed clocks agree; the key
  expires when the bucket is full again. Times are integer microseconds.
- admission (``admit``, every verified request): one script doing both, the
  replay ``SET NX PX`` first and, only when it reserved, every budget's GCRA:
  one round trip instead of five, with the keys, values and expiries the two
  scripts above write (so gateways of either version can share one Redis).
  Scripts are atomic, so no other client sees a state in between; all keys
  of one call must live on one Redis (no Redis Cluster slots across them).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gatewayd.config import Budget, StoresConfig
from gatewayd.stores.base import (
    ALLOWED,
    REPLAYED,
    Admission,
    RateDecision,
    StoreObserver,
    Stores,
    StoreUnavailable,
    check_cost,
)
from gatewayd.stores.redis_connect import open_factory

# KEYS[1]: the bucket. ARGV: emission interval (µs), burst, cost.
# Returns {1, 0} when allowed, {0, retry_after_µs} when not.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local wait = new_tat - interval * burst - now
if wait > 0 then
  return {0, math.ceil(wait)}
end
new_tat = math.ceil(new_tat)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', string.format('%.0f', math.ceil((new_tat - now) / 1000)))
return {1, 0}
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()

# KEYS[1]: the replay reservation; KEYS[2..n]: the budgets.
# ARGV[1]: the reservation's ttl (ms); then per budget: emission interval (µs), burst, cost.
# Returns {0} when the reservation existed (nothing charged), else {1, wait_1, ..., wait_n}
# with wait_i = 0 when budget i allowed (and was charged), else its retry-after in µs.
ADMIT_SCRIPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return {0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reply = {1}
for i = 2, #KEYS do
  local arg = 2 + (i - 2) * 3
  local interval = tonumber(ARGV[arg])
  local burst = tonumber(ARGV[arg + 1])
  local cost = tonumber(ARGV[arg + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local wait = new_tat - interval * burst - now
  if wait > 0 then
    reply[i] = math.ceil(wait)
  else
    new_tat = math.ceil(new_tat)
    redis.call('SET', KEYS[i], string.format('%.0f', new_tat),
               'PX', string.format('%.0f', math.ceil((new_tat - now) / 1000)))
    reply[i] = 0
  end
end
return reply
"""
ADMIT_SHA = hashlib.sha1(ADMIT_SCRIPT.encode()).hexdigest()


def _unavailable(failure: Failure) -> Failure:
    """Any failure of Redis, as the one exception callers handle."""
    if failure.check(StoreUnavailable):
        return failure
    return Failure(StoreUnavailable(f"redis: {failure.getErrorMessage()}"))


class RedisPool:
    """The connections of one txredisapi factory (``redis_connect.open_factory``), used round robin."""

    def __init__(self, factory: txredisapi.RedisFactory) -> None:
        self._factory = factory
        self._next = 0

    def connection(self) -> Any:
        """A live connection (round robin), or None when none is up."""
        pool = self._factory.pool
        for _ in range(len(pool)):
            self._next = (self._next + 1) % len(pool)
            conn = pool[self._next]
            if conn.connected:
                return conn
        return None

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command; errbacks ``StoreUnavailable`` on any failure."""
        conn = self.connection()
        if conn is None:
            return defer.fail(StoreUnavailable("redis: not connected"))
        try:
            d = conn.execute_command(*args)
        except Exception as e:  # txredisapi raises "Not connected" synchronously
            return defer.fail(StoreUnavailable(f"redis: {e}"))
        return d.addErrback(_unavailable)

    def evalsha(self, sha: str, script: str, keys: tuple[str, ...], args: tuple[Any, ...]) -> Deferred[Any]:
        """Run a script by hash, sending its text once when Redis does not know it."""
        conn = self.connection()
        if conn is None:
            return defer.fail(StoreUnavailable("redis: not connected"))
        argv = (len(keys), *keys, *args)

        def noscript(failure: Failure) -> Any:
            failure.trap(txredisapi.ResponseError)
            if not str(failure.value).startswith("NOSCRIPT"):
                return failure
            return conn.execute_command("EVAL", script, *argv)

        try:
            d = conn.execute_command("EVALSHA", sha, *argv)
        except Exception as e:
            return defer.fail(StoreUnavailable(f"redis: {e}"))
        return d.addErrback(noscript).addErrback(_unavailable)

    def ping(self) -> Deferred[bool]:
        """True when a connection is up and answers PING in time; never errbacks."""
        d = self.execute("PING")
        return d.addCallbacks(lambda reply: reply == "PONG", lambda _: False)

    def close(self) -> Deferred[None]:
        """Stop reconnecting and close every connection; fires once they are closed."""
        d: Deferred[Any] = self._factory.disconnect()
        return d.addCallback(lambda _: None)


class _Watch:
    """Reports each round trip to a ``StoreObserver`` once it settles (nothing without one)."""

    __slots__ = ("observer", "timer")

    def __init__(self, observer: StoreObserver | None, timer: Callable[[], float]) -> None:
        self.observer = observer
        self.timer = timer

    def __call__(self, d: Deferred[Any], store: str, operation: str, start: float) -> Deferred[Any]:
        observer, timer = self.observer, self.timer
        if observer is None:
            return d

        def settled(result: Any) -> Any:
            observer(store, operation, timer() - start, result if isinstance(result, Failure) else None)
            return result

        return d.addBoth(settled)


_UNWATCHED = _Watch(None, time.perf_counter)


class RedisReplayStore:
    """``ReplayStore`` shared through Redis: ``SET NX PX`` under ``<prefix>replay:``."""

    def __init__(self, pool: RedisPool, key_prefix: str = "", watch: _Watch = _UNWATCHED) -> None:
        self._pool = pool
        self._prefix = key_prefix + "replay:"
        self._watch = watch

    def reserve(self, key: str, ttl_s: float) -> Deferred[bool]:
        start = self._watch.timer()
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        d = self._pool.execute("SET", self._prefix + key, "1", "NX", "PX", ttl_ms)
        return self._watch(d, "replay", "reserve", start).addCallback(_is_ok)


def _is_ok(reply: Any) -> bool:
    return reply == "OK"


class RedisRateLimiter:
    """``RateLimiter`` shared through Redis: the GCRA script under ``<prefix>rate:``."""

    def __init__(self, pool: RedisPool, key_prefix: str = "", watch: _Watch = _UNWATCHED) -> None:
        self._pool = pool
        self._prefix = key_prefix + "rate:"
        self._watch = watch

    def consume(self, key: str, budget: Budget, cost: int = 1) -> Deferred[RateDecision]:
        if cost != 1:
            check_cost(budget, cost)
        start = self._watch.timer()
        interval_us = 1_000_000 / budget.rate
        d = self._pool.evalsha(
            GCRA_SHA, GCRA_SCRIPT, (self._prefix + key,), (interval_us, budget.burst, cost)
        )
        return self._watch(d, "rate", "consume", start).addCallback(_decision)


def _admission(reply: Any) -> Admission:
    if not reply[0]:
        return REPLAYED
    return Admission(True, tuple(ALLOWED if wait == 0 else RateDecision(False, wait / 1_000_000) for wait in reply[1:]))


def _decision(reply: Any) -> RateDecision:
    allowed, retry_after_us = reply
    if allowed:
        return ALLOWED
    return RateDecision(False, retry_after_us / 1_000_000)


class RedisStores(Stores):
    """Both Redis stores over one pool; ``ping`` is a PING, ``close`` closes the pool.

    ``observer``, when given, hears of every round trip once it settles: store
    ``admission`` (operation ``admit``), ``rate`` (``consume``, the public
    surface's budgets) or ``replay`` (``reserve``).
    """

    def __init__(self, pool: RedisPool, key_prefix: str = "", observer: StoreObserver | None = None,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        watch = self._watch = _Watch(observer, timer)
        super().__init__(RedisReplayStore(pool, key_prefix, watch), RedisRateLimiter(pool, key_prefix, watch))
        self.pool = pool
        self._replay_prefix = key_prefix + "replay:"
        self._rate_prefix = key_prefix + "rate:"

    def admit(self, replay_key: str, ttl_s: float, budgets: Sequence[tuple[str, Budget]]) -> Deferred[Admission]:
        """``Stores.admit`` in one round trip (``ADMIT_SCRIPT``)."""
        start = self._watch.timer()
        rate_prefix = self._rate_prefix
        keys = [self._replay_prefix + replay_key]
        args: list[Any] = [max(1, math.ceil(ttl_s * 1000))]
        for key, budget in budgets:
            keys.append(rate_prefix + key)
            args += (1_000_000 / budget.rate, budget.burst, 1)
        d = self.pool.evalsha(ADMIT_SHA, ADMIT_SCRIPT, tuple(keys), tuple(args))
        return self._watch(d, "admission", "admit", start).addCallback(_admission)

    @classmethod
    def from_config(cls, config: StoresConfig, reactor: IReactorTime, observer: StoreObserver | None = None,
                    **pool_options: Any) -> RedisStores:
        """Stores on the Redis ``config`` names (see ``redis_connect``), ``config.timeout_s`` per command."""
        pool = RedisPool(open_factory(config, reactor, **pool_options))
        return cls(pool, config.key_prefix, observer)

    def ping(self) -> Deferred[bool]:
        return self.pool.ping()

    def close(self) -> Deferred[None]:
        return self.pool.close()
