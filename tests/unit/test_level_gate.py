"""``LevelGate``: the observers it gates see what a LogLevelFilterPredicate would let through."""

from __future__ import annotations

from typing import Any, cast

import pytest
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
)

from gatewayd.observability.level import LEVELS, LevelGate


def collect(events: list[dict[str, Any]]) -> ILogObserver:
    return cast(ILogObserver, events.append)


@pytest.mark.parametrize("minimum", LEVELS)
def test_the_gate_passes_what_twisteds_level_filter_passes(minimum: str) -> None:
    gated: list[dict[str, Any]] = []
    filtered: list[dict[str, Any]] = []
    publisher = LogPublisher(collect(gated))
    LevelGate(minimum).install(publisher)
    reference = FilteringLogObserver(
        collect(filtered), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(minimum))])
    events: list[dict[str, Any]] = [{"log_level": level, "log_namespace": "gatewayd.access"}
                                    for level in LogLevel.iterconstants()]
    events += [{"log_level": LogLevel.critical}, {"log_namespace": "x"}, {"log_level": LogLevel.critical,
                                                                          "log_namespace": ""}]
    for event in events:
        publisher(event)
        reference(event)
    assert gated == filtered


def test_set_level_applies_to_every_gated_observer_and_uninstall_ungates() -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    publisher = LogPublisher(collect(first), collect(second))
    gate = LevelGate("info")
    gate.install(publisher)
    log = Logger(namespace="gatewayd.test", observer=publisher)
    log.info("one")
    gate.set_level("warn")
    log.info("two")
    log.warn("three")
    assert [e["log_format"] for e in first] == [e["log_format"] for e in second] == ["one", "three"]
    assert gate.predicate.logLevelForNamespace("gatewayd") is LogLevel.warn
    gate.uninstall()
    log.debug("four")
    assert first[-1]["log_format"] == "four"
