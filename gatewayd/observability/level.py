"""``log.level``: one minimum log level in front of every log observer, changeable at run time (SIGHUP).

twist builds its own observers (text or ``--log-format=json``, each with the level of
``--log-level``) and ``--log-json`` adds ours; none of them can be reached to change its
level later. ``LevelGate.install`` puts every observer the publisher has at that moment
behind one shared gate, so ``set_level`` applies to all of them at once.

The gate passes what a ``LogLevelFilterPredicate`` with only a default level passes
(an event at or above the level, with a namespace) with one set lookup per event:
twisted's ``FilteringLogObserver`` walks the event's namespace segments and a predicate
list for every event, and every access log record goes through it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, LogLevel, LogLevelFilterPredicate, LogPublisher
from zope.interface import implementer

LEVELS = ("debug", "info", "warn", "error", "critical")


class LevelGate:
    """The shared level and the observers it gates."""

    def __init__(self, level: str) -> None:
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
        self.passing: frozenset[Any] = frozenset()
        self._wrapped: list[tuple[Any, _Gated]] = []
        self._publisher: LogPublisher | None = None
        self.set_level(level)

    def set_level(self, level: str) -> None:
        minimum = LogLevel.levelWithName(level)
        self.predicate.setLogLevelForNamespace(None, minimum)  # type: ignore[arg-type]
        self.passing = frozenset(each for each in LogLevel.iterconstants() if not each < minimum)

    def install(self, publisher: LogPublisher) -> None:
        """Put the gate in front of the observers ``publisher`` has now (call once logging is set up)."""
        self._publisher = publisher
        # LogPublisher has no public list of its observers; this is the one place we read it.
        for observer in list(getattr(publisher, "_observers", [])):
            gated = _Gated(observer, self)
            publisher.removeObserver(observer)
            publisher.addObserver(gated)
            self._wrapped.append((observer, gated))

    def uninstall(self) -> None:
        """Give the publisher its observers back, ungated."""
        if self._publisher is None:
            return
        for observer, gated in self._wrapped:
            self._publisher.removeObserver(gated)
            self._publisher.addObserver(observer)
        self._wrapped.clear()


@implementer(ILogObserver)
class _Gated:
    """One observer behind the gate: an event without a level or namespace, or below the level, is dropped."""

    __slots__ = ("gate", "observer")

    def __init__(self, observer: Any, gate: LevelGate) -> None:
        self.observer = observer
        self.gate = gate

    def __call__(self, event: Any) -> None:
        if event.get("log_level") in self.gate.passing and event.get("log_namespace"):
            self.observer(event)
