"""JSON-lines logs: one JSON object per line, never a payload, key, signature or raw bytes.

Why not ``twist --log-format=json``: twisted's JSON observer writes RFC 7464
records (each prefixed with an ASCII RS byte, not JSON lines), carries the
format string and its arguments but not the message text, and serializes
*every* field of an event, so a ``payload=``/``signature=``/``key=`` field
passed to a log call lands in the log verbatim (bytes decoded as text).

``JsonLinesObserver`` writes::

    {"time": "2025-01-01T12:00:00.123456Z", "level": "info", "namespace": "gatewayd.service",
     "message": "...", "request_id": "...", "device_session_id": "...", ...}

- the message text is rendered from a redacted copy of the event, so a format
  string naming a denied field (``"got {payload}"``) renders ``<redacted>``;
- other fields are kept only when they are scalars (str, int, float, bool) and
  their names are not denied (``DENIED_FIELDS``, ``DENIED_SUFFIXES``);
- bytes are never written (``<N bytes>`` in message text, dropped as fields);
  protobuf messages render as ``<TypeName>``;
- a logged failure adds ``"error"`` (its type) and ``"traceback"``.

``install_json_log(target)`` adds the observer to the global log publisher,
whatever twist's ``--log-format`` is; ``target`` is a path (appended to,
reopened on SIGHUP for logrotate), ``-`` (stdout) or ``+`` (stderr).
``install_from_environment()`` does it when ``GATEWAYD_LOG_JSON`` is set.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from google.protobuf.message import Message
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

DENIED_FIELDS = frozenset({
    "payload", "payload_bytes", "body", "content", "data", "raw",
    "signature", "sig", "key", "keys", "seed", "secret", "private_key", "signing_key", "public_key",
    "client_public_key", "code", "email_code", "email", "password", "token", "authorization", "cookie",
    "request", "response", "envelope", "message_bytes", "frame", "frames",
})
"""Field names whose values never reach a log line (nor its message text)."""

DENIED_SUFFIXES = ("_payload", "_bytes", "_signature", "_key", "_seed", "_secret", "_token", "_password",
                   "_body")
"""A field whose name ends so is denied too (``client_public_key``, ``email_code``); ``key_id`` is not."""

# Our own keys: never taken from event fields of the same name.
RESERVED = frozenset({"time", "level", "namespace", "message", "error", "traceback"})
MAX_FIELD_CHARS = 2048
REDACTED = "<redacted>"
ENV_TARGET = "GATEWAYD_LOG_JSON"
ENV_LEVEL = "GATEWAYD_LOG_LEVEL"


def is_denied(name: str) -> bool:
    """Whether a field of this name must be left out of logs."""
    lowered = name.lower()
    return lowered in DENIED_FIELDS or lowered.endswith(DENIED_SUFFIXES)


def _safe_value(value: Any, depth: int = 0) -> Any:
    """A stand-in for formatting: bytes, protobuf messages and denied keys in containers redacted."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, Message):
        return f"<{type(value).__name__}>"
    if depth >= 3:
        scalar = isinstance(value, str | int | float | bool | type(None))
        return value if scalar else f"<{type(value).__name__}>"
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and is_denied(k) else _safe_value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_safe_value(v, depth + 1) for v in value]
    return value


