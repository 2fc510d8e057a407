"""Request header blocks answered from memory (``h2adapter.RememberingDecoder``), pinned to hpack's Decoder.

Every block is decoded by a stock ``hpack.Decoder`` and by ours: the same headers (and
header types), the same errors, the same dynamic table afterwards, whatever the
sequence of blocks, table size updates and limit changes.
"""

from __future__ import annotations

import random
import re
from typing import Any

import hpack
import pytest

from gatewayd.http2.h2adapter import RememberingDecoder, server_connection
from gatewayd.http2.limits import H2Limits

REQUESTS = [
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
     (b":authority", b"127.0.0.1:50051"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
     (b"user-agent", b"h2load nghttp2/1.52.0")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/gateway.v1.Gateway/ExecuteCommand"),
     (b":authority", b"gw"), (b"content-type", b"application/grpc"), (b"grpc-timeout", b"5S")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"cookie", b"a=b")],
]


def outcome(decoder: hpack.Decoder, block: bytes) -> tuple[str, str]:
    """What decoding ``block`` gives (headers with their types, or the error), and the table after."""
    try:
        result = repr([(type(h).__name__, *h) for h in decoder.decode(block, raw=True)])
    except hpack.HPACKError as e:
        result = re.sub(r" at 0x[0-9a-f]+", "", f"{type(e).__name__}: {e}")  # messages name memoryviews
    table = decoder.header_table
    return result, repr((list(table.dynamic_entries), table.maxsize, table._current_size))


def no_index(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A block of literals without indexing (0000 xxxx), as nghttp2 sends ``:path``."""
    out = b""
    for name, value in fields:
        out += b"\x00" + hpack.hpack.encode_integer(len(name), 7) + name
        out += hpack.hpack.encode_integer(len(value), 7) + value
    return out


class Decoders:
    """A stock decoder and ours, fed the same blocks and limits."""

    def __init__(self) -> None:
        self.stock, self.ours = hpack.Decoder(), RememberingDecoder()

    def feed(self, block: bytes) -> tuple[str, str]:
        theirs = outcome(self.stock, block)
        assert outcome(self.ours, block) == theirs
        return theirs

    def limits(self, header_list: int | None = None, table: int | None = None) -> None:
        for decoder in (self.stock, self.ours):
            if header_list is not None:
                decoder.max_header_list_size = header_list
            if table is not None:
                decoder.max_allowed_table_size = table


class Counted:
    """Counts the blocks our decoder really decodes (hpack's decode called on it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded = 0
        original = hpack.Decoder.decode

        def counted(decoder: hpack.Decoder, data: bytes, raw: bool = False) -> Any:
            if isinstance(decoder, RememberingDecoder):
                self.decoded += 1
            return original(decoder, data, raw)

        monkeypatch.setattr(hpack.Decoder, "decode", counted)


def test_a_block_that_leaves_the_table_alone_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    decoders, counted = Decoders(), Counted(monkeypatch)
    encoder = hpack.Encoder()
    first = encoder.encode(REQUESTS[0])  # indexes fields: changes the table, never remembered
    again = encoder.encode(REQUESTS[0])  # all indexed now: changes nothing
    path = no_index([(b":path", b"/grpc.health.v1.Health/Check")])
    decoders.feed(first)
    for _ in range(5):
        decoders.feed(again + path)
    assert counted.decoded == 2


def test_the_same_bytes_after_the_table_changed_are_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    decoders, counted = Decoders(), Counted(monkeypatch)
    encoder = hpack.Encoder()
    decoders.feed(encoder.encode([(b"x-a", b"1")]))
    newest = b"\xbe"  # dynamic index 62: the newest entry
    assert "x-a" in decoders.feed(newest)[0] and "x-a" in decoders.feed(newest)[0]
    decoders.feed(encoder.encode([(b"x-b", b"2")]))  # a new entry: index 62 means x-b now
    assert "x-b" in decoders.feed(newest)[0]
    decoders.feed(b"\x3f\xe1\x1f")  # a size update (4096 again): a change too
    decoders.feed(newest)
    assert counted.decoded == 6


def test_limits_lowered_since_are_enforced_on_a_remembered_block() -> None:
    decoders = Decoders()
    block = no_index([(b"x-big", b"v" * 300)])
    decoders.feed(block)
    decoders.feed(block)
    decoders.limits(header_list=200)
    assert decoders.feed(block)[0].startswith("OversizedHeaderListError")
    decoders.limits(header_list=65536)
    decoders.feed(b"\x3f\xe1\x1f")  # the peer's table size update to 4096 (allowed)
    decoders.feed(block)
    decoders.limits(table=0)  # we lowered our SETTINGS_HEADER_TABLE_SIZE; the peer has not yet shrunk
    assert decoders.feed(block)[0].startswith("InvalidTableSizeError")


@pytest.mark.parametrize("seed", range(30))
def test_random_block_sequences_decode_as_hpacks(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    decoders, counted = Decoders(), Counted(monkeypatch)
    encoder = hpack.Encoder()
    pool = [*REQUESTS, [(b":path", b"/x"), hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")],
            [(b"x-%d" % i, b"v" * rng.randrange(1, 80)) for i in range(rng.randrange(1, 6))]]
    blocks: list[bytes] = []
    for _ in range(400):
        roll = rng.random()
        if roll < 0.45 or not blocks:
            block = encoder.encode(rng.choice(pool), huffman=rng.random() < 0.7)
        elif roll < 0.75:
            block = rng.choice(blocks[-5:])  # a block seen lately: same bytes, maybe another meaning
        elif roll < 0.85:
            block = no_index([(b":path", rng.choice([b"/a", b"/b"]))]) + rng.choice([b"", b"\x82", b"\xbe"])
        elif roll < 0.9:
            block = rng.choice(blocks)[: rng.randrange(0, 8)] + bytes([rng.randrange(256)])  # likely malformed
        elif roll < 0.95:
            size = rng.choice([0, 64, 256, 4096])
            encoder.header_table_size = size  # the encoder's next block starts with the update
            continue
        else:
            decoders.limits(header_list=rng.choice([100, 400, 65536]))
            continue
        blocks.append(block)
        result, _ = decoders.feed(block)
        if "InvalidTableIndex" in result or "HPACKDecodingError" in result:
            # A malformed block may have changed the table before failing (as hpack leaves it):
            # the encoder is out of step from here, which both decoders must survive alike.
            encoder = hpack.Encoder()
            encoder.header_table_size = decoders.stock.header_table.maxsize
    assert len(blocks) - counted.decoded > 5, (len(blocks), counted.decoded)  # answered from memory


def test_server_connections_decode_with_it() -> None:
    conn = server_connection(H2Limits(max_header_list_bytes=4096))
    assert isinstance(conn.decoder, RememberingDecoder)
    assert conn.decoder.max_header_list_size == 4096
