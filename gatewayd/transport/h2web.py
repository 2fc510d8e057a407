"""Moved to gatewayd.http2.web; these names stay importable from here."""

from gatewayd.http2.web import H2WebChannel, web_fallback_for

__all__ = ["H2WebChannel", "web_fallback_for"]
