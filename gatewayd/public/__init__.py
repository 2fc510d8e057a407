"""gatewayd.public."""
