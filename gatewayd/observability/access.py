"""The access log: one structured record per RPC and per public REST request (PROTOCOL.md section 8).

Each record is a twisted.logger event in the ``gatewayd.access`` namespace, so it is a
JSON line under ``--log-json`` (``observability/logs.py``: its fields as keys) and a
compact line in twist's text log. Fields:

``kind`` (``rpc`` or ``rest``), ``peer`` (client IP, trusted proxies applied),
``protocol`` (``grpc``, ``grpc-web``, ``grpc-web-text``, ``connect``, ``connect-stream``;
``rest``), ``transport`` (``h2`` or ``http/1.1``), ``method`` (the RPC path, or the HTTP
method), ``path`` (REST only), ``status`` (the gRPC code's number, or the HTTP status),
``status_name`` (RPC: the code's lowercase name), ``stage`` (what refused the request: a
pipeline stage such as ``signature`` or ``rate_limit``; ``request`` for an RPC refused
before its handler ran, e.g. undecodable or over the size limit; for REST
``content_type``, ``body_size``, ``validation``, ``rate_limit`` or ``backend``; empty when
nothing refused it), ``duration_ms``, ``bytes_in`` (request body bytes as received),
``bytes_out`` (response body bytes written: messages as framed, not headers or trailers),
``device_session_id`` (once the envelope stage read a well-formed one).

Nothing else: never keys, payloads, signatures, email addresses or codes, headers.
``[access_log]`` switches it off or samples successful requests (failures are always kept).

Where records go (``[access_log] target``): empty (the default), through the twisted logger
as above, where every observer formats each record again (twist's file log, flushed per
line, and ``--log-json``'s). ``-`` (stdout), ``+`` (stderr) or a file path: gatewayd's own
sink, the same JSON line ``--log-json`` writes for the record (keys, their order and values;
``access_json_line``) formatted here directly, buffered and written in chunks by a
``LineBuffer`` (``observability/logs.py``: ``flush_interval_ms``, ``buffer_bytes``; a pipe or
socket through a writer thread, bounded by ``max_pending_bytes``; drops and write errors
counted for ``/metrics``). A file is reopened on
SIGHUP (``reload.py`` calls ``reopen``) and a changed target is opened by the reload that reads it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from json.encoder import encode_basestring
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.web.resource import IResource, Resource

from gatewayd.config import AccessLogConfig, ConfigError
from gatewayd.observability.logs import MAX_FIELD_CHARS, LineBuffer, SinkCounters, iso_time, target_from_string
from gatewayd.observability.stats import AccessLogStats
from gatewayd.pipeline.pipeline import DEVICE_SESSION_KEY, STAGE_KEY
from gatewayd.rpc.codes import Code

if TYPE_CHECKING:
    from gatewayd.rpc.server import ServerCall

REST_PREFIX = b"/api/v1/public/"
_INFO = LogLevel.info
_REST_STAGE = "gatewayd_access_stage"  # attribute of a twisted.web request: how far the public app got


def mark_rest_stage(request: Any, stage: str) -> None:
    """The public app says which check runs now; if the request fails, the record names it."""
    setattr(request, _REST_STAGE, stage)


NAMESPACE = "gatewayd.access"


def open_sink(config: AccessLogConfig, clock: Any, counters: SinkCounters | None = None,
              threaded: bool = True) -> LineBuffer:
    """The buffered writer for ``config.target`` (not empty); ``ConfigError`` when the file cannot be opened.

    A target that may block (a pipe, a socket such as the journal's stdout, a terminal) gets a
    writer thread when ``threaded``; a regular file is written in the reactor thread.
    """
    try:
        target = target_from_string(config.target)
    except OSError as e:
        raise ConfigError(f"access_log.target: cannot open {config.target}: {e.strerror or e}") from None
    return LineBuffer(target, clock, interval_s=config.flush_interval_ms / 1000.0, flush_bytes=config.buffer_bytes,
                      max_pending_bytes=config.max_pending_bytes, counters=counters,
                      threaded=threaded and target.may_block(), what="access log")


class AccessLog:
    """Writes the records; ``configure`` swaps the settings (SIGHUP reload) for requests that end after it.

    ``clock`` (the reactor) times a target's flushes; ``threaded=False`` writes every target's
    chunks in the calling thread (tests with a ``task.Clock``), else only a regular file's.
    """

    def __init__(self, config: AccessLogConfig, sample: Callable[[], float] = random.random,
                 log: Logger | None = None, clock: Any = None, threaded: bool = True) -> None:
        self.config = config
        self._sample = sample
        self.log = log or Logger(namespace=NAMESPACE)
        self.clock = clock
        self.threaded = threaded
        self.counters = SinkCounters()
        self._prepared: tuple[str, LineBuffer] | None = None
        self.sink: LineBuffer | None = None
        self.sink = self.prepare(config)
        self._prepared = None

    def prepare(self, config: AccessLogConfig) -> LineBuffer | None:
        """The sink ``config`` asks for: the running one for the same target, else a new one, opened now
        (a reload checks this before it applies anything; ``configure`` then uses it); ``ConfigError``
        when it cannot be opened."""
        if not config.target:
            return None
        if self.sink is not None and self.sink.target.name == _target_name(config.target):
            return self.sink
        prepared = self._prepared
        if prepared is not None:
            if prepared[0] == config.target:
                return prepared[1]
            self._prepared = None
            prepared[1].close()  # opened for a reload that did not apply it
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        sink = open_sink(config, self.clock, self.counters, self.threaded)
        self._prepared = (config.target, sink)
        return sink

    def configure(self, config: AccessLogConfig) -> None:
        """Apply ``config`` (a reload): a new target is used from now on and the old one flushed and closed."""
        sink = self.prepare(config)
        self._prepared = None
        if sink is not None:
            sink.interval_s = config.flush_interval_ms / 1000.0
            sink.flush_bytes = config.buffer_bytes
            sink.max_pending_bytes = config.max_pending_bytes
        old, self.sink = self.sink, sink
        self.config = config
        if old is not None and old is not sink:
            old.close()

    def reopen(self) -> None:
        """SIGHUP: reopen a file target (logrotate moved it)."""
        if self.sink is not None:
            self.sink.reopen()

    def close(self) -> Deferred[None]:
        """Write what waits and close the target (service stop); fires once it is written."""
        sink, self.sink = self.sink, None
        return succeed(None) if sink is None else sink.close()

    @property
    def stats(self) -> AccessLogStats:
        sink = self.sink
        return AccessLogStats(records_dropped=self.counters.dropped, write_errors=self.counters.write_errors,
                              pending_bytes=0 if sink is None else sink.pending_bytes)

    def _keep(self, failed: bool) -> bool:
        config = self.config
        if not config.enabled:
            return False
        return failed or config.sample_rate >= 1.0 or self._sample() < config.sample_rate

    # -- RPCs --------------------------------------------------------------------------

    def rpc_finished(self, server_call: ServerCall, code: Code) -> None:
        """``RpcApplication.on_finish``: one record for the RPC that just ended."""
        if not self._keep(code is not Code.OK):
            return
        call = server_call.call
        exchange = server_call.exchange
        if call is not None:
            peer = call.peer
            stage = str(call.context.get(STAGE_KEY, ""))
            session = str(call.context.get(DEVICE_SESSION_KEY, ""))
        else:
            peer = server_call.app.resolve_peer(exchange)
            stage = "" if code is Code.OK else "request"
            session = ""
        self._emit(
            kind="rpc", peer=peer, protocol=server_call.proto.name, transport=_transport(exchange.http2),
            method=exchange.path, target=exchange.path, status=int(code), status_name=code.connect_name,
            stage=stage, duration_s=server_call.duration_s, bytes_in=server_call.bytes_in,
            bytes_out=server_call.bytes_out, device_session_id=session,
        )

    # -- public REST -------------------------------------------------------------------

    def wrap_rest(self, resource: IResource, client_ip: Callable[[Any], str]) -> IResource:
        """``resource`` (a leaf: the klein app), with a record for each request under ``/api/v1/public/``."""
        return _RestAccess(self, resource, client_ip)

    def rest_finished(self, request: Any, client_ip: Callable[[Any], str], started: float, bytes_in: int) -> None:
        status = int(request.code)
        if not self._keep(status >= 400):
            return
        method = request.method.decode("latin-1")
        path = request.path.decode("latin-1", "replace")
        self._emit(
            kind="rest", peer=client_ip(request), protocol="rest",
            transport=_transport(getattr(request, "clientproto", b"") == b"HTTP/2"),
            method=method, path=path, target=f"{method} {path}", status=status, status_name=str(status),
            stage=getattr(request, _REST_STAGE, "") if status >= 400 else "",
            duration_s=time.perf_counter() - started, bytes_in=bytes_in,
            bytes_out=int(getattr(request, "sentLength", 0)), device_session_id="",
        )

    def _emit(self, *, target: str, stage: str, duration_s: float, **fields: Any) -> None:
        duration_ms = round(duration_s * 1000.0, 3)
        session = fields["device_session_id"]
        line = (f"{fields['peer']} {fields['protocol']} {target} {fields['status_name']} "
                + (f"stage={stage} " if stage else "")
                + f"{duration_ms:.1f}ms in={fields['bytes_in']} out={fields['bytes_out']}"
                + (f" session={session}" if session else ""))
        sink = self.sink
        if sink is not None:
            sink.add(access_json_line(time.time(), line, stage, duration_ms, fields))
            return
        # The event Logger.info would build, key for key and in the same order (observers such as
        # twist's JSON log write it as it is), handed straight to the logger's observer: Logger.emit
        # re-checks the level against a freshly sorted list of all levels on every call.
        log = self.log
        event = {"stage": stage, "duration_ms": duration_ms, **fields}
        event["log_logger"] = log
        event["log_level"] = _INFO
        event["log_namespace"] = log.namespace
        event["log_source"] = log.source
        # The line is the message as it is (braces escaped); the fields are the record's keys.
        event["log_format"] = line.replace("{", "{{").replace("}", "}}")
        event["log_time"] = time.time()
        log.observer(event)


def _target_name(target: str) -> str:
    """The ``LogTarget.name`` ``target_from_string(target)`` has."""
    return {"-": "stdout", "+": "stderr"}.get(target) or str(Path(target))


def _text(value: str) -> str:
    """A string field as ``event_as_record`` keeps it (capped) and ``json.dumps`` writes it (not ASCII-escaped)."""
    if len(value) > MAX_FIELD_CHARS:
        value = value[:MAX_FIELD_CHARS] + "…"
    return encode_basestring(value)


def access_json_line(when: float, message: str, stage: str, duration_ms: float, fields: dict[str, Any]) -> str:
    """One record as the JSON line ``--log-json`` writes for its event (``event_as_json_line``):
    the same keys in the same order with the same values, formatted without building the event.

    Every field is a known scalar: strings (capped, JSON-escaped), ints, and ``duration_ms``
    (a float, written as ``json.dumps`` writes one). ``kind``, ``protocol``, ``transport`` and
    ``status_name`` come from fixed sets of plain lowercase names or digits and are written as
    they are (``tests/unit/test_access_sink.py`` checks every one and pins the equality).
    """
    if len(message) > 4 * MAX_FIELD_CHARS:
        message = message[: 4 * MAX_FIELD_CHARS] + "…"
    path = fields.get("path")
    return (
        f'{{"time": "{iso_time(when)}", "level": "info", "namespace": "{NAMESPACE}", '
        f'"message": {encode_basestring(message)}, "stage": {_text(stage)}, "duration_ms": {duration_ms!r}, '
        f'"kind": "{fields["kind"]}", "peer": {_text(fields["peer"])}, "protocol": "{fields["protocol"]}", '
        f'"transport": "{fields["transport"]}", "method": {_text(fields["method"])}, '
        + ("" if path is None else f'"path": {_text(path)}, ')
        + f'"status": {int(fields["status"])}, "status_name": "{fields["status_name"]}", '
        f'"bytes_in": {int(fields["bytes_in"])}, "bytes_out": {int(fields["bytes_out"])}, '
        f'"device_session_id": {_text(fields["device_session_id"])}}}\n'
    )


def _transport(http2: bool) -> str:
    return "h2" if http2 else "http/1.1"


def _body_size(request: Any) -> int:
    """The request body's size (twisted.web has read all of it before rendering)."""
    content = getattr(request, "content", None)
    if content is None:
        return 0
    size = int(content.seek(0, 2))
    content.seek(0)
    return size


class _RestAccess(Resource):
    """A leaf in front of the klein app: starts the clock, records the request when it finishes."""

    isLeaf = True

    def __init__(self, access: AccessLog, inner: IResource, client_ip: Callable[[Any], str]) -> None:
        super().__init__()
        self.access = access
        self.inner = inner
        self.client_ip = client_ip

    def render(self, request: Any) -> Any:
        if request.path.startswith(REST_PREFIX) and self.access.config.enabled:
            started = time.perf_counter()
            size = _body_size(request)
            done = request.notifyFinish()
            done.addBoth(lambda _: self.access.rest_finished(request, self.client_ip, started, size))
        return self.inner.render(request)
