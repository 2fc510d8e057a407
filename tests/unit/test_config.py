"""Configuration: the shipped file documents every key with its default; bad input names the key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from gatewayd import config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "conf" / "gatewayd.toml"


def test_shipped_file_lists_every_key_with_its_default() -> None:
    data = tomllib.loads(SHIPPED.read_text())
    defaults = config.Config()
    for section in dataclasses.fields(config.Config):
        if section.name == "routes":
            continue
        assert section.name in data, f"[{section.name}] missing from conf/gatewayd.toml"
        keys = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert set(data[section.name]) == keys, f"[{section.name}] keys differ from the defaults"
    assert config.load(SHIPPED, environ={}) == defaults


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"server": {"lisen": "tcp:1"}}, "server.lisen"),
        ({"server": {"max_message_bytes": "big"}}, "server.max_message_bytes"),
        ({"server": {"max_concurrent_streams": -1}}, "server.max_concurrent_streams"),
        ({"stores": {"kind": "etcd"}}, "stores.kind"),
        ({"limits": {"ip": {"rate": 1}}}, "limits.ip"),
        ({"limits": {"ip": {"rate": 0, "burst": 1}}}, "limits.ip"),
        ({"routes": {"x.y": {"method": "TRACE", "path": "x"}}}, "routes.x.y.method"),
        ({"routes": {"x.y": {"method": "GET", "path": "/abs"}}}, "routes.x.y.path"),
        ({"nonsense": {}}, "nonsense"),
        ({"access_log": {"target": "syslog:local0"}}, "access_log.target: unknown kind of target"),
        ({"access_log": {"target": "udp://10.0.0.1:514"}}, "access_log.target: unknown kind of target"),
        ({"access_log": {"target": "stdout"}}, "access_log.target: unknown kind of target"),
        ({"access_log": {"target": "/var/log/"}}, "access_log.target: '/var/log/' is a directory"),
        ({"access_log": {"target": " access.log"}}, "access_log.target: not a usable file path"),
        ({"access_log": {"target": 1}}, "access_log.target: expected a string"),
        ({"access_log": {"flush_interval_ms": -1}}, "access_log.flush_interval_ms: must not be negative"),
        ({"access_log": {"flush_interval_ms": 600000}}, "access_log.flush_interval_ms: at most 60000"),
        ({"access_log": {"buffer_bytes": 0}}, "access_log.buffer_bytes: must be at least 1"),
        ({"access_log": {"buffer_bytes": 100, "max_pending_bytes": 99}}, "access_log.max_pending_bytes"),
    ],
)
def test_bad_values_name_the_key(data: dict, named: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.from_mapping(data)
    assert str(info.value).startswith(named)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[server]\nlisten = "tcp:1"\n')
    loaded = config.load(path, environ={"GATEWAYD_SERVER_LISTEN": "tcp:2", "GATEWAYD_STORES_TIMEOUT_S": "2.5"})
    assert loaded.server.listen == "tcp:2"
    assert loaded.stores.timeout_s == 2.5


def test_access_log_targets(tmp_path: Path) -> None:
    for target in ("", "-", "+", "access.log", "/var/log/gatewayd/access.log", str(tmp_path / "a:b.log"),
                   "./logs/access.log"):
        assert config.from_mapping({"access_log": {"target": target}}).access_log.target == target
    assert config.from_mapping({"access_log": {"flush_interval_ms": 0}}).access_log.flush_interval_ms == 0.0
    with pytest.raises(config.ConfigError, match="is a directory"):
        config.from_mapping({"access_log": {"target": str(tmp_path)}})
    loaded = config.load(None, environ={"GATEWAYD_ACCESS_LOG_TARGET": "-"})  # what the systemd unit sets
    assert loaded.access_log.target == "-"


def test_unreadable_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"missing\.toml"):
        config.load(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad, environ={})
