"""``log.level``: one minimum log level in front of every log observer, changeable at run time (SIGHUP).

twist builds its own observers (text or ``--log-format=json``, each with the level of
``--log-level``) and ``--log-json`` adds ours; none of them can be reached to change its
level later. ``LevelGate.install`` wraps every observer the publisher has at that moment in
one shared ``LogLevelFilterPredicate``, so ``set_level`` applies to all of them at once.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, LogPublisher

LEVELS = ("debug", "info", "warn", "error", "critical")


class LevelGate:
    """The shared predicate and the observers it wraps."""

    def __init__(self, level: str) -> None:
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
        self._wrapped: list[tuple[Any, FilteringLogObserver]] = []
        self._publisher: LogPublisher | None = None

    def set_level(self, level: str) -> None:
        self.predicate.setLogLevelForNamespace(None, LogLevel.levelWithName(level))  # type: ignore[arg-type]

    def install(self, publisher: LogPublisher) -> None:
        """Put the gate in front of the observers ``publisher`` has now (call once logging is set up)."""
        self._publisher = publisher
        # LogPublisher has no public list of its observers; this is the one place we read it.
        for observer in list(getattr(publisher, "_observers", [])):
            gated = FilteringLogObserver(observer, [self.predicate])
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
