"""CORS for browsers, shared by the RPC and public REST surfaces."""

from __future__ import annotations

import re
from collections.abc import Iterable

from gatewayd.transport.exchange import HeaderList

# Browsers may read only exposed response headers; the RPC protocols need these.
EXPOSED_HEADERS = (
    b"grpc-status, grpc-message, grpc-status-details-bin, grpc-encoding, grpc-accept-encoding, "
    b"connect-content-encoding, connect-accept-encoding, content-encoding, retry-after"
)
ALLOWED_METHODS = b"GET, POST, OPTIONS"
DEFAULT_ALLOWED_HEADERS = (
    b"content-type, connect-protocol-version, connect-timeout-ms, connect-content-encoding, "
    b"connect-accept-encoding, grpc-timeout, grpc-encoding, grpc-accept-encoding, x-grpc-web, x-user-agent"
)
_DEV_ORIGIN = re.compile(r"^http://(localhost|127\.0\.0\.1)(:\d{1,5})?$")


class CorsPolicy:
    """Which origins may call, and the headers that say so.

    ``origins`` are exact origins (``https://app.example.com``) or ``*``;
    ``dev`` also allows ``http://localhost:<any port>`` and ``http://127.0.0.1:<any port>``.
    """

    def __init__(self, origins: Iterable[str] = (), dev: bool = False) -> None:
        self._origins = frozenset(origins)
        self._any = "*" in self._origins
        self._dev = dev

    def use_origins(self, origins: Iterable[str]) -> None:
        """Allow ``origins`` from now on (SIGHUP reload); every holder of this policy sees them."""
        self._origins = frozenset(origins)
        self._any = "*" in self._origins

    def allows(self, origin: str) -> bool:
        return self._any or origin in self._origins or bool(self._dev and _DEV_ORIGIN.match(origin))

    def response_headers(self, origin: str | None) -> HeaderList:
        """Headers for an actual (non-preflight) response; empty when not allowed."""
        if not origin or not self.allows(origin):
            return []
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
            (b"access-control-expose-headers", EXPOSED_HEADERS),
        ]

    def preflight_headers(self, origin: str | None, requested_headers: str | None) -> HeaderList | None:
        """Headers answering an OPTIONS preflight, or ``None`` when the origin is not allowed."""
        if not origin or not self.allows(origin):
            return None
        allowed = requested_headers.encode("latin-1") if requested_headers else DEFAULT_ALLOWED_HEADERS
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", allowed),
            (b"access-control-max-age", b"7200"),
        ]
