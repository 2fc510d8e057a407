"""The access log's own sink (``[access_log] target``): the JSON line it writes is the one ``--log-json``
writes for the same record; flushes come after ``flush_interval_ms`` or at ``buffer_bytes``, one write
each; what cannot be written is bounded, dropped and counted; write errors are counted and logged
rate-limited; a file is reopened (logrotate) and a changed target swapped in; nothing buffered is lost
at close."""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import re
import struct
import termios
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher, formatEvent, globalLogPublisher

from gatewayd.config import AccessLogConfig, ConfigError
from gatewayd.observability import access as access_module
from gatewayd.observability.access import AccessLog
from gatewayd.observability.logs import (
    ERROR_REPORT_INTERVAL_S,
    LineBuffer,
    LogTarget,
    event_as_json_line,
    is_denied,
    iso_time,
    target_from_string,
)
from gatewayd.rpc.codes import Code
from gatewayd.rpc.protocols import connect, grpc, grpcweb
from gatewayd.rpc.wire import WireProtocol
from gatewayd.testing.wait import bounded

RPC_KEYS = ["time", "level", "namespace", "message", "stage", "duration_ms", "kind", "peer", "protocol", "transport",
            "method", "status", "status_name", "bytes_in", "bytes_out", "device_session_id"]
REST_KEYS = [*RPC_KEYS[:11], "path", *RPC_KEYS[11:]]


def rpc_fields(**changes: Any) -> dict[str, Any]:
    fields = {"kind": "rpc", "peer": "127.0.0.1", "protocol": "grpc", "transport": "h2",
              "method": "/gateway.v1.Gateway/ExecuteCommand", "target": "/gateway.v1.Gateway/ExecuteCommand",
              "status": 0, "status_name": "ok", "stage": "", "duration_s": 0.0012345, "bytes_in": 310,
              "bytes_out": 205, "device_session_id": "ds_0123456789abcdef"}
    return fields | changes


def rest_fields(**changes: Any) -> dict[str, Any]:
    fields = {"kind": "rest", "peer": "::1", "protocol": "rest", "transport": "http/1.1", "method": "POST",
              "path": "/api/v1/public/auth/send-email-code", "target": "POST /api/v1/public/auth/send-email-code",
              "status": 400, "status_name": "400", "stage": "validation", "duration_s": 0.0123456, "bytes_in": 12,
              "bytes_out": 40, "device_session_id": ""}
    return fields | changes


class Writes:
    """A file target that remembers each write (each must be whole lines) and can be made to fail."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.target = LogTarget(stream=self.out, name="memory")
        self.chunks: list[str] = []
        self.fail: OSError | None = None
        original = self.target.write

        def write(chunk: str) -> None:
            if self.fail is not None:
                raise self.fail
            assert chunk.endswith("\n")
            self.chunks.append(chunk)
            original(chunk)

        self.target.write = write  # type: ignore[method-assign]

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.out.getvalue().splitlines()]


def sink_log(writes: Writes, clock: Clock, **config: Any) -> AccessLog:
    """An AccessLog whose sink writes to ``writes`` in the calling thread, timed by ``clock``."""
    settings = AccessLogConfig(**({"target": "-"} | config))
    access = AccessLog(settings, clock=clock, threaded=False)
    assert access.sink is not None
    access.sink.target = writes.target
    return access


def paired(fields: dict[str, Any], when: float, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The line the sink writes and the line ``--log-json`` writes for the same record at ``when``."""
    monkeypatch.setattr(access_module.time, "time", lambda: when)
    events: list[dict[str, Any]] = []
    through_logger = AccessLog(AccessLogConfig(), log=Logger(namespace="gatewayd.access", observer=events.append))
    through_logger._emit(**fields)
    writes = Writes()
    sink = sink_log(writes, Clock())
    sink._emit(**fields)
    sink.close()
    monkeypatch.undo()
    [event] = events
    assert event["log_time"] == when
    return writes.out.getvalue(), event_as_json_line(event)


