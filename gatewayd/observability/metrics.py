"""The ``gatewayd_`` metrics of one gateway, in a registry of their own.

``GatewayMetrics`` owns a ``CollectorRegistry`` (never the global one, so a
test process can build several gateways) and the metrics its observers
record as things happen. Each observer is handed to the part it observes at
construction: ``observe_call`` to the RPC application, ``observe_stage`` to
``Pipeline(on_stage=...)``, ``observe_backend`` to ``BackendClient(observer=...)``,
``observe_store`` to the Redis stores (``build_stores(observer=...)``).
Counts and sizes some object keeps anyway (open streams, push events,
connections, the backend pool) are read at scrape time by
``gatewayd.observability.collector`` through the parts' typed ``stats``.

Observers cost a list index and an add (``gatewayd.observability.tally``):
they run several times per call. Label values are bounded: ``method`` is a
path of the method table (a call is only observed once its method was
found), ``code`` a status code name, ``stage`` a pipeline stage name,
``operation`` and ``store`` one of a fixed few.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from gatewayd.observability.tally import CounterChild, HistogramChild, Tallies
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code

# End-to-end RPC latency: 1 ms .. 30 s (a backend timeout is seconds long).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A stage is usually sub-millisecond (hashing, a signature check, a memory store)
# and milliseconds when it waits on the backend or Redis.
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0)
# Backend and store round trips.
IO_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """Every observed ``gatewayd_`` metric of one gateway, registered in ``registry``.

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
        t = Tallies()
        self.calls = t.counter(
            "gatewayd_rpc_calls", "Finished RPCs by wire protocol, method and status code.",
            ["protocol", "method", "code"],
        )
        self.call_seconds = t.histogram(
            "gatewayd_rpc_call_duration_seconds",
            "RPC duration from the first request byte to the status (a stream's whole lifetime).",
            ["protocol", "method"], CALL_BUCKETS,
        )
        self.stage_seconds = t.histogram(
            "gatewayd_pipeline_stage_duration_seconds", "Time spent in each verification stage.",
            ["stage"], STAGE_BUCKETS,
        )
        self.stage_rejections = t.counter(
            "gatewayd_pipeline_rejections",
            "Requests a pipeline stage rejected, by stage and status code (ERROR: not an RPC error).",
            ["stage", "code"],
        )
        self.backend_seconds = t.histogram(
            "gatewayd_backend_request_duration_seconds",
            "Backend REST round trips by operation (session, route, public), waiting for a pooled "
            "connection included.",
            ["operation"], IO_BUCKETS,
        )
        self.backend_errors = t.counter(
            "gatewayd_backend_errors",
            "Backend requests that failed (unavailable, timeout, cancelled, error); HTTP statuses are not.",
            ["operation", "reason"],
        )
        self.store_seconds = t.histogram(
            "gatewayd_store_operation_duration_seconds",
            "Store round trips (Redis): admission (replay and budgets in one script), rate, replay.",
            ["store", "operation"], IO_BUCKETS,
        )
        self.store_errors = t.counter(
            "gatewayd_store_errors", "Store operations that failed (unavailable, cancelled, error).",
            ["store", "operation", "reason"],
        )
        self.registry.register(t)
        # Children by key: the observers below run several times per call.
        self._call_children: dict[tuple[str, str, Code], tuple[CounterChild, HistogramChild]] = {}
        self._stage_children: dict[str, HistogramChild] = {}
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # --- observers ------------------------------------------------------------------------------

    def observe_call(self, call: Call, code: Code, seconds: float) -> None:
        """A ``CallObserver`` for ``RpcApplication.observers``."""
        key = (call.protocol, call.method, code)
        children = self._call_children.get(key)
        if children is None:
            children = self._call_children[key] = (
                self.calls.child(call.protocol, call.method, code.name),
                self.call_seconds.child(call.protocol, call.method),
            )
        children[0].value += 1
        children[1].observe(seconds)

    def observe_stage(self, stage: str, seconds: float, outcome: str) -> None:
        """A ``StageObserver`` for ``Pipeline(on_stage=...)``.

        ``outcome`` is ``"ok"``, a lowercase code name or ``"error"``; rejections are
        counted under the upper-case code name (``UNAUTHENTICATED``, ``ERROR``).
        """
        histogram = self._stage_children.get(stage)
        if histogram is None:
            histogram = self._stage_children[stage] = self.stage_seconds.child(stage)
        histogram.observe(seconds)
        if outcome != "ok":
            self.stage_rejections.child(stage, outcome.upper()).inc()

    def observe_backend(self, operation: str, seconds: float, failure: Failure | None) -> None:
        """A ``BackendObserver`` for ``BackendClient(observer=...)``."""
        self.backend_seconds.child(operation).observe(seconds)
        if failure is not None:
            self.backend_errors.child(operation, failure_reason(failure)).inc()

    def observe_store(self, store: str, operation: str, seconds: float, failure: Failure | None) -> None:
        """A ``StoreObserver`` for the Redis stores (``build_stores(observer=...)``)."""
        self.store_seconds.child(store, operation).observe(seconds)
        if failure is not None:
            self.store_errors.child(store, operation, failure_reason(failure)).inc()

    # --- exposition -----------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the text format the ``Accept`` header asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def failure_reason(failure: Failure) -> str:
    """A bounded label for why a backend or store call failed."""
    if failure.check(CancelledError):
        return "cancelled"
    value: Any = failure.value
    name = type(value).__name__
    if name in ("BackendUnavailable", "StoreUnavailable"):
        text = str(value).lower()
        return "timeout" if "timeout" in text or "timed out" in text else "unavailable"
    if name in ("TimeoutError", "DeadlineExceeded"):
        return "timeout"
    return "error"
