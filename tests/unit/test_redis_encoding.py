"""Our one-pass Redis command encoder writes exactly the bytes txredisapi's own encoder writes."""

from __future__ import annotations

from typing import Any

import pytest
import txredisapi

from gatewayd.stores.redis import ADMIT_SHA
from gatewayd.stores.resp import encode_command


def txredisapi_bytes(*args: Any) -> bytes:
    protocol = txredisapi.BaseRedisProtocol(charset="utf-8")
    return bytes(protocol._build_command(*args))


@pytest.mark.parametrize(
    "args",
    [
        ("PING",),
        ("SET", "gatewayd:replay:replay:ds_1:r-1", "1", "NX", "PX", 600_000),
        ("EVALSHA", ADMIT_SHA, 5, "k:replay", "k:ip:127.0.0.1", "k:session:ds", "k:user:u", "k:type:u:t",
         600_000, 1_000_000 / 2000.0, 4000, 1, 10_000.0, 200, 1, 1e-6, 1, 1, 1 / 3, 7, 1),
        ("SET", "ünïcode-ключ", b"\x00\xffraw", bytearray(b"ba"), -5, 0, 0.0, 123456789.125, True),
    ],
)
def test_encode_command_matches_txredisapi(args: tuple[Any, ...]) -> None:
    assert encode_command(args) == txredisapi_bytes(*args)


def test_numbers_equal_across_types_keep_their_own_encoding() -> None:
    """1, 1.0 and True hash alike: the number cache must not mix them up, first use or later."""
    args = ("EVAL", 1, 1.0, True, 1, 1.0, True, 0, 0.0, False)
    for _ in range(2):
        assert encode_command(args) == txredisapi_bytes(*args)
