"""SIGHUP reload on a real ``twist gatewayd --dev --config FILE`` process (PROTOCOL.md section 8).

The signing key is rotated under an open SubscribeEvents stream: events after the reload are
signed by the new key, on the same stream. A config that fails validation is refused with one
error naming the key, and the process keeps serving with what it ran before. SIGHUP still
reopens the --log-json file.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from gatewayd.client import GatewayClient, VerifiedEvent
from gatewayd.signing import GatewayKey
from gatewayd.testing.client import login, new_email
from gatewayd.testing.devprocess import DevGatewayProcess, start_dev_process
from gatewayd.testing.wait import until

WAIT_S = 20.0


def _keys(folder: Path) -> tuple[GatewayKey, GatewayKey]:
    keys = (GatewayKey.generate(), GatewayKey.generate())
    for n, key in enumerate(keys, 1):
        key.save(folder / f"k{n}.key")
        (folder / f"k{n}.pub").write_text(base64.b64encode(key.public_key).decode() + "\n")
    return keys


def _config(folder: Path, signing: int, published: int, extra: str = "") -> str:
    return (f'[keys]\nsigning_key = "{folder}/k{signing}.key"\npublished = ["{folder}/k{published}.pub"]\n'
            f"{extra}")


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[tuple[DevGatewayProcess, GatewayKey, GatewayKey]]:
    old, new = _keys(tmp_path)
    gw = start_dev_process(tmp_path, config_text=_config(tmp_path, 1, 2), json_log=True)
    yield gw, old, new
    gw.stop()


async def _reloaded(gw: DevGatewayProcess, marker: str, count: int) -> None:
    await until(lambda: gw.text().count(marker) >= count, lambda: f"{marker!r} x{count} in:\n{gw.text()[-3000:]}",
                timeout=WAIT_S)


@pytest_twisted.ensureDeferred
async def test_sighup_rotates_the_signing_key_under_an_open_stream(
        rotating: tuple[DevGatewayProcess, GatewayKey, GatewayKey]) -> None:
    gw, old, new = rotating
    assert gw.config is not None and gw.json_log is not None
    key, session = await login(gw.url, new_email("reload"))
    listener = GatewayClient(gw.url, "grpc", key=key, session=session, timeout_s=10.0)
    caller = GatewayClient(gw.url, "connect", key=key, session=session, timeout_s=10.0)
    events: list[VerifiedEvent] = []
    stream: defer.Deferred[Any] = listener.subscribe(events.append)
    try:
        await until(lambda: bool(events), "gateway.server_time", timeout=WAIT_S)
        assert (events[0].event_type, events[0].key_id) == ("gateway.server_time", old.key_id)

        gw.config.write_text(_config(gw.config.parent, 2, 1))
        gw.json_log.rename(gw.json_log.with_suffix(".1"))  # as logrotate would
        gw.sighup()
        await _reloaded(gw, "configuration reloaded", 1)
        assert f"signing key {new.key_id}" in gw.text()

        answer = await caller.execute("user.notes.create", {"text": "after the rotation"})
        assert answer.key_id == new.key_id
        await until(lambda: any(e.event_type == "user.note.created" for e in events), "the note event",
                    timeout=WAIT_S)
        created = next(e for e in events if e.event_type == "user.note.created")
        assert created.key_id == new.key_id  # verified by the client against the published keys
        assert not stream.called  # the stream opened before the reload is still up

        # A config that fails validation: refused, the key named once, the running config stays.
        gw.config.write_text(_config(gw.config.parent, 1, 2, "[limits]\nip = { rate = 0.0, burst = 1 }\n"))
        gw.sighup()
        await _reloaded(gw, "configuration reload refused", 1)
        refused = [line for line in gw.text().splitlines() if "reload refused" in line]
        assert len(refused) == 1 and "limits.ip" in refused[0]
        again = await caller.execute("user.notes.list")
        assert again.key_id == new.key_id and again.result_code == "ok"
        assert not stream.called
        # SIGHUP reopened the JSON log: the new file has the access records written since.
        await until(lambda: gw.json_log is not None and gw.json_log.exists()
                    and '"kind": "rpc"' in gw.json_log.read_text(), "records in the reopened JSON log",
                    timeout=WAIT_S)
    finally:
        stream.cancel()
        await listener.close()
        await caller.close()


@pytest_twisted.ensureDeferred
async def test_a_missing_key_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    _keys(tmp_path)
    gw = start_dev_process(tmp_path, config_text=_config(tmp_path, 1, 2, '[server]\ncors_origins = ["https://a"]\n'))
    try:
        assert gw.config is not None
        gw.config.write_text(_config(tmp_path, 3, 2))  # k3.key does not exist
        gw.sighup()
        await _reloaded(gw, "configuration reload refused", 1)
        assert "keys.signing_key" in gw.text() and "k3.key" in gw.text()
        gw.config.write_text(_config(tmp_path, 1, 2, '[server]\nmax_concurrent_streams = 7\ncors_origins = []\n'))
        gw.sighup()
        await _reloaded(gw, "not applied until a restart: server.max_concurrent_streams", 1)
        assert gw.process.poll() is None
    finally:
        gw.stop()