# --- the line -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    rpc_fields(),
    rpc_fields(status=16, status_name="unauthenticated", stage="signature", duration_s=0.0),
    rpc_fields(peer="2001:db8::1", method="/weird\"path\\with{braces}and\u00e9\u2028\x01\x7f", device_session_id=""),
    rpc_fields(method="/" + "m" * 5000, peer="p" * 2049, device_session_id="d" * 2048),
    rest_fields(),
    rest_fields(path="/api/v1/public/\u00fcber/{x}\t\"q\"" + "z" * 9000, status=200, status_name="200", stage=""),
    rest_fields(duration_s=12.3456789e3, bytes_in=0, bytes_out=10**12),
])
def test_the_line_is_the_one_log_json_writes(fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for when in (1764765432.5000005, 1764765432.9999996, 1764765433.0, 1764765432.123456):
        ours, theirs = paired(fields, when, monkeypatch)
        assert ours == theirs
        record = json.loads(ours)
        assert list(record) == (REST_KEYS if fields["kind"] == "rest" else RPC_KEYS)
        assert ours.count("\n") == 1 and ours.endswith("\n")


def test_keys_are_never_denied_and_fixed_names_need_no_escaping() -> None:
    assert not [key for key in REST_KEYS if is_denied(key)]
    assert connect and grpc and grpcweb  # imported: their protocol classes exist
    protocols: set[str] = set()
    classes: list[type] = [WireProtocol]
    while classes:
        cls = classes.pop()
        protocols.add(cls.name)  # type: ignore[attr-defined]
        classes += cls.__subclasses__()
    assert {"grpc", "grpc-web", "grpc-web-text", "connect", "connect-stream"} <= protocols
    for name in [*protocols, "rest", "rpc", "h2", "http/1.1", *(code.connect_name for code in Code)]:
        assert re.fullmatch(r"[a-z0-9_/.-]*", name), name  # written between quotes as they are


def test_iso_time_is_what_datetime_renders() -> None:
    rng = random.Random(7)
    samples = [0.0, 0.5e-6, 1.5e-6, 2.5e-6, 0.9999995, 59.9999996, 1764765432.0000005, 1764765432.9999999,
               -1.25, 253402300798.5]
    samples += [rng.uniform(0, 4e9) for _ in range(20000)] + [int(rng.uniform(0, 4e9)) + k / 1e6 + 5e-7
                                                              for k in range(0, 1000000, 997)]
    for when in samples:
        expected = datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        assert iso_time(when) == expected, when


# --- flushing -------------------------------------------------------------------------------------


def test_records_are_written_after_the_interval_in_one_write() -> None:
    clock, writes = Clock(), Writes()
    access = sink_log(writes, clock, flush_interval_ms=100.0)
    for n in range(5):
        access._emit(**rpc_fields(bytes_in=n))
        assert len(clock.getDelayedCalls()) == 1  # one timer, armed by the first record
    clock.advance(0.099)
    assert writes.chunks == []
    clock.advance(0.001)
    assert len(writes.chunks) == 1
    assert [r["bytes_in"] for r in writes.lines()] == [0, 1, 2, 3, 4]
    assert clock.getDelayedCalls() == []  # nothing scheduled while nothing waits
    access._emit(**rpc_fields(bytes_in=5))
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == pytest.approx(clock.seconds() + 0.1)
    clock.advance(0.1)
    assert len(writes.chunks) == 2 and writes.lines()[-1]["bytes_in"] == 5


def test_a_full_buffer_is_written_at_once() -> None:
    clock, writes = Clock(), Writes()
    line = len(one_line())
    access = sink_log(writes, clock, buffer_bytes=3 * line, max_pending_bytes=3 * line)
    access._emit(**rpc_fields())
    access._emit(**rpc_fields())
    assert writes.chunks == []
    access._emit(**rpc_fields())
    assert len(writes.chunks) == 1 and writes.chunks[0].count("\n") == 3  # three records, one write
    access._emit(**rpc_fields())
    clock.advance(0.1)  # the first record's timer, still pending, writes the fourth
    assert len(writes.chunks) == 2 and len(writes.lines()) == 4


def one_line() -> str:
    writes = Writes()
    access = sink_log(writes, Clock())
    access._emit(**rpc_fields())
    access.close()
    return writes.out.getvalue()


def test_failures_are_always_written_when_sampling() -> None:
    clock, writes = Clock(), Writes()
    access = sink_log(writes, clock, sample_rate=0.0)
    for _ in range(3):
        access.rpc_finished(_server_call(), Code.OK)
        access.rpc_finished(_server_call(), Code.UNAUTHENTICATED)
    access.close()
    assert [(r["status_name"], r["stage"]) for r in writes.lines()] == [("unauthenticated", "signature")] * 3


def _server_call() -> Any:
    from types import SimpleNamespace

    from gatewayd.pipeline.pipeline import DEVICE_SESSION_KEY, STAGE_KEY

    call = SimpleNamespace(peer="10.0.0.1", context={STAGE_KEY: "signature", DEVICE_SESSION_KEY: "ds_x"})
    exchange = SimpleNamespace(http2=True, path="/gateway.v1.Gateway/ExecuteCommand")
    return SimpleNamespace(call=call, exchange=exchange, proto=SimpleNamespace(name="grpc"), duration_s=0.001,
                           bytes_in=1, bytes_out=2)


def test_close_writes_what_waits_and_later_records_are_counted_as_dropped() -> None:
    clock, writes = Clock(), Writes()
    access = sink_log(writes, clock)
    access._emit(**rpc_fields())
    sink = access.sink
    assert sink is not None
    closed = access.close()
    assert closed.called and len(writes.lines()) == 1 and clock.getDelayedCalls() == []
    sink.add("late\n")
    assert access.counters.dropped == 1 and len(writes.lines()) == 1


# --- errors ---------------------------------------------------------------------------------------


def test_write_errors_are_counted_logged_rate_limited_and_do_not_stop_later_writes() -> None:
    clock, writes = Clock(), Writes()
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        access = sink_log(writes, clock, buffer_bytes=1, max_pending_bytes=1 << 20)  # one write per record
        writes.fail = OSError(28, "No space left on device")
        access._emit(**rpc_fields())  # raises nothing into the call
        access._emit(**rpc_fields())
        assert access.stats.write_errors == 2 and access.stats.records_dropped == 2
        errors = [e for e in logged if "cannot write to" in formatEvent(e)]
        assert len(errors) == 1  # the second within ERROR_REPORT_INTERVAL_S is only counted
        assert errors[0]["target"] == "memory" and "No space left" in errors[0]["error"]
        clock.advance(ERROR_REPORT_INTERVAL_S)
        access._emit(**rpc_fields())
        errors = [e for e in logged if "cannot write to" in formatEvent(e)]
        assert len(errors) == 2 and errors[1]["errors"] == 3
        writes.fail = None
        access._emit(**rpc_fields(bytes_in=77))
        assert [r["bytes_in"] for r in writes.lines()] == [77]
    finally:
        globalLogPublisher.removeObserver(logged.append)


@pytest_twisted.ensureDeferred
async def test_a_blocked_target_holds_at_most_the_bound_and_counts_drops() -> None:
    """A pipe nobody reads: the writer thread blocks once the pipe is full, the reactor does not; what
    waits stays under ``max_pending_bytes`` and every record beyond it is counted. Once the pipe is
    read, everything not dropped arrives, in order and in whole lines."""
    read_fd, write_fd = os.pipe()
    target = LogTarget(stream=os.fdopen(write_fd, "w", encoding="utf-8"), name="pipe")
    sink = LineBuffer(target, reactor, interval_s=0.01, flush_bytes=4096, max_pending_bytes=16384,
                      what="access log")
    line = "x" * 99 + "\n"
    added = 0
    try:
        # Until records were dropped with more than the bound already in the pipe (its 64 KiB fill
        # up to 40-64 KiB, depending on how writes split into pages): the writer thread is blocked.
        while not (sink.counters.dropped and _pipe_holds(read_fd) > 2 * 16384):
            for _ in range(100):
                sink.add(f"{added:08d}" + line[8:])
                added += 1
                assert sink.pending_bytes <= 16384
            await task.deferLater(reactor, 0, lambda: None)  # a reactor turn: timers, the writer's reports
            assert added < 200_000, "the pipe never filled, or nothing was dropped"
    finally:
        received: list[bytes] = []
        reader = threads.deferToThread(_read_all, read_fd, received)
        await bounded(sink.close(), 10.0)
        target._stream.close()  # not ours: the sink leaves it open
        await bounded(reader, 10.0)
    lines = b"".join(received).decode().splitlines()
    assert sink.counters.dropped > 0 and len(lines) + sink.counters.dropped == added
    numbers = [int(x[:8]) for x in lines]
    assert numbers == sorted(numbers) and all(len(x) == 99 for x in lines)
    assert sink.counters.write_errors == 0


def _pipe_holds(fd: int) -> int:
    """Bytes waiting in the pipe (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


def _read_all(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            into.append(chunk)


# --- files: reopen, a changed target --------------------------------------------------------------


def test_a_file_target_is_reopened_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    clock = Clock()
    access = AccessLog(AccessLogConfig(target=str(path)), clock=clock, threaded=False)
    access._emit(**rpc_fields(bytes_in=1))
    clock.advance(0.1)
    access._emit(**rpc_fields(bytes_in=2))  # buffered when logrotate moves the file
    path.rename(tmp_path / "access.log.1")
    access.reopen()  # what SIGHUP does: buffered records go to the old file first
    access._emit(**rpc_fields(bytes_in=3))
    access.close()
    assert [json.loads(x)["bytes_in"] for x in (tmp_path / "access.log.1").read_text().splitlines()] == [1, 2]
    assert [json.loads(x)["bytes_in"] for x in path.read_text().splitlines()] == [3]


@pytest_twisted.ensureDeferred
async def test_the_writer_thread_reopens_in_order_and_close_writes_everything(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = LineBuffer(target_from_string(str(path)), reactor, interval_s=60.0, flush_bytes=1 << 16,
                      max_pending_bytes=1 << 20, threaded=True)
    assert sink._thread is not None
    for n in range(50):
        sink.add(f"{n}\n")
    path.rename(tmp_path / "access.log.1")
    sink.reopen()  # in order with the chunks: the 50 before go to the old file
    for n in range(50, 60):
        sink.add(f"{n}\n")
    await bounded(sink.close(), 10.0)  # long before the 60 s interval: close writes what waits
    assert not sink._thread.is_alive()
    assert (tmp_path / "access.log.1").read_text().split() == [str(n) for n in range(50)]
    assert path.read_text().split() == [str(n) for n in range(50, 60)]


def test_a_thread_only_for_targets_that_may_block(tmp_path: Path) -> None:
    """A regular file (or /dev/null) is written in the reactor thread; a pipe gets a writer thread."""
    file_log = AccessLog(AccessLogConfig(target=str(tmp_path / "a.log")), clock=Clock())
    null_log = AccessLog(AccessLogConfig(target="/dev/null"), clock=Clock())
    assert file_log.sink is not None and file_log.sink._thread is None
    assert null_log.sink is not None and null_log.sink._thread is None
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "w") as pipe:
        assert LogTarget(stream=pipe).may_block()
    assert not LogTarget(stream=io.StringIO()).may_block()
    file_log.close()
    null_log.close()


def test_a_reload_swaps_the_target_and_closes_the_old_one(tmp_path: Path) -> None:
    clock = Clock()
    one, two = tmp_path / "one.log", tmp_path / "two.log"
    access = AccessLog(AccessLogConfig(), clock=clock, threaded=False,
                       log=Logger(namespace="gatewayd.access", observer=LogPublisher()))
    assert access.sink is None
    access.configure(AccessLogConfig(target=str(one)))
    first = access.sink
    assert first is not None
    access._emit(**rpc_fields(bytes_in=1))
    access.configure(AccessLogConfig(target=str(one), flush_interval_ms=5.0, buffer_bytes=10, max_pending_bytes=99))
    assert access.sink is first and (first.interval_s, first.flush_bytes, first.max_pending_bytes) == (0.005, 10, 99)
    assert access.prepare(AccessLogConfig(target=str(two))) is access.prepare(AccessLogConfig(target=str(two)))
    access.configure(AccessLogConfig(target=str(two)))
    assert access.sink is not first and first._closed  # the old file: flushed and closed
    access._emit(**rpc_fields(bytes_in=2))
    access.configure(AccessLogConfig(target=""))  # back to the twisted logger
    assert access.sink is None
    assert [json.loads(x)["bytes_in"] for x in one.read_text().splitlines()] == [1]
    assert [json.loads(x)["bytes_in"] for x in two.read_text().splitlines()] == [2]


def test_a_target_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    access = AccessLog(AccessLogConfig(), clock=Clock(), threaded=False)
    with pytest.raises(ConfigError, match=r"^access_log\.target: cannot open .*missing/access\.log"):
        access.prepare(AccessLogConfig(target=str(tmp_path / "missing" / "access.log")))
    assert access.sink is None


def test_streams_are_shared_so_their_lines_stay_whole() -> None:
    assert target_from_string("-") is target_from_string("-")
    assert target_from_string("-").name == "stdout" and target_from_string("+").name == "stderr"
    assert target_from_string("+")._lock is not target_from_string("-")._lock
    assert isinstance(target_from_string("-")._lock, type(threading.Lock()))
