"""``[stores]`` Redis keys: what they parse to, and errors naming the key (checked when the config loads)."""

from __future__ import annotations

from typing import Any

import pytest

from gatewayd import config
from gatewayd.config import ConfigError, StoresConfig
from gatewayd.stores.redis_connect import RedisTarget
from gatewayd.testing.certs import TestCA


def target(**keys: Any) -> RedisTarget:
    return RedisTarget.from_config(StoresConfig(kind="redis", **keys))


def test_a_url_gives_host_port_db_and_credentials() -> None:
    t = target(redis_url="redis://user:p%40ss@redis.internal:6380/3")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == ("redis.internal", 6380, 3, "user", "p@ss", False)
    assert t.sentinels == ()
    assert t.name == "redis.internal:6380"
    assert target(redis_url="rediss://h").tls is True
    assert (target(redis_url="redis://h").port, target(redis_url="redis://h").db) == (6379, 0)


def test_sentinels_need_no_host_in_the_url() -> None:
    t = target(redis_url="redis://:secret@/2", redis_sentinels=("10.0.0.1:26379", "[::1]:26380", "s3.internal:1"),
               redis_sentinel_service="cache", redis_sentinel_password="sp")
    assert t.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("s3.internal", 1))
    assert (t.password, t.db, t.service, t.sentinel_password, t.sentinel_username) == ("secret", 2, "cache", "sp", None)
    assert t.name == "sentinel:cache"


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"redis_url": "http://h:1/0"}, "stores.redis_url"),
        ({"redis_url": "redis:///0"}, "stores.redis_url"),  # no host and no sentinels
        ({"redis_url": "redis://h:99999/0"}, "stores.redis_url"),
        ({"redis_url": "redis://h/x"}, "stores.redis_url"),
        ({"redis_sentinels": ("h",)}, r"stores.redis_sentinels\[0\]"),
        ({"redis_sentinels": ("h:1", "h:x")}, r"stores.redis_sentinels\[1\]"),
        ({"redis_sentinels": (":1",)}, r"stores.redis_sentinels\[0\]"),
        ({"redis_sentinels": ("h:1",), "redis_sentinel_service": ""}, "stores.redis_sentinel_service"),
        ({"redis_tls_ca": "/ca.pem"}, "stores.redis_tls_ca"),  # TLS keys without rediss://
        ({"redis_tls_server_name": "x"}, "stores.redis_tls_server_name"),
        ({"redis_url": "rediss://h", "redis_tls_private_key": "/k.pem"}, "stores.redis_tls_certificate"),
        ({"redis_url": "rediss://h", "redis_tls_ca": "/nonexistent/ca.pem"}, "stores.redis_tls_ca"),
        ({"redis_url": "rediss://h", "redis_tls_certificate": "/nonexistent/c.pem",
          "redis_tls_private_key": "/nonexistent/k.pem"}, "stores.redis_tls_certificate"),
    ],
)
def test_bad_values_name_the_key(keys: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        target(**keys)


def test_a_ca_file_without_certificates_is_refused(tmp_path: Any) -> None:
    empty = tmp_path / "ca.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"stores\.redis_tls_ca: .*no PEM certificate"):
        target(redis_url="rediss://h", redis_tls_ca=str(empty))


def test_loading_a_config_checks_the_redis_keys_only_for_redis_stores() -> None:
    with pytest.raises(ConfigError, match=r"stores.redis_sentinels\[0\]"):
        config.from_mapping({"stores": {"kind": "redis", "redis_sentinels": ["nope"]}})
    # The memory store ignores them (a file can keep its Redis section while running in memory).
    assert config.from_mapping({"stores": {"kind": "memory", "redis_sentinels": ["nope"]}}).stores.kind == "memory"


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Any) -> None:
    ca = TestCA(tmp_path)
    a, b = ca.issue("a"), ca.issue("b")
    with pytest.raises(ConfigError, match=r"stores\.redis_tls_certificate: cannot load it"):
        target(redis_url="rediss://h", redis_tls_certificate=str(a.certificate),
               redis_tls_private_key=str(b.private_key))
    loaded = target(redis_url="rediss://h", redis_tls_ca=str(ca.certificate), redis_tls_certificate=str(a.certificate),
                    redis_tls_private_key=str(a.private_key))
    assert loaded.client_certificate is not None and loaded.trust_root is not None
