"""``parse_request_headers_cached`` answers as ``parse_request_headers`` does, with bounded memory."""

from __future__ import annotations

import hpack
import pytest

from gatewayd.http2 import request_headers
from gatewayd.http2.request_headers import parse_request_headers, parse_request_headers_cached

GOOD = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
        (b":authority", b"gw"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"x-dup", b"1"), (b"x-dup", b"2")]
LISTS = [
    GOOD,
    [hpack.HeaderTuple(n, v) for n, v in GOOD],
    [*GOOD[:6], hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer x")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b"host", b"a"), (b":authority", b"b")],
    [(b":path", b"/x"), (b":method", b"POST")],  # no :scheme
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"Upper", b"1")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"te", b"gzip")],
    [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b"x", b"a\r\nb")],
    [(b":method", b"POST"), (b"x", b"1"), (b":scheme", b"http"), (b":path", b"/x")],  # pseudo after regular
    [(b":method", b""), (b":scheme", b"http"), (b":path", b"/x")],  # empty method
]


@pytest.mark.parametrize("field", [b":method", b":path"])
def test_an_empty_method_or_path_is_malformed(field: bytes) -> None:
    # Found by fuzzing (tests/fuzz/corpus/h2_request_headers/crash-e38805c7...): an empty :method was accepted.
    raw = [(name, b"" if name == field else value) for name, value in GOOD]
    assert parse_request_headers(raw) is None


@pytest.mark.parametrize("index", range(len(LISTS)))
def test_answers_as_the_parser_every_time(index: int) -> None:
    raw = LISTS[index]
    expected = parse_request_headers(list(raw))
    for _ in range(3):
        assert parse_request_headers_cached(list(raw)) == expected


def test_each_caller_gets_its_own_headers() -> None:
    first = parse_request_headers_cached(list(GOOD))
    assert first is not None
    first[2]["x-dup"] = "changed"
    del first[2]["te"]
    again = parse_request_headers_cached(list(GOOD))
    assert again == parse_request_headers(list(GOOD)) and again is not None and again[2] is not first[2]


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_headers, "_PARSED", {})
    monkeypatch.setattr(request_headers, "_MAX_PARSED", 8)
    for i in range(50):
        raw = [*GOOD, (b"x-id", b"%d" % i)]
        assert parse_request_headers_cached(raw) == parse_request_headers(raw)
        assert len(request_headers._PARSED) <= 8
    big = [*GOOD, (b"x-big", b"v" * 5000)]
    assert parse_request_headers_cached(big) == parse_request_headers(big)
    assert tuple(big) not in request_headers._PARSED
