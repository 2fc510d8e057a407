"""JSON-lines logs: one valid JSON object per line, and never a payload, key, signature or bytes."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import (
    Logger,
    LogLevel,
    LogPublisher,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
)

from gatewayd.client import DeviceKey, GatewayClient, RpcCallError
from gatewayd.observability.logs import (
    ENV_TARGET,
    JsonLinesObserver,
    LogTarget,
    install_from_environment,
    install_json_log,
    is_denied,
)
from gatewayd.testing.client import login, signed_execute_request, start_gateway

SEED = bytes(range(32))
DEVICE_SEED = bytes(range(40, 72))
SIGNATURE = bytes(range(100, 164))
PAYLOAD = b'{"text":"PAYLOAD-MARKER-7f3a"}'


def secret_forms(*values: bytes) -> list[str]:
    """Ways a secret could show up in a log line: raw text, repr, hex, base64 (both alphabets)."""
    forms = []
    for v in values:
        forms += [v.hex(), base64.b64encode(v).decode(), base64.urlsafe_b64encode(v).decode().rstrip("="),
                  repr(v)[2:-1]]
        try:
            forms.append(v.decode())
        except UnicodeDecodeError:
            pass
    return [f for f in forms if len(f) >= 8]


def assert_clean(text: str, *secrets: bytes) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        records.append(json.loads(line))  # every line is one JSON object
        assert isinstance(records[-1], dict)
    for form in secret_forms(*secrets):
        assert form not in text, form
    return records


def capture(publisher: LogPublisher | None = None) -> tuple[io.StringIO, JsonLinesObserver]:
    out = io.StringIO()
    return out, JsonLinesObserver(LogTarget(stream=out))


def test_denylist() -> None:
    for name in ("payload", "payload_bytes", "signature", "key", "seed", "code", "client_public_key",
                 "email_code", "signing_key", "request_payload", "Signature"):
        assert is_denied(name), name
    for name in ("request_id", "device_session_id", "key_id", "host", "port", "status"):
        assert not is_denied(name), name


def test_a_line_has_the_fields_and_no_secrets() -> None:
    out, observer = capture()
    log = Logger(namespace="gatewayd.test", observer=observer)
    log.warn(
        "rejected {request_id} of {device_session_id}: {payload} {signature!r} {key} {seed} {code} {blob}",
        request_id="req-1", device_session_id="ds-1", payload=PAYLOAD, signature=SIGNATURE,
        key=SEED, seed=SEED, code="123456", client_public_key=base64.b64encode(SEED).decode(),
        blob=SIGNATURE, nested={"payload": PAYLOAD, "ok": 1}, attempts=3,
    )
    [record] = assert_clean(out.getvalue(), PAYLOAD, SIGNATURE, SEED, b"123456")
    assert record["level"] == "warn"
    assert record["namespace"] == "gatewayd.test"
    assert record["time"].endswith("Z")
    assert (record["request_id"], record["device_session_id"], record["attempts"]) == ("req-1", "ds-1", 3)
    # Denied fields render <redacted>; bytes in any other field only their length.
    assert record["message"] == ("rejected req-1 of ds-1: <redacted> '<redacted>' <redacted> <redacted> "
                                 "<redacted> <64 bytes>")
    for name in ("payload", "signature", "key", "seed", "code", "client_public_key", "blob", "nested"):
        assert name not in record
    assert out.getvalue().count("\n") == 1


def test_failures_carry_type_and_traceback() -> None:
    out, observer = capture()
    log = Logger(namespace="gatewayd.test", observer=observer)
    try:
        raise ValueError("broken")
    except ValueError:
        log.failure("handler for {path} failed", path="/x", payload=PAYLOAD)
    [record] = assert_clean(out.getvalue(), PAYLOAD)
    assert record["level"] == "critical"
    assert record["error"] == "ValueError"
    assert "ValueError: broken" in record["traceback"]
    assert record["message"] == "handler for /x failed"


@pytest.mark.parametrize("text", ["plain words", "", "127.0.0.1 grpc /a.B/C ok 1.0ms in=1 out=2",
                                  "escaped {{braces}}", "a {field} here", "{0}", "unbalanced } brace"])
def test_the_message_is_what_formatEvent_renders(text: str) -> None:
    """A format without braces is taken as its own text (no formatting); the rest go through formatEvent."""
    out, observer = capture()
    events: list[dict[str, Any]] = []
    collect: Any = events.append
    Logger(namespace="n", observer=collect).info(text, field="F")
    observer(events[0])
    record = json.loads(out.getvalue())
    assert record["message"] == formatEvent(events[0])


def test_flattened_values_of_a_json_roundtripped_event_do_not_leak() -> None:
    out, observer = capture()
    events: list[dict[str, Any]] = []
    collect: Any = events.append
    Logger(namespace="n", observer=collect).info("got {payload}", payload=PAYLOAD.decode())
    observer(eventFromJSON(eventAsJSON(events[0])))  # carries log_flattened["payload!:"]
    [record] = assert_clean(out.getvalue(), PAYLOAD)
    assert record["message"] == "got <redacted>"


def test_file_target_reopens_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.log"
    target = LogTarget(path=path)
    observer = JsonLinesObserver(target)
    log = Logger(namespace="n", observer=observer)
    log.info("one")
    path.rename(tmp_path / "gatewayd.log.1")
    log.info("two")  # still the old file (logrotate's window)
    assert target.reopen()
    log.info("three")
    target.close()
    assert [json.loads(x)["message"] for x in (tmp_path / "gatewayd.log.1").read_text().splitlines()] == [
        "one", "two"]
    assert [json.loads(x)["message"] for x in path.read_text().splitlines()] == ["three"]
    assert not LogTarget(stream=io.StringIO()).reopen()


@pytest_twisted.ensureDeferred
async def test_sighup_reopens_the_file_and_uninstall_restores_the_handler(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGHUP)
    path = tmp_path / "json.log"
    publisher = LogPublisher()
    json_log = install_json_log(str(path), publisher=publisher, reactor=reactor, level=LogLevel.info)
    try:
        log = Logger(namespace="n", observer=publisher)
        log.info("before")
        log.debug("dropped by the level filter")
        path.rename(tmp_path / "json.log.1")
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = reactor.seconds() + 5
        while not path.exists():
            assert reactor.seconds() < deadline, "SIGHUP did not reopen the log"
            await task.deferLater(reactor, 0.005, lambda: None)
        log.info("after")
    finally:
        json_log.uninstall()
    assert signal.getsignal(signal.SIGHUP) == before
    assert [json.loads(x)["message"] for x in (tmp_path / "json.log.1").read_text().splitlines()] == ["before"]
    assert [json.loads(x)["message"] for x in path.read_text().splitlines()] == ["after"]


def test_install_from_environment(tmp_path: Path) -> None:
    publisher = LogPublisher()
    assert install_from_environment({}, publisher=publisher) is None
    path = tmp_path / "env.log"
    json_log = install_from_environment({ENV_TARGET: str(path), "GATEWAYD_LOG_LEVEL": "warn"},
                                        publisher=publisher, sighup=False)
    assert json_log is not None
    try:
        log = Logger(namespace="n", observer=publisher)
        log.info("quiet")
        log.error("loud")
    finally:
        json_log.uninstall()
    assert [json.loads(x)["message"] for x in path.read_text().splitlines()] == ["loud"]


@pytest_twisted.ensureDeferred
async def test_a_real_run_logs_no_payload_key_or_signature(tmp_path: Path) -> None:
    """Every event of a gateway run (login, a call, rejections, a failing backend) through the observer."""
    out, observer = capture()
    globalLogPublisher.addObserver(observer)
    gw = await start_gateway(str(tmp_path / "state"))
    client = None
    try:
        key, session = await login(gw.url, "logs@example.com", key=DeviceKey.from_seed(DEVICE_SEED))
        client = GatewayClient(gw.url, "connect", key=key, session=session, timeout_s=5.0)
        await client.execute("user.profile.get")
        good = signed_execute_request(key, session.device_session_id, "user.notes.create", PAYLOAD)
        await client.send(good)
        forged = signed_execute_request(key, session.device_session_id, "user.notes.create", PAYLOAD,
                                        signature=SIGNATURE)
        with pytest.raises(RpcCallError):
            await client.send(forged)
        # What a careless log call in the pipeline could pass: the request, its parts, the key.
        Logger(namespace="gatewayd.pipeline").info(
            "request {request_id}: {request}", request_id=good.envelope.request_id, request=good,
            payload_bytes=good.payload_bytes, signature=good.signature, envelope=good.envelope,
            device_session_id=session.device_session_id,
        )
        await gw.stop_backend()
        with pytest.raises(RpcCallError):
            await client.execute("user.profile.get")
    finally:
        if client is not None:
            await client.close()
        await gw.stop()
        globalLogPublisher.removeObserver(observer)
    gateway_seed = base64.b64decode((tmp_path / "state" / "gateway.key").read_text().strip())
    records = assert_clean(out.getvalue(), PAYLOAD, SIGNATURE, good.signature, key.public_key, DEVICE_SEED,
                           gateway_seed)
    assert records, "the run logged nothing"
    # The reference backend logs the login code it "emails": neither the code nor the address shows.
    assert any(r["message"].startswith("dev backend: email code for <redacted> is <redacted>") for r in records)
    assert "logs@example.com" not in out.getvalue()
    careless = [r for r in records if r["namespace"] == "gatewayd.pipeline"]
    assert careless and careless[0]["device_session_id"] == session.device_session_id
    assert careless[0]["message"] == f"request {good.envelope.request_id}: <redacted>"
