"""Byte-level tests of the sans-I/O framing: envelopes, gRPC-Web trailers, base64 text, deadlines."""

from __future__ import annotations

import base64

import pytest

from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import (
    FLAG_COMPRESSED,
    FLAG_GRPC_WEB_TRAILERS,
    HEADER_SIZE,
    Base64StreamDecoder,
    FrameDecoder,
    decode_grpc_message,
    decode_grpc_web_trailers,
    decode_single_frame,
    encode_base64_chunk,
    encode_frame,
    encode_grpc_message,
    encode_grpc_web_trailers,
    parse_connect_timeout,
    parse_grpc_timeout,
)

# --- the 5-byte envelope ---------------------------------------------------------


def test_encode_frame_bytes() -> None:
    assert encode_frame(b"") == b"\x00\x00\x00\x00\x00"
    assert encode_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert encode_frame(b"\x01" * 300, FLAG_COMPRESSED) == b"\x01\x00\x00\x01\x2c" + b"\x01" * 300
    assert HEADER_SIZE == 5


STREAM = encode_frame(b"hello") + encode_frame(b"", 0) + encode_frame(b"x" * 70, FLAG_COMPRESSED)
EXPECTED = [(0, b"hello"), (0, b""), (FLAG_COMPRESSED, b"x" * 70)]


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_frame_decoder_split_at_every_offset(cut: int) -> None:
    decoder = FrameDecoder(max_message_bytes=100)
    out = decoder.feed(STREAM[:cut])
    out += decoder.feed(STREAM[cut:])
    assert out == EXPECTED
    assert decoder.pending == 0


def test_frame_decoder_byte_by_byte() -> None:
    decoder = FrameDecoder(max_message_bytes=100)
    out: list[tuple[int, bytes]] = []
    for i in range(len(STREAM)):
        out += decoder.feed(STREAM[i : i + 1])
        # Nothing incomplete is ever returned, and what is held is exactly the unfinished part.
        assert sum(HEADER_SIZE + len(p) for _, p in out) + decoder.pending == i + 1
    assert out == EXPECTED


def test_frame_decoder_incomplete_is_pending() -> None:
    decoder = FrameDecoder(max_message_bytes=100)
    assert decoder.feed(encode_frame(b"hello")[:-1]) == []
    assert decoder.pending == 9


def test_oversize_declared_length_rejected_before_payload() -> None:
    decoder = FrameDecoder(max_message_bytes=10)
    # Only the 5-byte header of a 2^32-1 byte message: rejected without waiting for (or buffering) it.
    with pytest.raises(RpcError) as info:
        decoder.feed(b"\x00\xff\xff\xff\xff")
    assert info.value.code is Code.RESOURCE_EXHAUSTED
    exactly = FrameDecoder(max_message_bytes=10)
    assert exactly.feed(encode_frame(b"0123456789")) == [(0, b"0123456789")]
    over = FrameDecoder(max_message_bytes=10)
    with pytest.raises(RpcError) as info:
        over.feed(encode_frame(b"0123456789A")[:HEADER_SIZE])
    assert info.value.code is Code.RESOURCE_EXHAUSTED


def test_oversize_after_a_good_message_in_the_same_chunk() -> None:
    decoder = FrameDecoder(max_message_bytes=4)
    with pytest.raises(RpcError) as info:
        decoder.feed(encode_frame(b"ok") + b"\x00\x00\x00\x00\x05")
    assert info.value.code is Code.RESOURCE_EXHAUSTED


def test_decode_single_frame() -> None:
    assert decode_single_frame(encode_frame(b"m"), 10) == (0, b"m")
    with pytest.raises(RpcError) as info:
        decode_single_frame(encode_frame(b"m")[:-1], 10)
    assert info.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(RpcError) as info:
        decode_single_frame(b"", 10)
    assert info.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(RpcError):
        decode_single_frame(encode_frame(b"a") + encode_frame(b"b"), 10)


# --- grpc-message percent-encoding -----------------------------------------------

MESSAGES = [
    "",
    "plain ascii message",
    "100% sure",
    "%25 already looks encoded",
    "line\r\nbreak\ttab",
    "unicode: héllo wörld ✓ 🚀",
    "\x00\x7f control",
    "~!@#$^&*()_+{}|:\"<>?`-=[]\\;',./",
]


@pytest.mark.parametrize("message", MESSAGES)
def test_grpc_message_round_trip(message: str) -> None:
    encoded = encode_grpc_message(message)
    assert encoded.isascii()
    assert all(0x20 <= ord(c) < 0x7F for c in encoded)
    assert decode_grpc_message(encoded) == message


def test_grpc_message_encoding_bytes() -> None:
    # PROTOCOL-HTTP2.md: printable ASCII except '%' as is; everything else as %XX of its UTF-8 bytes.
    assert encode_grpc_message("a b") == "a b"
    assert encode_grpc_message("50%") == "50%25"
    assert encode_grpc_message("é") == "%C3%A9"
    assert encode_grpc_message("\n") == "%0A"
    assert decode_grpc_message("%C3%A9") == "é"


def test_grpc_message_decoding_is_lenient() -> None:
    # Malformed escapes are kept rather than failing the whole status.
    assert decode_grpc_message("100%") == "100%"
    assert decode_grpc_message("%zz%4") == "%zz%4"
    assert decode_grpc_message("%FF") == "\ufffd"


