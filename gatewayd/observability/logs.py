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

``LineBuffer`` is the writer behind ``[access_log] target`` (``observability/access.py``):
lines already formatted, kept in memory and written to a ``LogTarget`` in chunks (one
``write`` each) by a thread of its own, with a bound on what may wait.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import stat
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, succeed
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
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


_second_text: tuple[int, str] = (-1, "")


def iso_time(when: float) -> str:
    """``when`` as ``2025-01-01T12:00:00.123456Z``: what ``datetime.fromtimestamp(when, UTC)`` renders
    (microseconds rounded half to even), with the text of the whole second kept from the last call."""
    global _second_text
    if not when >= 0.0 or when >= 253402300799.0:  # before 1970, NaN or past year 9999: datetime's own way
        return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    whole = int(when)
    micros = round((when - whole) * 1e6)  # when - whole is exact: modf's fraction
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    second, text = _second_text
    if second != whole:
        text = datetime.fromtimestamp(whole, UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        _second_text = (whole, text)
    return f"{text}.{micros:06d}Z"


def event_as_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object written for ``event`` (see the module docstring)."""
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": iso_time(when if isinstance(when, int | float) else 0.0),
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
    """Where lines go: a file we own (appended to, reopenable) or a stream we do not own.

    ``write`` and ``reopen`` hold the target's lock: a writer thread (``LineBuffer``) and the
    reactor thread may share one target (``target_from_string`` gives one per process stream).
    """

    def __init__(self, path: Path | None = None, stream: TextIO | None = None, name: str = "") -> None:
        if (path is None) == (stream is None):
            raise ValueError("give exactly one of path or stream")
        self.path = path
        self.name = name or (str(path) if path is not None else getattr(stream, "name", "a stream"))
        self._lock = threading.Lock()
        self._owned = path is not None
        self._stream: TextIO = self._open() if path is not None else stream  # type: ignore[assignment]

    def _open(self) -> TextIO:
        assert self.path is not None
        return open(self.path, "a", encoding="utf-8", buffering=1)  # closed by reopen() and close()

    def may_block(self) -> bool:
        """Whether a write can wait on a reader: a pipe, a socket (the journal's stdout) or a terminal.
        A regular file (or ``/dev/null``) takes a write at once, into the page cache."""
        try:
            fd = self._stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError):  # no file descriptor (a StringIO): never blocks
            return False
        return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)

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


_STREAM_TARGETS: dict[str, LogTarget] = {}


def target_from_string(target: str) -> LogTarget:
    """``-`` stdout, ``+`` stderr (the process's real streams, not twist's redirected ones), else a path.

    A stream's target is shared by everyone writing to it (``--log-json -`` and an access log
    with ``target = "-"``), so its lock keeps their lines whole.
    """
    if target in ("-", "+"):
        stream = sys.__stdout__ if target == "-" else sys.__stderr__
        shared = _STREAM_TARGETS.get(target)
        if shared is None or shared._stream is not stream:
            name = "stdout" if target == "-" else "stderr"
            shared = _STREAM_TARGETS[target] = LogTarget(stream=stream, name=name)
        return shared
    return LogTarget(path=Path(target))


ERROR_REPORT_INTERVAL_S = 10.0
"""A ``LineBuffer`` logs at most one write error or drop warning this often (counts in between)."""

_REOPEN = object()  # in a writer thread's queue: reopen the target (SIGHUP), in order with the chunks
_sink_log = Logger()


@dataclass
class SinkCounters:
    """What a ``LineBuffer`` (or the succession of them one access log has had) could not write:
    lines dropped (over the bound, or in a chunk whose write failed) and failed writes or reopens."""

    dropped: int = 0
    write_errors: int = 0


class LineBuffer:
    """Lines kept in memory and written to a ``LogTarget`` in chunks, one ``write`` per chunk.

    A chunk goes out when the buffer holds ``flush_bytes``, ``interval_s`` after a line arrived
    in an empty buffer (one ``callLater``; nothing runs while no line waits) and on ``close``.
    With ``threaded`` a thread of its own does the writes, so a target that blocks (a pipe or
    socket nobody reads) never holds up the reactor: the lines waiting (buffered or handed to
    that thread) are bounded by ``max_pending_bytes``, and a line beyond that is dropped and
    counted. Without, the caller's thread writes (a regular file: ``LogTarget.may_block``):
    no thread to wake per chunk, which on a busy core costs the reactor its turn on the CPU.
    A failed write loses its chunk (its lines counted as dropped), is counted, and is logged at
    most once per ``ERROR_REPORT_INTERVAL_S``; the lines after it are written as usual. Sizes
    are counted in characters (bytes, for ASCII lines). ``clock`` is the reactor (its
    ``callFromThread`` when threaded).
    """

    def __init__(self, target: LogTarget, clock: Any, *, interval_s: float, flush_bytes: int,
                 max_pending_bytes: int, counters: SinkCounters | None = None, threaded: bool = True,
                 what: str = "log") -> None:
        self.target = target
        self.clock = clock
        self.interval_s = interval_s
        self.flush_bytes = flush_bytes
        self.max_pending_bytes = max_pending_bytes
        self.counters = counters if counters is not None else SinkCounters()
        self.what = what
        self._lines: list[str] = []
        self._size = 0
        self._timer: Any = None
        self._queued = 0  # characters handed to the writer thread and not written yet
        self._lock = threading.Lock()
        self._last_report = -math.inf
        self._closing = False
        self._closed = False
        self._waiters: list[Deferred[None]] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"gatewayd {what} writer", daemon=True)
            self._thread.start()

    @property
    def pending_bytes(self) -> int:
        """Characters waiting: in the buffer, and handed to the writer thread."""
        return self._size + self._queued

    def add(self, line: str) -> None:
        """Buffer ``line`` (one whole line, newline included); drop it when too much waits already."""
        size = self._size + len(line)
        if size + self._queued > self.max_pending_bytes or self._closing:
            self.counters.dropped += 1
            if not self._closing:
                self._report("{what}: {target} does not keep up, records dropped ({dropped} so far)", warn=True)
            return
        self._lines.append(line)
        self._size = size
        if size >= self.flush_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.interval_s, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write (or hand the writer thread) what is buffered, as one chunk."""
        lines = self._lines
        if not lines:
            return
        chunk = "".join(lines)
        self._lines = []
        self._size = 0
        if self._thread is None:
            try:
                self.target.write(chunk)
            except Exception as e:
                self._write_failed(e, len(lines))
            return
        with self._lock:
            self._queued += len(chunk)
        self._queue.put((chunk, len(lines)))

    def reopen(self) -> None:
        """Reopen a file target (SIGHUP, after logrotate moved it): what was buffered goes to the old file."""
        if self._closing:
            return
        self.flush()
        if self._thread is None:
            self._reopen()
        else:
            self._queue.put(_REOPEN)

    def close(self) -> Deferred[None]:
        """Write what is buffered, stop the writer thread, close a file we own; fires once all that is done."""
        d: Deferred[None] = Deferred()
        if self._closed:
            return succeed(None)
        self._waiters.append(d)
        if not self._closing:
            self._closing = True
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self.flush()
            if self._thread is None:
                self._close_target()
                self._done()
            else:
                self._queue.put(None)
        return d

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        call = self.clock.callFromThread
        while True:
            item = self._queue.get()
            if item is None:
                break
            if item is _REOPEN:
                error = self._reopen(report=False)
                if error is not None:
                    call(self._write_failed, error, 0, "reopen")
                continue
            chunk, count = item
            try:
                self.target.write(chunk)
            except Exception as e:
                call(self._write_failed, e, count)
            finally:
                with self._lock:
                    self._queued -= len(chunk)
        error = self._close_target(report=False)
        if error is not None:
            call(self._write_failed, error, 0, "close")
        call(self._done)

    # -- either thread (no reactor state touched from the writer thread) ---------------------

    def _reopen(self, report: bool = True) -> BaseException | None:
        return self._on_target(self.target.reopen, "reopen", report)

    def _close_target(self, report: bool = True) -> BaseException | None:
        return self._on_target(self.target.close, "close", report)

    def _on_target(self, action: Callable[[], object], what: str, report: bool) -> BaseException | None:
        """Run ``action`` on the target: the error it raised (reported unless ``report`` is false), or ``None``."""
        try:
            action()
        except Exception as e:
            if report:
                self._write_failed(e, 0, what)
            return e
        return None

    # -- the reactor thread ---------------------------------------------------------------

    def _done(self) -> None:
        self._closed = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _write_failed(self, error: BaseException, lines: int, action: str = "write to") -> None:
        self.counters.write_errors += 1
        self.counters.dropped += lines
        self._report("{what}: cannot {action} {target}: {error} ({errors} errors, {dropped} records lost so far)",
                     action=action, error=f"{type(error).__name__}: {error}")

    def _report(self, text: str, warn: bool = False, **fields: Any) -> None:
        now = self.clock.seconds()
        if now - self._last_report < ERROR_REPORT_INTERVAL_S:
            return
        self._last_report = now
        emit = _sink_log.warn if warn else _sink_log.error
        emit(text, what=self.what, target=self.target.name, dropped=self.counters.dropped,
             errors=self.counters.write_errors, **fields)


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
