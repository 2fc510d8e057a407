"""Property tests: the decoders raise nothing but ``RpcError``, whatever bytes they are fed."""

from __future__ import annotations

import base64
import gzip

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.rpc.compression import gunzip
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import (
    Base64StreamDecoder,
    FrameDecoder,
    decode_grpc_message,
    decode_grpc_web_trailers,
    encode_base64_chunk,
    encode_frame,
    encode_grpc_message,
    encode_grpc_web_trailers,
    parse_connect_timeout,
    parse_grpc_timeout,
)

FAST = settings(max_examples=120, deadline=None)
chunks = st.lists(st.binary(max_size=40), max_size=8)


@FAST
@given(chunks, st.integers(min_value=0, max_value=64))
def test_frame_decoder_only_rpc_errors(parts: list[bytes], limit: int) -> None:
    decoder = FrameDecoder(limit)
    try:
        for part in parts:
            for _flags, payload in decoder.feed(part):
                assert len(payload) <= limit
    except RpcError:
        pass


@FAST
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=30)), max_size=5), st.data())
def test_frame_decoder_any_split_gives_the_messages_back(
    messages: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(p, f) for f, p in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder(30)
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[a:b])
    assert out == messages and decoder.pending == 0


b64ish = st.lists(st.binary(max_size=40) | st.text("QUJDab0+/=\r\n ", max_size=40).map(str.encode), max_size=8)


@FAST
@given(b64ish)
def test_base64_decoder_only_rpc_errors(parts: list[bytes]) -> None:
    decoder = Base64StreamDecoder()
    try:
        for part in parts:
            decoder.feed(part)
    except RpcError:
        pass


@FAST
@given(st.lists(st.binary(max_size=20), max_size=6), st.data())
def test_base64_flushes_any_split(flushes: list[bytes], data: st.DataObject) -> None:
    body = b"".join(encode_base64_chunk(f) for f in flushes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    decoder = Base64StreamDecoder()
    out = b"".join(decoder.feed(body[a:b]) for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True))
    assert out == b"".join(flushes) and decoder.pending == 0


@FAST
@given(st.binary(max_size=200))
def test_grpc_web_trailers_only_rpc_errors(payload: bytes) -> None:
    try:
        decoded = decode_grpc_web_trailers(payload)
    except RpcError:
        return
    assert all(k == k.lower() for k in decoded)


@FAST
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
                       st.from_regex(r"[ -~]{0,20}", fullmatch=True).map(str.strip), max_size=4))
def test_grpc_web_trailers_round_trip(trailers: dict[str, str]) -> None:
    frame = encode_grpc_web_trailers(trailers.items())
    [(flags, payload)] = FrameDecoder(10_000).feed(frame)
    assert flags == 0x80 and decode_grpc_web_trailers(payload) == trailers


@FAST
@given(st.text(max_size=12) | st.from_regex(r"[0-9]{0,10}[HMSmun]?", fullmatch=True))
def test_timeouts_only_rpc_errors(value: str) -> None:
    for parse in (parse_grpc_timeout, parse_connect_timeout):
        try:
            assert parse(value) >= 0
        except RpcError:
            pass


@FAST
@given(st.binary(max_size=300), st.integers(0, 1000))
def test_gunzip_only_rpc_errors(data: bytes, limit: int) -> None:
    try:
        assert len(gunzip(data, limit)) <= limit
    except RpcError:
        pass


@FAST
@given(st.binary(max_size=300), st.integers(0, 300), st.data())
def test_gunzip_mangled_gzip_only_rpc_errors(data: bytes, cut: int, draw: st.DataObject) -> None:
    packed = bytearray(gzip.compress(data))
    if packed:
        index = draw.draw(st.integers(0, len(packed) - 1))
        packed[index] ^= draw.draw(st.integers(0, 255))
    try:
        gunzip(bytes(packed[: max(cut, 1) * 3]), 1000)
    except RpcError:
        pass


@FAST
@given(st.text())
def test_grpc_message_round_trip(message: str) -> None:
    # Lone surrogates cannot travel as UTF-8 at all; everything else round-trips.
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        return
    encoded = encode_grpc_message(message)
    assert all(0x20 <= ord(c) < 0x7F for c in encoded)
    assert decode_grpc_message(encoded) == message


@FAST
@given(st.binary(max_size=60))
def test_base64_valid_text_round_trip(raw: bytes) -> None:
    assert Base64StreamDecoder().feed(base64.b64encode(raw)) == raw
