"""gatewayd.testing."""
