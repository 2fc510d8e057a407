"""gatewayd.transport."""
