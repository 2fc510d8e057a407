"""The access log (PROTOCOL.md section 8): one record per RPC over gRPC, gRPC-Web and Connect, and
per public REST request, against a whole in-process gateway; rejections name their stage; nothing
secret is written; sampling and the off switch; its own file target on a real twist process
(``tests/unit/test_access_sink.py`` has the sink's details)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.logger import Logger

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.client.client import EXECUTE_COMMAND_PATH
from gatewayd.client.wire import PROTOCOLS
from gatewayd.config import AccessLogConfig
from gatewayd.observability.access import AccessLog
from gatewayd.observability.logs import event_as_record
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import (
    DEV_CODE,
    RunningGateway,
    login,
    new_email,
    signed_execute_request,
    start_gateway,
)
from gatewayd.testing.devprocess import start_dev_process
from gatewayd.testing.wait import until

SEND_CODE = "/api/v1/public/auth/send-email-code"
RPC_FIELDS = {"kind", "peer", "protocol", "transport", "method", "status", "status_name", "stage", "duration_ms",
              "bytes_in", "bytes_out", "device_session_id"}


class Records:
    """The access log's events, as the JSON-lines observer would write them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def json(self) -> list[dict[str, Any]]:
        return [event_as_record(e) for e in self.events]

    def lines(self) -> list[str]:
        return [r["message"] for r in self.json()]


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[tuple[RunningGateway, Records]]:
    gw = await start_gateway(str(tmp_path / "state"))
    records = Records()
    gw.gateway.access_log.log = Logger(namespace="gatewayd.access", observer=records)
    try:
        yield gw, records
    finally:
        await gw.stop()


