"""Counters and histograms that cost a list index per observation, exported at scrape time.

prometheus_client's own metrics take a lock and walk value objects on every
``observe``/``inc``: microseconds each, several times per call. Everything
here is touched only on the reactor thread (observers run there, and so do
scrapes of ``/metrics``), so a family is a dict of label tuples to plain
counts; ``Tallies.collect`` turns them into metric families when Prometheus
asks. Label values stay bounded because callers only pass names from fixed
sets (method table paths, code names, stage names, operations).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class HistogramChild:
    """One label set of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus' "le" bucket.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class CounterChild:
    """One label set of a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Histogram:
    """A histogram family; ``child(*labels)`` is cached, so keep the child for hot paths."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self.children: dict[tuple[str, ...], HistogramChild] = {}

    def child(self, *labels: str) -> HistogramChild:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = HistogramChild(self.bounds)
        return found

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, child in self.children.items():
            cumulative, buckets = 0, []
            for le, count in zip(les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(labels), buckets, child.sum)
        return family


class Counter:
    """A counter family (exposed as ``<name>_total``)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], CounterChild] = {}

    def child(self, *labels: str) -> CounterChild:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = CounterChild()
        return found

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, child in self.children.items():
            family.add_metric(list(labels), child.value)
        return family


class Tallies(Collector):
    """The families of one registry: register it once, add families, read at scrape time."""

    def __init__(self) -> None:
        self.families: list[Histogram | Counter] = []

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str],
                  buckets: Sequence[float]) -> Histogram:
        family = Histogram(name, documentation, labelnames, buckets)
        self.families.append(family)
        return family

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Counter:
        family = Counter(name, documentation, labelnames)
        self.families.append(family)
        return family

    def collect(self) -> Iterator[Any]:
        for family in self.families:
            yield family.family()

    def describe(self) -> list[Any]:
        return [family.family() for family in self.families]