# --- gRPC-Web trailer frame ------------------------------------------------------


def test_grpc_web_trailer_frame_bytes() -> None:
    frame = encode_grpc_web_trailers([("grpc-status", "0")])
    body = b"grpc-status: 0\r\n"
    assert frame == bytes([FLAG_GRPC_WEB_TRAILERS]) + len(body).to_bytes(4, "big") + body
    frame = encode_grpc_web_trailers([("grpc-status", "3"), ("grpc-message", "bad%20thing")])
    assert frame[:5] == b"\x80\x00\x00\x00\x2b"
    assert frame[5:] == b"grpc-status: 3\r\ngrpc-message: bad%20thing\r\n"


def test_grpc_web_trailers_decode() -> None:
    assert decode_grpc_web_trailers(b"grpc-status: 0\r\n") == {"grpc-status": "0"}
    assert decode_grpc_web_trailers(b"Grpc-Status:5\r\nGRPC-MESSAGE:  x: y \r\n\r\n") == {
        "grpc-status": "5",
        "grpc-message": "x: y",
    }
    assert decode_grpc_web_trailers(b"") == {}
    with pytest.raises(RpcError) as info:
        decode_grpc_web_trailers(b"grpc-status 0\r\n")
    assert info.value.code is Code.INTERNAL


def test_grpc_web_trailers_round_trip_through_frame_decoder() -> None:
    frame = encode_grpc_web_trailers([("grpc-status", "8"), ("retry-after", "3")])
    [(flags, payload)] = FrameDecoder(1000).feed(frame)
    assert flags == FLAG_GRPC_WEB_TRAILERS
    assert decode_grpc_web_trailers(payload) == {"grpc-status": "8", "retry-after": "3"}


# --- base64 text -----------------------------------------------------------------

# Two flushes, each padded on its own: padding in the middle of the body.
TEXT_RAW = [encode_frame(b"AB"), encode_frame(b"CDE"), encode_grpc_web_trailers([("grpc-status", "0")])]
TEXT_BODY = b"".join(encode_base64_chunk(part) for part in TEXT_RAW)


def test_text_body_has_padding_mid_stream() -> None:
    first, second = encode_base64_chunk(TEXT_RAW[0]), encode_base64_chunk(TEXT_RAW[1])
    assert first.endswith(b"==") and second.endswith(b"=") and len(TEXT_BODY) > len(first + second)


@pytest.mark.parametrize("cut", range(len(TEXT_BODY) + 1))
def test_base64_split_at_every_offset(cut: int) -> None:
    decoder = Base64StreamDecoder()
    out = decoder.feed(TEXT_BODY[:cut]) + decoder.feed(TEXT_BODY[cut:])
    assert out == b"".join(TEXT_RAW)
    assert decoder.pending == 0


def test_base64_three_way_splits() -> None:
    whole = b"".join(TEXT_RAW)
    for a in range(0, len(TEXT_BODY), 3):
        for b in range(a, len(TEXT_BODY) + 1, 5):
            decoder = Base64StreamDecoder()
            out = decoder.feed(TEXT_BODY[:a]) + decoder.feed(TEXT_BODY[a:b]) + decoder.feed(TEXT_BODY[b:])
            assert out == whole


def test_base64_byte_by_byte_and_whitespace() -> None:
    decoder = Base64StreamDecoder()
    body = b"\r\n".join(TEXT_BODY[i : i + 7] for i in range(0, len(TEXT_BODY), 7))
    out = b"".join(decoder.feed(body[i : i + 1]) for i in range(len(body)))
    assert out == b"".join(TEXT_RAW)


def test_base64_unpadded_tail_is_pending() -> None:
    decoder = Base64StreamDecoder()
    assert decoder.feed(base64.b64encode(b"abcd")[:-1]) == b"abc"
    assert decoder.pending == 3


@pytest.mark.parametrize("bad", [b"QQ=A", b"Q===", b"====", b"QQ*=", b"\xff\xfe\xfd\xfc", b"QUJD=AAA"])
def test_base64_malformed(bad: bytes) -> None:
    with pytest.raises(RpcError) as info:
        Base64StreamDecoder().feed(bad)
    assert info.value.code is Code.INVALID_ARGUMENT


# --- deadlines -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("250m", 0.25),
        ("500u", 0.0005),
        ("1000000n", 0.001),
        ("99999999S", 99999999.0),
        ("0m", 0.0),
    ],
)
def test_parse_grpc_timeout(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "S", "1", "100", "123456789S", "1s", "1.5S", "-1S", " 1S", "1S ", "\u0661S", "1x"]
)
def test_parse_grpc_timeout_malformed(value: str) -> None:
    with pytest.raises(RpcError) as info:
        parse_grpc_timeout(value)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_parse_connect_timeout() -> None:
    assert parse_connect_timeout("1500") == 1.5
    assert parse_connect_timeout("0") == 0.0
    assert parse_connect_timeout("9999999999") == pytest.approx(9999999.999)
    for bad in ["", "12345678901", "-1", "1.5", "1e3", " 1", "\u0661"]:
        with pytest.raises(RpcError) as info:
            parse_connect_timeout(bad)
        assert info.value.code is Code.INVALID_ARGUMENT
