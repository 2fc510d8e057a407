"""HTTP/2 request headers checked and collected in one pass (RFC 9113 sections 8.2 and 8.3).

h2's own inbound validation is off (``validate_inbound_headers=False`` in
``h2adapter``): it walks the header list several times per request, and we walk it
anyway to build the ``Exchange``'s headers.
"""

from __future__ import annotations

import re

_PSEUDO = frozenset((b":method", b":path", b":scheme", b":authority"))
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_FORBIDDEN_VALUE_BYTES = re.compile(rb"[\x00\r\n]")
_FORBIDDEN_NAME_BYTES = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")


def parse_request_headers(raw: list[tuple[bytes, bytes]]) -> tuple[str, str, dict[str, str]] | None:
    """Method, path and headers (lowercase names, repeats joined with ", ") of a request,
    or ``None`` when the block is malformed (RFC 9113 section 8.2 and 8.3)."""
    method = path = scheme = None
    headers: dict[str, str] = {}
    regular = False
    for name, value in raw:
        if _FORBIDDEN_VALUE_BYTES.search(value):
            return None
        if name[:1] == b":":
            if regular or name not in _PSEUDO:
                return None
            v = value.decode("latin-1")
            if name == b":method":
                if method is not None or not v:  # a method is a token: one character at least
                    return None
                method = v
            elif name == b":path":
                if path is not None or not v:
                    return None
                path = v
            elif name == b":scheme":
                if scheme is not None:
                    return None
                scheme = v
            elif "host" in headers:
                return None
            else:
                headers["host"] = v
            continue
        regular = True
        if not name or _FORBIDDEN_NAME_BYTES.search(name) or name in _CONNECTION_SPECIFIC:
            return None
        if name == b"te" and value != b"trailers":
            return None
        n = name.decode("ascii")
        v = value.decode("latin-1")
        if n in headers:
            if n == "host":
                continue  # :authority wins over a Host header
            headers[n] = headers[n] + ", " + v
        else:
            headers[n] = v
    if method is None or path is None or scheme is None:
        return None
    return method, path, headers


_PARSED: dict[tuple[tuple[bytes, bytes], ...], tuple[str, str, dict[str, str]]] = {}
_MAX_PARSED = 256
_MAX_PARSED_BYTES = 2048


def parse_request_headers_cached(raw: list[tuple[bytes, bytes]]) -> tuple[str, str, dict[str, str]] | None:
    """``parse_request_headers``, remembering the lists it accepted: a client sends the same
    header list for every call of a method (``h2adapter.RememberingDecoder`` already hands
    them over without decoding). Each caller gets its own headers dict. The memory is
    bounded, and emptied when full so that lists in use get back in."""
    key = tuple(raw)
    parsed = _PARSED.get(key)
    if parsed is not None:
        method, path, headers = parsed
        return method, path, dict(headers)
    parsed = parse_request_headers(raw)
    if parsed is not None and sum(len(n) + len(v) for n, v in key) <= _MAX_PARSED_BYTES:
        if len(_PARSED) >= _MAX_PARSED:
            _PARSED.clear()
        _PARSED[key] = (parsed[0], parsed[1], dict(parsed[2]))
    return parsed