def redacted_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` fit for ``formatEvent``: denied fields and bytes replaced."""
    safe: dict[str, Any] = {}
    for name, value in event.items():
        if name == "log_flattened":
            continue  # pre-rendered values of every field: would bypass the redaction
        if name.startswith("log_"):
            safe[name] = value
        elif is_denied(name):
            safe[name] = REDACTED
        else:
            safe[name] = _safe_value(value)
    return safe


def event_as_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object written for ``event`` (see the module docstring)."""
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(when if isinstance(when, int | float) else 0.0, UTC)
        .isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": str(event.get("log_namespace", "")),
        "message": _message(event),
    }
    for name, value in event.items():
        if name.startswith("log_") or name in RESERVED or is_denied(name) or not isinstance(name, str):
            continue
        if isinstance(value, bool | int | float):
            record[name] = value
        elif isinstance(value, str):
            record[name] = value if len(value) <= MAX_FIELD_CHARS else value[:MAX_FIELD_CHARS] + "…"
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = getattr(getattr(failure, "type", None), "__name__", "unknown")
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a broken failure must not lose the log line
            record["traceback"] = ""
    return record


def _message(event: Mapping[str, Any]) -> str:
    text = event.get("log_format")
    if type(text) is not str or "{" in text or "}" in text:
        # Fields to fill in (or escaped braces): format a redacted copy. A format without braces
        # (an access log line, most messages) is its own text: it reads no field.
        text = formatEvent(redacted_event(event))
    return text if len(text) <= 4 * MAX_FIELD_CHARS else text[: 4 * MAX_FIELD_CHARS] + "…"


def event_as_json_line(event: Mapping[str, Any]) -> str:
    """One line of JSON (ends with a newline; never contains one elsewhere)."""
    return json.dumps(event_as_record(event), ensure_ascii=False, default=_never) + "\n"


def _never(value: Any) -> str:
    # Only scalars are put in records; this guards against a future slip writing raw objects.
    return f"<{type(value).__name__}>"


class LogTarget:
    """Where lines go: a file we own (appended to, reopenable) or a stream we do not own."""

    def __init__(self, path: Path | None = None, stream: TextIO | None = None) -> None:
        if (path is None) == (stream is None):
            raise ValueError("give exactly one of path or stream")
        self.path = path
        self._lock = threading.Lock()
        self._owned = path is not None
        self._stream: TextIO = self._open() if path is not None else stream  # type: ignore[assignment]

    def _open(self) -> TextIO:
        assert self.path is not None
        return open(self.path, "a", encoding="utf-8", buffering=1)  # closed by reopen() and close()

    def write(self, line: str) -> None:
        with self._lock:
            self._stream.write(line)
            self._stream.flush()

    def reopen(self) -> bool:
        """Open the path again (after logrotate moved it); False for a stream we do not own."""
        if not self._owned:
            return False
        fresh = self._open()
        with self._lock:
            old, self._stream = self._stream, fresh
        old.close()
        return True

    def close(self) -> None:
        if self._owned:
            with self._lock:
                self._stream.close()


@implementer(ILogObserver)
class JsonLinesObserver:
    """A twisted.logger observer writing ``event_as_json_line`` to a ``LogTarget``."""

    def __init__(self, target: LogTarget) -> None:
        self.target = target

    def __call__(self, event: Mapping[str, Any]) -> None:
        try:
            line = event_as_json_line(event)
        except Exception as e:  # an unserializable event is reported, not raised into the publisher
            line = json.dumps({"level": "error", "namespace": __name__,
                               "message": f"unloggable event: {type(e).__name__}"}) + "\n"
        self.target.write(line)


class JsonLog:
    """An installed JSON log: its observer on a publisher and, for a file, a SIGHUP reopener."""

    def __init__(self, target: LogTarget, publisher: LogPublisher, level: LogLevel) -> None:
        self.target = target
        self.observer = JsonLinesObserver(target)
        self._filtered = FilteringLogObserver(self.observer, [LogLevelFilterPredicate(defaultLogLevel=level)])
        self._publisher = publisher
        self._previous_sighup: Any = None
        self._sighup_installed = False
        publisher.addObserver(self._filtered)

    def handle_sighup(self, reactor: Any) -> None:
        """Reopen the file on SIGHUP (in the reactor thread), chaining any earlier handler."""
        if not self.target._owned:
            return

        def on_sighup(signum: int, frame: Any) -> None:
            reactor.callFromThread(self.target.reopen)
            previous = self._previous_sighup
            if callable(previous):
                previous(signum, frame)

        self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        self._sighup_installed = True

    def uninstall(self) -> None:
        """Stop observing, restore the SIGHUP handler, close a file we own."""
        self._publisher.removeObserver(self._filtered)
        if self._sighup_installed:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._sighup_installed = False
        self.target.close()


def target_from_string(target: str) -> LogTarget:
    """``-`` stdout, ``+`` stderr (the process's real streams, not twist's redirected ones), else a path."""
    if target == "-":
        return LogTarget(stream=sys.__stdout__)
    if target == "+":
        return LogTarget(stream=sys.__stderr__)
    return LogTarget(path=Path(target))


def install_json_log(
    target: str,
    *,
    level: LogLevel = LogLevel.info,
    publisher: LogPublisher | None = None,
    reactor: Any = None,
    sighup: bool = True,
) -> JsonLog:
    """Send log events at ``level`` and above as JSON lines to ``target``; see ``target_from_string``.

    With ``sighup`` and a file target, SIGHUP reopens the file (call from the main thread).
    """
    json_log = JsonLog(target_from_string(target), publisher or globalLogPublisher, level)
    if sighup and json_log.target._owned:
        if reactor is None:
            from twisted.internet import reactor
        json_log.handle_sighup(reactor)
    return json_log


def install_from_environment(environ: Mapping[str, str] | None = None, **kwargs: Any) -> JsonLog | None:
    """``install_json_log`` when ``GATEWAYD_LOG_JSON`` names a target (level: ``GATEWAYD_LOG_LEVEL``)."""
    env = os.environ if environ is None else environ
    target = env.get(ENV_TARGET, "")
    if not target:
        return None
    level_name = env.get(ENV_LEVEL, "info").lower()
    level = LogLevel.levelWithName(level_name)
    return install_json_log(target, level=level, **kwargs)
