"""gatewayd.client."""