def rpc_records(records: Records) -> list[dict[str, Any]]:
    return [r for r in records.json() if r["kind"] == "rpc"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_one_record_per_rpc_with_every_field(gateway: tuple[RunningGateway, Records], protocol: str) -> None:
    gw, records = gateway
    email = new_email("access")
    key, session = await login(gw.url, email)
    client = GatewayClient(gw.url, protocol, key=key, session=session, timeout_s=5.0)
    try:
        await client.execute("user.notes.create", {"text": "secret note text"})
        bad = signed_execute_request(key, session.device_session_id, "user.profile.get")
        bad.signature = bytes(64)
        with pytest.raises(RpcCallError) as info:
            await client.transport.unary(EXECUTE_COMMAND_PATH, bad.SerializeToString(), 5.0)
        assert info.value.code == Code.UNAUTHENTICATED
        with pytest.raises(RpcCallError):
            await client.transport.unary(EXECUTE_COMMAND_PATH, b"\xff\xff", 5.0)  # not a protobuf message
    finally:
        await client.close()
    ok, rejected, undecodable = rpc_records(records)
    name = {"grpc": "grpc", "grpc-web": "grpc-web", "connect": "connect"}[protocol]
    assert set(ok) >= RPC_FIELDS
    assert ok["protocol"] == name and ok["method"] == EXECUTE_COMMAND_PATH
    assert (ok["status"], ok["status_name"], ok["stage"]) == (0, "ok", "")
    assert ok["peer"] == "127.0.0.1"
    assert ok["device_session_id"] == session.device_session_id
    assert ok["bytes_in"] > 100 and ok["bytes_out"] > 100 and ok["duration_ms"] > 0
    assert ok["transport"] == ("h2" if protocol == "grpc" else ok["transport"])
    assert (rejected["status"], rejected["stage"]) == (Code.UNAUTHENTICATED, "signature")
    assert rejected["device_session_id"] == session.device_session_id
    assert (undecodable["status"], undecodable["stage"]) == (Code.INVALID_ARGUMENT, "request")
    assert "stage=signature" in records.lines()[-2] and session.device_session_id in records.lines()[-2]
    written = "\n".join(json.dumps(r) for r in records.json())
    for secret in [email, DEV_CODE, "secret note text", base64.b64encode(key.public_key).decode(),
                   key.public_key.hex()]:
        assert secret not in written


@pytest_twisted.ensureDeferred
async def test_public_rest_requests_are_recorded_with_their_stage(gateway: tuple[RunningGateway, Records]) -> None:
    gw, records = gateway
    headers = {"content-type": ["application/json"]}
    ok = await treq.post(gw.url + SEND_CODE, b'{"email": "someone@example.com"}', headers=headers)
    await ok.content()
    bad_json = await treq.post(gw.url + SEND_CODE, b'{"email": 5}', headers=headers)
    await bad_json.content()
    wrong_type = await treq.post(gw.url + SEND_CODE, b"{}", headers={"content-type": ["text/plain"]})
    await wrong_type.content()
    health = await treq.get(gw.url + "/healthz")
    await health.content()
    rest = [r for r in records.json() if r["kind"] == "rest"]
    assert [(r["method"], r["path"], r["status"], r["stage"]) for r in rest] == [
        ("POST", SEND_CODE, 200, ""), ("POST", SEND_CODE, 400, "validation"), ("POST", SEND_CODE, 415, "content_type"),
    ]  # /healthz is a probe, not the public REST surface
    assert rest[0]["bytes_in"] == len(b'{"email": "someone@example.com"}') and rest[0]["bytes_out"] > 0
    assert rest[0]["peer"] == "127.0.0.1" and rest[0]["protocol"] == "rest"
    assert "someone@example.com" not in json.dumps(rest)


def test_sampling_keeps_failures_and_the_switch_turns_it_off() -> None:
    events: list[dict[str, Any]] = []
    draws = iter([0.7, 0.2])
    access = AccessLog(AccessLogConfig(sample_rate=0.5), sample=lambda: next(draws),
                      log=Logger(namespace="gatewayd.access", observer=events.append))
    fields = {"kind": "rpc", "peer": "p", "protocol": "grpc", "transport": "h2", "method": "/a.B/C", "target": "/a.B/C",
              "status_name": "x", "duration_s": 0.001, "bytes_in": 1, "bytes_out": 2, "device_session_id": ""}
    assert access._keep(failed=False) is False  # 0.7 >= 0.5: not sampled
    assert access._keep(failed=False) is True  # 0.2 < 0.5
    assert access._keep(failed=True) is True  # failures always, no draw taken
    access._emit(status=3, stage="envelope", **fields)
    assert events and events[0]["stage"] == "envelope"
    access.configure(AccessLogConfig(enabled=False))
    assert access._keep(failed=True) is False


def test_a_record_is_the_event_logger_info_would_emit() -> None:
    """The record goes straight to the logger's observer, as the very event ``Logger.info`` builds
    (same keys in the same order: twist's JSON log writes the event as it is)."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    logger = Logger(namespace="gatewayd.access", observer=ours.append)
    access = AccessLog(AccessLogConfig(), log=logger)
    fields = {"kind": "rest", "peer": "::1", "protocol": "rest", "transport": "h2", "method": "POST",
              "path": "/api/v1/public/{x}", "status": 400, "status_name": "400", "bytes_in": 1, "bytes_out": 2,
              "device_session_id": "ds_1"}
    access._emit(target="POST /api/v1/public/{x}", stage="validation", duration_s=0.0123456, **fields)
    Logger(namespace="gatewayd.access", observer=theirs.append).info(
        "::1 rest POST /api/v1/public/{{x}} 400 stage=validation 12.3ms in=1 out=2 session=ds_1",
        stage="validation", duration_ms=12.346, **fields,
    )
    [event], [expected] = ours, theirs
    assert list(event) == list(expected)
    assert event.pop("log_logger") is logger and expected.pop("log_logger") is not None
    assert abs(event.pop("log_time") - expected.pop("log_time")) < 5.0
    assert event == expected
    assert event_as_record(ours[0] | {"log_time": 0.0})["message"] == (
        "::1 rest POST /api/v1/public/{x} 400 stage=validation 12.3ms in=1 out=2 session=ds_1")


@pytest_twisted.ensureDeferred
async def test_a_twist_process_writes_records_to_its_target_reopens_swaps_and_flushes_at_stop(
        tmp_path: Path) -> None:
    """``[access_log] target`` on a real ``twist gatewayd`` process: records are JSON lines in the file
    (not in twist's log); SIGHUP reopens it after a rename (logrotate); a reload naming another file
    moves the records there; records still buffered at a clean stop (a 60 s interval) are written."""
    first, second = tmp_path / "access.log", tmp_path / "other.log"
    gw = start_dev_process(tmp_path, config_text=f'[access_log]\ntarget = "{first}"\nflush_interval_ms = 10.0\n')
    client: GatewayClient | None = None
    try:
        assert gw.config is not None
        key, session = await login(gw.url, new_email("sink"))
        client = GatewayClient(gw.url, "grpc", key=key, session=session, timeout_s=10.0)

        def records(path: Path) -> list[dict[str, Any]]:
            return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

        def executed(path: Path) -> list[dict[str, Any]]:
            return [r for r in records(path) if r.get("method") == EXECUTE_COMMAND_PATH]

        await client.execute("user.profile.get")
        await until(lambda: len(executed(first)) == 1, lambda: f"the record in {first}: {records(first)}", timeout=20)
        [record] = executed(first)
        assert list(record)[:4] == ["time", "level", "namespace", "message"] and set(record) >= RPC_FIELDS
        assert (record["namespace"], record["status_name"]) == ("gatewayd.access", "ok")
        assert record["device_session_id"] == session.device_session_id
        assert EXECUTE_COMMAND_PATH not in gw.text()  # not through twist's log as well

        first.rename(tmp_path / "access.log.1")  # logrotate
        gw.sighup()
        await until(lambda: gw.text().count("configuration reloaded") == 1, "the reload", timeout=20)
        await client.execute("user.profile.get")
        await until(lambda: len(executed(first)) == 1, "a record in the reopened file", timeout=20)
        assert len(executed(tmp_path / "access.log.1")) == 1

        gw.config.write_text(f'[access_log]\ntarget = "{second}"\nflush_interval_ms = 60000.0\n')
        gw.sighup()
        await until(lambda: gw.text().count("configuration reloaded") == 2, "the second reload", timeout=20)
        await client.execute("user.notes.list")
        assert executed(second) == []  # buffered: 60 s to go
    finally:
        if client is not None:
            await client.close()
        gw.stop()
    assert gw.process.returncode == 0, gw.text()
    assert len(executed(first)) == 1
    assert [r["status_name"] for r in executed(second)] == ["ok"]  # written at the clean stop
