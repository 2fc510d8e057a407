"""Moved to gatewayd.http2 (request_headers.py, h2adapter.py); these names stay importable from here."""

from gatewayd.http2.h2adapter import send_data_frame
from gatewayd.http2.request_headers import parse_request_headers

__all__ = ["parse_request_headers", "send_data_frame"]
