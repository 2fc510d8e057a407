"""Moved to gatewayd.http2 (server.py, core.py, stream.py); these names stay importable from here."""

from gatewayd.http2.server import H2ServerConnection
from gatewayd.http2.stream import H2Stream

__all__ = ["H2ServerConnection", "H2Stream"]
