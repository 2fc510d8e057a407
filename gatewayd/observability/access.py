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
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel
from twisted.web.resource import IResource, Resource

from gatewayd.config import AccessLogConfig
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


class AccessLog:
    """Writes the records; ``configure`` swaps the settings (SIGHUP reload) for requests that end after it."""

    def __init__(self, config: AccessLogConfig, sample: Callable[[], float] = random.random,
                 log: Logger | None = None) -> None:
        self.config = config
        self._sample = sample
        self.log = log or Logger(namespace="gatewayd.access")

    def configure(self, config: AccessLogConfig) -> None:
        self.config = config

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
