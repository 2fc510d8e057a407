"""gatewayd.backend."""
