"""The ``gatewayd_`` metrics of one gateway, in a registry of their own.

``GatewayMetrics`` owns a ``CollectorRegistry`` (never the global one, so a
test process can build several gateways) and the metrics that are pushed to
as things happen: finished RPCs (an ``RpcApplication`` observer), pipeline
stages (a ``Pipeline`` ``on_stage`` observer), backend requests and store
operations (``timed`` wrappers around their Deferred-returning methods).
Everything that is a count or a size already kept by some object (open
streams, push events, connections) is read at scrape time by
``gatewayd.observability.collector`` instead, so hot paths gain no code.

Label values are bounded: ``method`` is a path of the method table (a call
is only observed once its method was found), ``code`` a status code name,
``stage`` a pipeline stage name, ``operation`` one of a fixed few.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code

T = TypeVar("T")

# End-to-end RPC latency: 1 ms .. 30 s (a backend timeout is seconds long).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A stage is usually sub-millisecond (hashing, a signature check, a memory store)
# and milliseconds when it waits on the backend or Redis.
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0)
# Backend and store round trips.
IO_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Every pushed-to ``gatewayd_`` metric of one gateway, registered in ``registry``.

    ``process=True`` also registers prometheus_client's process, platform and
    GC collectors in this registry (``process_*``, ``python_*``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process: bool = True,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.timer = timer
        r = self.registry
        self.calls = Counter(
            "gatewayd_rpc_calls", "Finished RPCs by wire protocol, method and status code.",
            ["protocol", "method", "code"], registry=r,
        )
        self.call_seconds = Histogram(
            "gatewayd_rpc_call_duration_seconds",
            "RPC duration from the first request byte to the status (a stream's whole lifetime).",
            ["protocol", "method"], buckets=CALL_BUCKETS, registry=r,
        )
        self.stage_seconds = Histogram(
            "gatewayd_pipeline_stage_duration_seconds", "Time spent in each verification stage.",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.stage_rejections = Counter(
            "gatewayd_pipeline_rejections",
            "Requests a pipeline stage rejected, by stage and status code (ERROR: not an RPC error).",
            ["stage", "code"], registry=r,
        )
        self.backend_seconds = Histogram(
            "gatewayd_backend_request_duration_seconds",
            "Backend REST round trips by operation (session, route, public).",
            ["operation"], buckets=IO_BUCKETS, registry=r,
        )
        self.backend_errors = Counter(
            "gatewayd_backend_errors",
            "Backend requests that failed (unavailable, timeout, cancelled, error); HTTP statuses are not.",
            ["operation", "reason"], registry=r,
        )
        self.store_seconds = Histogram(
            "gatewayd_store_operation_duration_seconds",
            "Replay and rate store operations.",
            ["store", "operation"], buckets=IO_BUCKETS, registry=r,
        )
        self.store_errors = Counter(
            "gatewayd_store_errors", "Store operations that failed (unavailable, cancelled, error).",
            ["store", "operation", "reason"], registry=r,
        )
        # labels() costs microseconds (validation, a lock): label children are looked up once and
        # kept, since these observers run several times per request. Keys are bounded (see above).
        self._call_children: dict[tuple[str, str, Code], tuple[Any, Any]] = {}
        self._stage_children: dict[str, Any] = {}
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # --- observers ------------------------------------------------------------------------------

    def observe_call(self, call: Call, code: Code, seconds: float) -> None:
        """A ``CallObserver`` for ``RpcApplication.observers``."""
        key = (call.protocol, call.method, code)
        children = self._call_children.get(key)
        if children is None:
            children = self._call_children[key] = (
                self.calls.labels(call.protocol, call.method, code.name),
                self.call_seconds.labels(call.protocol, call.method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_stage(self, stage: str, seconds: float, outcome: str) -> None:
        """A ``StageObserver`` for ``Pipeline(on_stage=...)``.

        ``outcome`` is ``"ok"``, a lowercase code name or ``"error"``; rejections are
        counted under the upper-case code name (``UNAUTHENTICATED``, ``ERROR``).
        """
        histogram = self._stage_children.get(stage)
        if histogram is None:
            histogram = self._stage_children[stage] = self.stage_seconds.labels(stage)
        histogram.observe(seconds)
        if outcome != "ok":
            self.stage_rejections.labels(stage, outcome.upper()).inc()

    # --- wrappers for Deferred-returning calls -------------------------------------------------

    def timed_backend(
        self, operation: str, function: Callable[..., Deferred[T]]
    ) -> Callable[..., Deferred[T]]:
        """``function`` with its round trips in ``backend_seconds`` and failures in ``backend_errors``."""
        seconds = self.backend_seconds.labels(operation)

        def failed(reason: str) -> None:
            self.backend_errors.labels(operation, reason).inc()

        return _timed(function, self.timer, seconds.observe, failed)

    def timed_store(
        self, store: str, operation: str, function: Callable[..., Deferred[T]]
    ) -> Callable[..., Deferred[T]]:
        """``function`` with its duration in ``store_seconds`` and failures in ``store_errors``."""
        seconds = self.store_seconds.labels(store, operation)

        def failed(reason: str) -> None:
            self.store_errors.labels(store, operation, reason).inc()

        return _timed(function, self.timer, seconds.observe, failed)

    # --- exposition -----------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the text format the ``Accept`` header asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def failure_reason(failure: Failure) -> str:
    """A bounded label for why a backend or store call failed."""
    if failure.check(CancelledError):
        return "cancelled"
    name = type(failure.value).__name__
    if name in ("BackendUnavailable", "StoreUnavailable"):
        text = str(failure.value).lower()
        return "timeout" if "timeout" in text or "timed out" in text else "unavailable"
    if name in ("TimeoutError", "DeadlineExceeded"):
        return "timeout"
    return "error"


def _timed(
    function: Callable[..., Deferred[T]],
    timer: Callable[[], float],
    observe: Callable[[float], None],
    failed: Callable[[str], None],
) -> Callable[..., Deferred[T]]:
    def timed(*args: Any, **kwargs: Any) -> Deferred[T]:
        start = timer()
        try:
            d = function(*args, **kwargs)
        except BaseException:
            observe(timer() - start)
            failed(failure_reason(Failure()))
            raise

        def settled(result: Any) -> Any:
            observe(timer() - start)
            if isinstance(result, Failure):
                failed(failure_reason(result))
            return result  # unchanged: the caller sees exactly what it would have seen

        return d.addBoth(settled)

    timed.__wrapped__ = function  # type: ignore[attr-defined]
    return timed
