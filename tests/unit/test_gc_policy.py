"""The GC policy applied once start-up is done (gatewayd/gc_policy.py) and its config keys."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Iterator

import pytest

from gatewayd.config import ConfigError, from_mapping
from gatewayd.gc_policy import GcPolicy, apply


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """``apply`` changes the process's collector: give the test process its own settings back."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Holder:
    """A tracked object: a class instance, as every stream's and connection's state is."""


def test_apply_sets_the_thresholds_and_says_so(restore_gc: None) -> None:
    line = apply(GcPolicy(thresholds=(1234, 11, 77), freeze=False))
    assert gc.get_threshold() == (1234, 11, 77)
    assert gc.get_freeze_count() == 0
    assert line == "thresholds 1234/11/77"


def test_freeze_takes_what_exists_out_of_every_later_collection(restore_gc: None) -> None:
    built_at_start = Holder()
    line = apply(GcPolicy(thresholds=(700, 10, 10), freeze=True))
    assert gc.get_freeze_count() > 0
    assert re.fullmatch(r"thresholds 700/10/10, [1-9]\d* start-up objects frozen", line)
    # Frozen objects are no longer what a collection walks; objects made later still are.
    later = Holder()
    tracked = {id(o) for o in gc.get_objects()}
    assert id(built_at_start) not in tracked
    assert id(later) in tracked


def test_garbage_cycles_made_before_the_freeze_are_freed_not_frozen(restore_gc: None) -> None:
    gc.disable()  # no automatic collection may free the cycle first
    try:
        cycle = Holder()
        cycle.self = cycle  # type: ignore[attr-defined]
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is not None
        apply(GcPolicy(thresholds=(700, 10, 10), freeze=True))
        assert gone() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("thresholds", [(700, 10), (700, 10, 10, 10), (0, 10, 10), (700, 0, 10), (700, 10, 0)])
def test_bad_thresholds_are_refused_and_change_nothing(thresholds: tuple[int, ...], restore_gc: None) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError):
        apply(GcPolicy(thresholds=thresholds, freeze=False))
    assert gc.get_threshold() == before
    with pytest.raises(ConfigError, match=r"server\.gc_thresholds"):
        from_mapping({"server": {"gc_thresholds": list(thresholds)}})


def test_config_keys_and_defaults() -> None:
    server = from_mapping({}).server
    assert server.gc_freeze is True
    assert server.gc_thresholds == (700, 10, 100)
    server = from_mapping({"server": {"gc_freeze": False, "gc_thresholds": [5000, 20, 50]}}).server
    assert (server.gc_freeze, server.gc_thresholds) == (False, (5000, 20, 50))
