"""Redis commands in RESP, encoded in one pass.

txredisapi encodes every argument, and every argument's length, through a
chain of ``isinstance`` checks into a bytearray: dozens of calls per command,
the largest part of a store call's CPU (an admission carries 21 arguments).
``encode_command`` writes the same bytes (tests/unit/test_redis_encoding.py
pins it against txredisapi); the pool's connections use it
(``redis_connect.RedisConnection``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Encoded numbers, by type (1 == 1.0 == True hash alike): the script arguments repeat the same
#: few (budgets, TTLs, costs). Bounded, so a caller passing ever new numbers cannot grow them.
_NUMBERS: dict[type, dict[Any, bytes]] = {int: {}, float: {}}
_NUMBERS_MAX = 1024


def encode_command(args: Sequence[Any]) -> bytes:
    """A command in RESP, byte for byte what txredisapi's ``_build_command`` writes."""
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for arg in args:
        kind = type(arg)
        if kind is str:
            raw = arg.encode()
            append(b"$%d\r\n%s\r\n" % (len(raw), raw))
            continue
        numbers = _NUMBERS.get(kind)
        if numbers is not None:
            chunk = numbers.get(arg)
            if chunk is None:
                # Fixed point for floats, as txredisapi writes them.
                raw = b"%d" % arg if kind is int else format(arg, "f").encode()
                chunk = b"$%d\r\n%s\r\n" % (len(raw), raw)
                if len(numbers) < _NUMBERS_MAX:
                    numbers[arg] = chunk
            append(chunk)
            continue
        raw = arg if kind is bytes else bytes(arg) if kind is bytearray else str(arg).encode()
        append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)
