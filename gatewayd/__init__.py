"""gatewayd: one port that speaks gRPC, gRPC-Web and Connect, verifies every call and signs every answer."""

__version__ = "0.1.0"
